"""NumPy/SciPy reference of the fusion core's filters: the test oracle of :mod:`medfuse.core.kernels`.

The run-time path is compiled (:mod:`medfuse.core.filters` calls the numba
kernels of :mod:`medfuse.core.kernels`); this module keeps the readable
vectorised implementation they replaced, used by the tests (kernel against
reference to 1e-6 on random images, borders, radii larger than the image)
and by ``bench/guided_filter.py`` as its float64 reference. Same functions,
signatures and results as :mod:`medfuse.core.filters`.

The pyramid rule's kernels have their reference here too:
:func:`decision_indices` and :func:`blend_decisions`, with the signatures of
:func:`medfuse.core.weights.decision_indices` and
:func:`medfuse.core.pyramid.blend_decisions`, built from the NumPy functions of
those modules (this module's box mean for the local energy); the bench's
"x reference" rows of the default rule and the tests use them.

All filters act on the last two axes of an array of shape ``(..., H, W)`` and
treat every leading index as an independent image.

Border rule (all filters here): a window that reaches past the image edge is
cut to the part inside the image, and the filter averages over that part only
(for the Gaussian: the weights inside, renormalised to sum 1). No padding
values are invented, so a constant image stays exactly constant up to the
border. This is the rule of He et al.'s reference guided-filter code
(``boxfilter(I, r) ./ boxfilter(ones, r)``); note that OpenCV's ``cv2.blur``
and ``cv2.ximgproc.guidedFilter`` use mirrored borders instead, so results
differ from them within ``radius`` pixels of the edge.

Precision: window sums are running sums, computed in float64.
The guided filter subtracts products of window means (``var = E[I²] − E[I]²``);
with ε = 1e-6 a float32 running sum over a 512-pixel row loses ~1e-5 and
would swamp ε, so the guided filter works in float64 throughout.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from scipy.ndimage import correlate1d, uniform_filter1d

from medfuse.core.pyramid import blend_clipped
from medfuse.core.weights import decision_scores, largest_index, one_hot, upsample_nearest

__all__ = ["box_mean", "guided_filter", "GuideWindows", "gaussian_blur", "decision_indices", "blend_decisions"]


def _window_counts(n: int, radius: int) -> np.ndarray:
    """Number of pixels of a (2·radius+1) window centred at 0..n-1 that lie inside [0, n)."""
    j = np.arange(n)
    return (np.minimum(j + radius + 1, n) - np.maximum(j - radius, 0)).astype(np.float64)


@functools.lru_cache(maxsize=64)
def _border_factors(n_rows: int, n_cols: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors turning zero-padded window sums into means over the inside part.

    The vertical pass gives window sums over the rows inside the image
    (divide by the row count); the horizontal pass (zero padding) already
    divides by the full side 2r+1, which is right except within r columns of
    the left/right edge (multiply by (2r+1) / column count there).

    Returns
    -------
    rows : ndarray, shape (H,), 1 / row count
    columns : ndarray, shape (W,), (2r+1) / column count, exactly 1 away from the edges
    """
    rows = 1.0 / _window_counts(n_rows, radius)
    columns = (2 * radius + 1) / _window_counts(n_cols, radius)
    rows.setflags(write=False)
    columns.setflags(write=False)
    return rows, columns


# Scratch buffers for the running sums, reused between calls (per thread, so
# Dask's threaded scheduler is safe). Re-allocating multi-megabyte buffers on
# every call costs page faults comparable to the arithmetic itself; buffers
# above the cap are not kept, so a large volume batch does not pin memory.
_scratch = threading.local()
_SCRATCH_CAP_BYTES = 64 * 1024 * 1024


