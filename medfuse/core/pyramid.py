"""Gaussian and Laplacian pyramids, and weight-map blending across scales.

Burt & Adelson's pyramids ("The Laplacian pyramid as a compact image code",
IEEE Trans. Communications 31(4), 1983) with the 5-tap binomial kernel
(1, 4, 6, 4, 1)/16 and half-sample symmetric borders (d c b a | a b c d). :func:`blend` is the blending of
Burt & Adelson ("A multiresolution spline", ACM TOG 2(4), 1983), as Mertens,
Kautz & Van Reeth use it for exposure fusion (Pacific Graphics 2007): each
source's Laplacian band is weighted by the Gaussian pyramid of its weight
map, so a sharp weight map switches between sources without a seam at fine
scales and without a halo at coarse ones.

All functions work on stacks: the last two axes are the image, any leading
axes (sources, slices) are carried along.

The fusion runs :func:`blend_decisions`, the compiled kernels of
:mod:`medfuse.core.kernels_pyramid`; the NumPy functions here are its readable
reference and test oracle (:func:`blend_clipped` is what it computes) and stay
public (pyramids for reports and tools).
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from medfuse.core import kernels
from medfuse.core.weights import normalise_sum, one_hot, one_hot_largest

__all__ = [
    "gaussian_pyramid",
    "laplacian_pyramid",
    "collapse",
    "blend",
    "blend_clipped",
    "blend_decisions",
    "expand_to",
    "max_levels",
]


def _reduce_axis(images: np.ndarray, axis: int) -> np.ndarray:
    """Binomial (1, 4, 6, 4, 1)/16 low-pass of one axis, keeping every second sample.

    Computed at the kept samples only; borders are half-sample symmetric
    (d c b a | a b c d), as scipy.ndimage's mode 'reflect'.
    """
    line = np.moveaxis(images, axis, -1)
    kept = (line.shape[-1] + 1) // 2
    padded = np.pad(line, [(0, 0)] * (line.ndim - 1) + [(2, 2)], mode="symmetric")
    taps = [padded[..., offset : offset + 2 * kept : 2] for offset in range(5)]
    out = taps[0] + taps[4]
    out += 4.0 * (taps[1] + taps[3])
    out += 6.0 * taps[2]
    out /= 16.0
    return np.moveaxis(out, -1, axis)


def _reduce(images: np.ndarray) -> np.ndarray:
    return _reduce_axis(_reduce_axis(images, images.ndim - 2), images.ndim - 1)


def _expand_axis(images: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Upsample one axis by 2 to ``size``: what zero insertion and 2 x the binomial kernel
    give inside the image, computed on the coarse grid so that borders, mirrored there
    (half-sample symmetric), stay exact too (a constant stays that constant)."""
    coarse = np.moveaxis(images, axis, -1)
    padded = np.concatenate([coarse[..., :1], coarse, coarse[..., -1:]], axis=-1)
    out = np.empty(coarse.shape[:-1] + (2 * coarse.shape[-1],), dtype=images.dtype)
    out[..., 0::2] = (padded[..., :-2] + 6.0 * padded[..., 1:-1] + padded[..., 2:]) / 8.0
    out[..., 1::2] = (padded[..., 1:-1] + padded[..., 2:]) * 0.5
    return np.moveaxis(out[..., :size], -1, axis)


