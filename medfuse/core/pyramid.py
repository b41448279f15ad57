"""Gaussian and Laplacian pyramids, and weight-map blending across scales.

Burt & Adelson's pyramids ("The Laplacian pyramid as a compact image code",
IEEE Trans. Communications 31(4), 1983) with the 5-tap binomial kernel
(1, 4, 6, 4, 1)/16 and mirrored borders. :func:`blend` is the blending of
Burt & Adelson ("A multiresolution spline", ACM TOG 2(4), 1983), as Mertens,
Kautz & Van Reeth use it for exposure fusion (Pacific Graphics 2007): each
source's Laplacian band is weighted by the Gaussian pyramid of its weight
map, so a sharp weight map switches between sources without a seam at fine
scales and without a halo at coarse ones.

All functions work on stacks: the last two axes are the image, any leading
axes (sources, slices) are carried along.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["gaussian_pyramid", "laplacian_pyramid", "collapse", "blend", "max_levels"]

_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _smooth(images: np.ndarray) -> np.ndarray:
    """Separable binomial smoothing of the last two axes, mirrored borders."""
    out = ndimage.convolve1d(images, _KERNEL, axis=-1, mode="mirror")
    return ndimage.convolve1d(out, _KERNEL, axis=-2, mode="mirror")


def _reduce(images: np.ndarray) -> np.ndarray:
    return _smooth(images)[..., ::2, ::2]


def _expand(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upsample to ``shape`` (the finer level's size): zero insertion, then 4 x smoothing."""
    out = np.zeros(images.shape[:-2] + tuple(shape), dtype=images.dtype)
    out[..., ::2, ::2] = images
    out = _smooth(out)
    out *= 4.0
    return out


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


def blend(sources: np.ndarray, weights: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Blend K sources with per-pixel weight maps, band by band.

    F = collapse(Σ_k G_l(W_k) · L_l(I_k)), l = 0 … levels − 1.

    Parameters
    ----------
    sources : ndarray, shape (K, ..., H, W), float
    weights : ndarray, same shape, float, summing to 1 over K
    levels : int >= 1
        1 is a plain per-pixel weighted sum.

    Returns
    -------
    fused : ndarray, shape (..., H, W), float64
    coarsest_weights : ndarray, shape (K, ..., H, W), float32
        The weights that blended the coarsest band, expanded back to full
        size (what decides the image's large-scale intensities).
    """
    source_bands = laplacian_pyramid(np.asarray(sources, dtype=np.float64), levels)
    weight_levels = gaussian_pyramid(np.asarray(weights, dtype=np.float64), levels)
    fused = collapse([(w * band).sum(axis=0) for w, band in zip(weight_levels, source_bands)])
    coarse = weight_levels[-1]
    for finer in reversed(weight_levels[:-1]):
        coarse = _expand(coarse, finer.shape[-2:])
    return fused, coarse.astype(np.float32)