def _buffer(slot: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if count * 8 > _SCRATCH_CAP_BYTES:
        return np.empty(shape, np.float64)
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    flat = pool.get(slot)
    if flat is None or flat.size < count:
        flat = pool[slot] = np.empty(count, np.float64)
    return flat[:count].reshape(shape)


def box_mean(images: np.ndarray, radius: int, *, dtype: type = np.float64, out: np.ndarray | None = None) -> np.ndarray:
    """Mean over a (2·radius+1)² window, in O(N) time independent of radius.

    Parameters
    ----------
    images : ndarray, shape (..., H, W), any real dtype
        One or more images; leading axes are independent images.
    radius : int >= 0
        Half the window side. The window may exceed the image (it is cut).
    dtype : {numpy.float64, numpy.float32}
        Result dtype. Sums are float64 either way.
    out : ndarray, optional
        Array of the same shape to write the result into (its dtype wins).
        It may be ``images`` itself.

    Returns
    -------
    ndarray, shape (..., H, W), ``dtype``
        At pixel (i, j), the mean of ``images[..., i-r:i+r+1, j-r:j+r+1]``
        over the part of the window inside the image (see module docstring).

    Notes
    -----
    Two separable passes, both float64 running sums: along each row SciPy's
    ``uniform_filter1d`` (C, zero padding outside the image); down the
    columns a cumulative sum built one image row at a time, differenced.
    The intermediate arrays are laid out row-major outermost, (H, images, W),
    so each step of that sum is one contiguous vectorised add over all
    images (faster than a strided ``cumsum`` or a column-wise
    ``uniform_filter1d``). A final scaling by the row counts, and by the
    column counts within r of the left/right edges, turns the zero-padded
    sums into means over the inside part of each window.
    """
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"box_mean needs (..., H, W) images, got shape {images.shape}")
    if int(radius) != radius or radius < 0:
        raise ValueError(f"box radius must be a non-negative integer, got {radius!r}")
    radius = int(radius)
    if out is None:
        out = np.empty(images.shape, dtype)
    elif out.shape != images.shape:
        raise ValueError(f"out has shape {out.shape}, expected {images.shape}")
    if radius == 0:
        out[...] = images
        return out
    n_rows, n_cols = images.shape[-2:]
    count = math.prod(images.shape[:-2])
    side = 2 * radius + 1
    along_rows = _buffer("along_rows", (n_rows, count, n_cols))
    uniform_filter1d(
        images.reshape(count, n_rows, n_cols), side, axis=-1, output=along_rows.transpose(1, 0, 2), mode="constant"
    )
    # Extended cumulative sum down the columns: ext[t] = sum of rows
    # [0, clip(t - radius, 0, n_rows)), so the window sum of row i is
    # ext[i + 2r + 1] - ext[i].
    ext = _buffer("columns", (n_rows + side, count, n_cols))
    ext[: radius + 1] = 0.0
    add = np.add
    for i in range(n_rows):
        add(ext[radius + i], along_rows[i], out=ext[radius + 1 + i])
    ext[radius + 1 + n_rows :] = ext[radius + n_rows]
    target = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    result = target.reshape(count, n_rows, n_cols).transpose(1, 0, 2)
    np.subtract(ext[side:], ext[:n_rows], out=result)
    rows, columns = _border_factors(n_rows, n_cols, radius)
    result *= rows[:, None, None]
    left = min(radius, n_cols)
    right = max(n_cols - radius, left)
    result[..., :left] *= columns[:left]
    result[..., right:] *= columns[right:]
    if target is not out:
        out[...] = target
    return out