def _expand(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upsample the last two axes to ``shape`` (the finer level's size)."""
    return _expand_axis(_expand_axis(images, shape[0], images.ndim - 2), shape[1], images.ndim - 1)


def max_levels(shape: tuple[int, ...]) -> int:
    """The most pyramid levels an image of this (…, H, W) shape supports (coarsest side >= 2)."""
    side = min(shape[-2:])
    levels = 1
    while side >= 4:
        side = (side + 1) // 2
        levels += 1
    return levels


def gaussian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Gaussian pyramid, finest first.

    Parameters
    ----------
    images : ndarray, shape (..., H, W), float
    levels : int >= 1
        Number of levels; at most :func:`max_levels` of the shape (fewer are used otherwise).

    Returns
    -------
    list of ndarray
        ``levels`` arrays; level i has shape (..., ceil(H / 2**i), ceil(W / 2**i)).
    """
    pyramid = [images]
    for _ in range(min(levels, max_levels(images.shape)) - 1):
        pyramid.append(_reduce(pyramid[-1]))
    return pyramid


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid, finest first; the last level is the coarsest Gaussian level.

    :func:`collapse` inverts it exactly (up to float round-off).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((2, 64, 48))
    >>> bool(np.allclose(collapse(laplacian_pyramid(x, 4)), x))
    True
    """
    gauss = gaussian_pyramid(images, levels)
    bands = [fine - _expand(coarse, fine.shape[-2:]) for fine, coarse in zip(gauss[:-1], gauss[1:])]
    bands.append(gauss[-1])
    return bands


def collapse(bands: list[np.ndarray]) -> np.ndarray:
    """Rebuild the image from its Laplacian pyramid (finest first)."""
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = band + _expand(image, band.shape[-2:])
    return image


def blend(
    sources: np.ndarray, weights: np.ndarray, levels: int, *, coarsest: str = "weights"
) -> tuple[np.ndarray, np.ndarray]:
    """Blend K sources with per-pixel weight maps, band by band.

    F = collapse(Σ_k G_l(W_k) · L_l(I_k)), l = 0 … levels − 1.

    Parameters
    ----------
    sources : ndarray, shape (K, ..., H, W), float
    weights : ndarray, same shape, float, summing to 1 over K
    levels : int >= 1
        1 is a plain per-pixel weighted sum.
    coarsest : {'weights', 'max'}
        How the coarsest band (a low-pass image) is blended: by the weights'
        Gaussian pyramid like every other band, or by taking at each pixel
        the source whose coarsest band is brightest.

    Returns
    -------
    fused : ndarray, shape (..., H, W), float32 for float32 sources, else float64
    coarsest_weights : ndarray, shape (K, ..., h, w)
        The weights that blended the coarsest band, at that band's size (what
        decides the image's large-scale intensities); :func:`expand_to`
        brings them to full size where they are wanted.
    """
    if coarsest not in ("weights", "max"):
        raise ValueError(f"coarsest must be 'weights' or 'max', got {coarsest!r}")
    # float32 sources stay float32 (8-bit outputs need no more; half the memory traffic).
    dtype = np.float32 if np.asarray(sources).dtype == np.float32 else np.float64
    source_bands = laplacian_pyramid(np.asarray(sources, dtype=dtype), levels)
    weight_levels = gaussian_pyramid(np.asarray(weights, dtype=dtype), levels)
    if coarsest == "max":
        weight_levels[-1] = one_hot_largest(source_bands[-1], dtype)
    fused = collapse([(w * band).sum(axis=0) for w, band in zip(weight_levels, source_bands)])
    return fused, weight_levels[-1]


def blend_clipped(
    sources: np.ndarray,
    weights: np.ndarray,
    levels: int,
    *,
    coarsest: str = "max",
    envelope: bool = True,
    keep_weights: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The pyramid rule's blending in NumPy: :func:`blend`, then the clip, and the coarsest weights at full size.

    The reference of :func:`blend_decisions` (which takes the deciding source's
    index instead of one-hot ``weights``).

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32
    weights : ndarray, shape (K, N, H, W), float
        The one-hot decision maps.
    levels : int >= 1
    coarsest : {'max', 'weights'}
        See :func:`blend`.
    envelope : bool
        Clip each fused pixel to [min_k I_k, max_k I_k] there (else to [0, 1]).
    keep_weights : bool
        Also return the weights that blended the coarsest band, expanded to
        full size, clipped to [0, 1] and renormalised over K.

    Returns
    -------
    fused : ndarray, shape (N, H, W), float32
    base_weights : ndarray, shape (K, N, H, W), float32, or None without ``keep_weights``
    """
    fused, coarse_weights = blend(sources, weights, levels, coarsest=coarsest)
    if envelope:
        np.clip(fused, sources.min(axis=0), sources.max(axis=0), out=fused)
    else:
        np.clip(fused, 0.0, 1.0, out=fused)
    base_weights = None
    if keep_weights:
        base_weights = expand_to(coarse_weights, sources.shape[-2:]).astype(np.float32, copy=False)
        base_weights = normalise_sum(np.clip(base_weights, 0.0, 1.0, out=base_weights))
    return fused.astype(np.float32, copy=False), base_weights


def blend_decisions(
    sources: np.ndarray,
    chosen: np.ndarray,
    levels: int,
    *,
    coarsest: str = "max",
    envelope: bool = True,
    keep_weights: bool = True,
    parts: int = 1,
    executor: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`blend_clipped` of the one-hot maps of ``chosen``, on compiled kernels.

    One pass at half size (level 1 of the pyramids), the small levels, one pass
    at full size (finest band, collapse, clip, weights) (:mod:`medfuse.core.kernels_pyramid`),
    with the float32 operations of the NumPy functions in their order: the
    result is :func:`blend_clipped`'s, byte for byte.

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32
    chosen : ndarray, shape (N, H, W), uint8
        The deciding source of each pixel (:func:`medfuse.core.weights.decision_indices`).
    levels, coarsest, envelope, keep_weights
        As for :func:`blend_clipped`.
    parts : int >= 1
        Share the rows (or slices) among this many tasks of ``executor`` (same result for any count).
    executor : concurrent.futures.Executor, optional
        Runs the tasks; none: all in the calling thread.

    Returns
    -------
    fused : ndarray, shape (N, H, W), float32
    base_weights : ndarray, shape (K, N, H, W), float32, or None without ``keep_weights``
    """
    if coarsest not in ("weights", "max"):
        raise ValueError(f"coarsest must be 'weights' or 'max', got {coarsest!r}")
    k, n, h, w = sources.shape
    levels = min(levels, max_levels((h, w)))
    if levels == 1:
        # No pyramid (one level asked for, or images under 4 pixels a side): a per-pixel weighted sum.
        return blend_clipped(sources, one_hot(chosen, k), 1, coarsest=coarsest, envelope=envelope,
                             keep_weights=keep_weights)
    sources = np.ascontiguousarray(sources, dtype=np.float32)
    chosen = np.ascontiguousarray(chosen, dtype=np.uint8)
    level1 = ((h + 1) // 2, (w + 1) // 2)
    gauss = np.empty((k, n) + level1, np.float32)
    weights = np.empty((k, n) + level1, np.float32)
    kernels.run_pieces(
        lambda index, first, stop: kernels.reduce_finest_rows(sources, chosen, index, first, stop, gauss, weights),
        kernels.split_work(n, level1[0], parts),
        executor,
    )
    top = level1
    for _ in range(levels - 2):
        top = ((top[0] + 1) // 2, (top[1] + 1) // 2)
    collapsed = np.empty((n,) + level1, np.float32)
    coarse_weights = np.empty((k, n) + top, np.float32)
    weights_level1 = np.empty((k, n) + (level1 if keep_weights else (0, 0)), np.float32)
    kernels.run_pieces(
        lambda index, _first, _stop: kernels.blend_coarse(gauss, weights, index, levels, coarsest == "max", collapsed,
                                                          coarse_weights, weights_level1),
        kernels.split_work(n, 1, parts),
        executor,
    )
    fused = np.empty((n, h, w), np.float32)
    base_weights = np.empty((k, n) + ((h, w) if keep_weights else (0, 0)), np.float32)
    kernels.run_pieces(
        lambda index, first, stop: kernels.blend_finest_rows(sources, chosen, gauss, collapsed, weights_level1, index,
                                                             first, stop, envelope, fused, base_weights),
        kernels.split_work(n, h, parts),
        executor,
    )
    return fused, base_weights if keep_weights else None


def expand_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Expand a pyramid level of an image of size ``shape`` (H, W) back to that size, level by level.

    The inverse of the size chain of :func:`gaussian_pyramid`: each level is
    ceil(half) the size of the one above it.
    """
    sizes = [tuple(shape)]
    while sizes[-1] != tuple(image.shape[-2:]):
        if sizes[-1][0] <= image.shape[-2] and sizes[-1][1] <= image.shape[-1]:
            raise ValueError(f"a level of size {image.shape[-2:]} is not in the pyramid of an image of size {shape}")
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    for size in reversed(sizes[:-1]):
        image = _expand(image, size)
    return image
