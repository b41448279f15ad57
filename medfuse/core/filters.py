"""Image filters used by the fusion core: box mean, guided filter, Gaussian.

All filters act on the last two axes of an array of shape ``(..., H, W)`` and
treat every leading index as an independent image, so K sources (or K·Z
slices) are filtered in one vectorised call.

Border rule (all filters here): a window that reaches past the image edge is
cut to the part inside the image, and the filter averages over that part only
(for the Gaussian: the weights inside, renormalised to sum 1). No padding
values are invented, so a constant image stays exactly constant up to the
border. This is the rule of He et al.'s reference guided-filter code
(``boxfilter(I, r) ./ boxfilter(ones, r)``); note that OpenCV's ``cv2.blur``
and ``cv2.ximgproc.guidedFilter`` use mirrored borders instead, so results
differ from them within ``radius`` pixels of the edge.

Precision: window sums are running (cumulative) sums, computed in float64.
The guided filter subtracts products of window means (``var = E[I²] − E[I]²``);
with ε = 1e-6 a float32 running sum over a 512-pixel row loses ~1e-5 and
would swamp ε, so the guided filter works in float64 throughout.
"""

from __future__ import annotations

import threading

import numpy as np
from scipy.ndimage import correlate1d

__all__ = ["box_mean", "guided_filter", "gaussian_blur"]


def _window_counts(n: int, radius: int) -> np.ndarray:
    """Number of pixels of a (2·radius+1) window centred at 0..n-1 that lie inside [0, n)."""
    j = np.arange(n)
    return (np.minimum(j + radius + 1, n) - np.maximum(j - radius, 0)).astype(np.float64)


# Scratch buffers for the running sums, reused between calls (per thread, so
# Dask's threaded scheduler is safe). Re-allocating multi-megabyte buffers on
# every call costs page faults comparable to the arithmetic itself; buffers
# above the cap are not kept, so a large volume batch does not pin memory.
_scratch = threading.local()
_SCRATCH_CAP_BYTES = 64 * 1024 * 1024


def _buffer(slot: str, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape)) * 8
    if size > _SCRATCH_CAP_BYTES:
        return np.empty(shape, np.float64)
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    flat = pool.get(slot)
    if flat is None or flat.size * 8 < size:
        flat = pool[slot] = np.empty(size // 8, np.float64)
    return flat[: size // 8].reshape(shape)


def _mean_along_rows(x: np.ndarray, radius: int, out: np.ndarray) -> np.ndarray:
    """Window mean along axis -2 (down the columns) into ``out``.

    The running sum is built one image row at a time: each step is a
    vectorised float64 add over all leading images and all columns, which on
    NumPy is faster than ``cumsum(axis=-2)`` (a strided accumulate).
    """
    n = x.shape[-2]
    # Extended cumulative sum: ext[t] = sum of rows [0, clip(t - radius, 0, n)),
    # so the window sum of row i is ext[i + 2r + 1] - ext[i].
    ext = _buffer("rows", x.shape[:-2] + (n + 2 * radius + 1, x.shape[-1]))
    ext[..., : radius + 1, :] = 0.0
    for i in range(n):
        np.add(ext[..., radius + i, :], x[..., i, :], out=ext[..., radius + 1 + i, :])
    ext[..., radius + 1 + n :, :] = ext[..., radius + n : radius + n + 1, :]
    np.subtract(ext[..., 2 * radius + 1 :, :], ext[..., :n, :], out=out)
    out *= (1.0 / _window_counts(n, radius))[:, None]
    return out


def _mean_along_columns(x: np.ndarray, radius: int, out: np.ndarray) -> np.ndarray:
    """Window mean along axis -1 (along each row) into ``out``."""
    n = x.shape[-1]
    ext = _buffer("columns", x.shape[:-1] + (n + 2 * radius + 1,))
    ext[..., : radius + 1] = 0.0
    np.cumsum(x, axis=-1, dtype=np.float64, out=ext[..., radius + 1 : radius + 1 + n])
    ext[..., radius + 1 + n :] = ext[..., radius + n : radius + n + 1]
    np.subtract(ext[..., 2 * radius + 1 :], ext[..., :n], out=out)
    out *= 1.0 / _window_counts(n, radius)
    return out


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

    Returns
    -------
    ndarray, shape (..., H, W), ``dtype``
        At pixel (i, j), the mean of ``images[..., i-r:i+r+1, j-r:j+r+1]``
        over the part of the window inside the image (see module docstring).
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
    between = _buffer("between", images.shape)
    return _mean_along_columns(_mean_along_rows(images, radius, between), radius, out)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, *, dtype: type = np.float64) -> np.ndarray:
    """Guided filter of He, Sun & Tang (grey guide), O(N) in the image size.

    Implements, with ``mean`` the :func:`box_mean` of ``radius``::

        a = (mean(I·p) − mean(I)·mean(p)) / (mean(I²) − mean(I)² + eps)
        b = mean(p) − a·mean(I)
        q = mean(a)·I + mean(b)

    All intermediate values are float64 whatever ``dtype`` is.

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
    # The four statistics share one box pass; both work arrays are reused
    # scratch buffers, and every step below writes into them in place.
    stats = _buffer("guided_stats", (4,) + guide.shape)
    means = _buffer("guided_means", (4,) + guide.shape)
    stats[0] = guide
    stats[1] = src
    np.multiply(stats[0], stats[0], out=stats[2])
    np.multiply(stats[0], stats[1], out=stats[3])
    mean_i, mean_p, mean_ii, mean_ip = box_mean(stats, radius, out=means)
    var_i = np.subtract(mean_ii, np.square(mean_i, out=stats[0]), out=mean_ii)
    var_i += eps
    cov_ip = np.subtract(mean_ip, np.multiply(mean_i, mean_p, out=stats[0]), out=mean_ip)
    coefficients = stats[:2]
    a = np.divide(cov_ip, var_i, out=coefficients[0])
    np.subtract(mean_p, np.multiply(a, mean_i, out=stats[2]), out=coefficients[1])  # b
    mean_a, mean_b = box_mean(coefficients, radius, out=means[:2])
    q = np.multiply(mean_a, guide, out=np.empty(guide.shape, dtype))
    q += mean_b
    return q


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