class GuideWindows:
    """A guide image with its window means and variances, cached per radius.

    Filtering several inputs with the same guide and radius (the fusion's base
    and detail weights when r_b = r_d) then computes mean(I) and var(I) once.

    Parameters
    ----------
    guide : ndarray, shape (..., H, W), real
        Grey guide image(s) I, one per leading index.
    """

    def __init__(self, guide: np.ndarray) -> None:
        self.guide = np.asarray(guide)
        if self.guide.ndim < 2:
            raise ValueError(f"a guide needs (..., H, W) images, got shape {self.guide.shape}")
        self._statistics: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _store(self, radius: int, means: np.ndarray) -> None:
        """Cache mean(I) and var(I) from ``means = [mean(I), mean(I²)]`` (turned into var in place)."""
        mean_i, var_i = means
        var_i -= np.square(mean_i, out=_buffer("guide_square", mean_i.shape))
        self._statistics[radius] = (mean_i, var_i)

    def filter(self, src: np.ndarray, radius: int, eps: float, *, dtype: type = np.float64) -> np.ndarray:
        """The guided filter of ``src`` by this guide; see :func:`guided_filter`."""
        src = np.asarray(src)
        if src.shape != self.guide.shape:
            raise ValueError(f"guide shape {self.guide.shape} differs from input shape {src.shape}")
        if not eps > 0:
            raise ValueError(f"guided filter eps must be > 0, got {eps!r}")
        # stats[0:2] = p, I·p (and, the first time at this radius, stats[2:4] =
        # I, I², so all four share one box pass). Work arrays are reused
        # scratch buffers; every step writes in place.
        first = radius not in self._statistics
        stats = _buffer("guided_stats", (4 if first else 2,) + src.shape)
        work = _buffer("guided_work", src.shape)
        stats[0] = src
        np.multiply(self.guide, stats[0], out=stats[1])
        if first:
            guide_means = np.empty((2,) + src.shape)
            stats[2] = self.guide
            np.square(stats[2], out=stats[3])
            box_mean(stats, radius, out=stats)
            guide_means[...] = stats[2:]
            self._store(radius, guide_means)
        else:
            box_mean(stats, radius, out=stats)
        mean_p, mean_ip = stats[0], stats[1]
        mean_i, var_i = self._statistics[radius]
        cov_ip = np.subtract(mean_ip, np.multiply(mean_i, mean_p, out=work), out=mean_ip)
        np.add(var_i, eps, out=work)
        a = np.divide(cov_ip, work, out=stats[1])
        np.subtract(mean_p, np.multiply(a, mean_i, out=work), out=stats[0])  # b, over mean_p
        mean_b, mean_a = box_mean(stats[:2], radius, out=stats[:2])
        q = np.multiply(mean_a, self.guide, out=np.empty(src.shape, dtype))
        q += mean_b
        return q


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, *, dtype: type = np.float64) -> np.ndarray:
    """Guided filter of He, Sun & Tang (grey guide), O(N) in the image size.

    Implements, with ``mean`` the :func:`box_mean` of ``radius``::

        a = (mean(I·p) − mean(I)·mean(p)) / (mean(I²) − mean(I)² + eps)
        b = mean(p) − a·mean(I)
        q = mean(a)·I + mean(b)

    All intermediate values are float64 whatever ``dtype`` is. To filter
    several inputs by one guide, use :class:`GuideWindows` (shares mean(I)
    and var(I)).

    Parameters
    ----------
    guide : ndarray, shape (..., H, W), real
        Grey guide image(s) I, one per leading index. A colour guide is not
        supported: pass its luma (the fusion core fuses on luma anyway).
    src : ndarray, shape (..., H, W), real
        Image(s) p to filter; same shape as ``guide``.
    radius : int >= 0
        Window radius r (window side 2r+1).
    eps : float > 0
        Regularisation ε; larger values smooth more.
    dtype : {numpy.float64, numpy.float32}
        Result dtype.

    Returns
    -------
    ndarray, shape (..., H, W), ``dtype``
        The filtered images q. No clipping: q may leave the range of ``src``.
    """
    guide = np.asarray(guide)
    src = np.asarray(src)
    if guide.shape != src.shape:
        raise ValueError(f"guide shape {guide.shape} differs from input shape {src.shape}")
    if not eps > 0:
        raise ValueError(f"guided filter eps must be > 0, got {eps!r}")
    return GuideWindows(guide).filter(src, radius, eps, dtype=dtype)


def gaussian_blur(images: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Gaussian blur truncated at ``radius``, with the module's border rule.

    Separable correlation with a sampled Gaussian of standard deviation
    ``sigma`` (pixels) over taps −radius..radius; near the border the weights
    that fall inside the image are renormalised to sum 1 (normalised
    convolution), matching :func:`box_mean`'s rule. Cost O(N · radius).

    Parameters
    ----------
    images : ndarray, shape (..., H, W), real
    sigma : float > 0
    radius : int >= 0

    Returns
    -------
    ndarray, shape (..., H, W), float64
    """
    images = np.asarray(images, dtype=np.float64)
    if not sigma > 0:
        raise ValueError(f"Gaussian sigma must be > 0, got {sigma!r}")
    taps = np.arange(-int(radius), int(radius) + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    out = images
    for axis in (-2, -1):
        n = images.shape[axis]
        # Sum of the kernel weights that land inside the image, per position.
        inside = correlate1d(np.ones(n), kernel, mode="constant", cval=0.0)
        out = correlate1d(out, kernel, axis=axis, mode="constant", cval=0.0)
        shape = [1] * out.ndim
        shape[axis] = n
        out /= inside.reshape(shape)
    return out


def decision_indices(
    sources: np.ndarray, radius: int, cells: np.ndarray | None = None, stride: int = 1, **_threads
) -> np.ndarray:
    """:func:`medfuse.core.weights.decision_indices` in NumPy: the activity upsampled, scores, running comparison.

    ``parts`` and ``executor`` are accepted and ignored (one thread).
    """
    activity = None if cells is None else upsample_nearest(cells, sources.shape[-2:], stride)
    return largest_index(decision_scores(sources, radius, activity, box=box_mean))


def blend_decisions(
    sources: np.ndarray,
    chosen: np.ndarray,
    levels: int,
    *,
    coarsest: str = "max",
    envelope: bool = True,
    keep_weights: bool = True,
    **_threads,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`medfuse.core.pyramid.blend_decisions` in NumPy: :func:`medfuse.core.pyramid.blend_clipped` of the
    one-hot maps. ``parts`` and ``executor`` are accepted and ignored (one thread)."""
    return blend_clipped(sources, one_hot(chosen, sources.shape[0]), levels, coarsest=coarsest, envelope=envelope,
                         keep_weights=keep_weights)
