"""Image filters used by the fusion core: box mean, guided filter, Gaussian.

All filters act on the last two axes of an array of shape ``(..., H, W)`` and
treat every leading index as an independent image, so K sources (or K·Z
slices) are filtered in one call.

They run compiled kernels (:mod:`medfuse.core.kernels`, numba); the NumPy
implementation they replaced, with the same results to ~1e-12, is
:mod:`medfuse.core.kernels_reference` (the tests' oracle).

Border rule (all filters here): a window that reaches past the image edge is
cut to the part inside the image, and the filter averages over that part only
(for the Gaussian: the weights inside, renormalised to sum 1). No padding
values are invented, so a constant image stays exactly constant up to the
border. This is the rule of He et al.'s reference guided-filter code
(``boxfilter(I, r) ./ boxfilter(ones, r)``); note that OpenCV's ``cv2.blur``
and ``cv2.ximgproc.guidedFilter`` use mirrored borders instead, so results
differ from them within ``radius`` pixels of the edge.

Precision: window sums are running sums, computed in float64, and so is the
guided filter's arithmetic (``var = E[I²] − E[I]²`` with ε = 1e-6 needs it: a
float32 sum over a 512-pixel row loses ~1e-5). Images are read and results
written in their own dtype (float32 or float64).
"""

from __future__ import annotations

import math

import numpy as np

from medfuse.core import kernels

__all__ = ["box_mean", "guided_filter", "GuideWindows", "gaussian_blur"]

_FLOATS = (np.float32, np.float64)


def _images(array: np.ndarray) -> np.ndarray:
    """(..., H, W) real array as C-contiguous (n, H, W) float32 or float64 (no copy when it already is)."""
    dtype = array.dtype if array.dtype in _FLOATS else np.float64
    return np.ascontiguousarray(array, dtype=dtype).reshape((-1,) + array.shape[-2:])


def _result_target(out: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    """``out`` itself if a kernel can write it directly, else a scratch array to copy into it afterwards."""
    direct = out.flags.c_contiguous and out.dtype in _FLOATS and not any(np.shares_memory(out, a) for a in inputs)
    return out if direct else np.empty(out.shape, out.dtype if out.dtype in _FLOATS else np.float64)


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
    One compiled pass per image (:func:`medfuse.core.kernels.box_mean_images`):
    float64 window sums slid down the rows, prefix sums across each row,
    each scaled by the number of window pixels inside the image.
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
    if radius == 0 or images.size == 0:
        out[...] = images
        return out
    target = _result_target(out, images)
    kernels.box_mean_images(_images(images), radius, target.reshape((-1,) + images.shape[-2:]))
    if target is not out:
        out[...] = target
    return out


class GuideWindows:
    """A guide image prepared for guided-filtering several inputs.

    The compiled filter computes the guide's window sums in the same pass as
    the input's (cheaper than storing and re-reading them), so this only
    holds the guide in the layout the kernel reads; it keeps the interface
    through which the fusion filters its base and detail weights by the sources.

    Parameters
    ----------
    guide : ndarray, shape (..., H, W), real
        Grey guide image(s) I, one per leading index.
    """

    def __init__(self, guide: np.ndarray) -> None:
        guide = np.asarray(guide)
        if guide.ndim < 2:
            raise ValueError(f"a guide needs (..., H, W) images, got shape {guide.shape}")
        self.guide = guide
        self._images = _images(guide)

    def filter(self, src: np.ndarray, radius: int, eps: float, *, dtype: type = np.float64) -> np.ndarray:
        """The guided filter of ``src`` by this guide; see :func:`guided_filter`."""
        src = np.asarray(src)
        if src.shape != self.guide.shape:
            raise ValueError(f"guide shape {self.guide.shape} differs from input shape {src.shape}")
        if not eps > 0:
            raise ValueError(f"guided filter eps must be > 0, got {eps!r}")
        if int(radius) != radius or radius < 0:
            raise ValueError(f"guided filter radius must be a non-negative integer, got {radius!r}")
        q = np.empty(src.shape, dtype)
        if src.size:
            kernels.guided_images(self._images, _images(src), int(radius), float(eps),
                                  q.reshape((-1,) + src.shape[-2:]))
        return q


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, *, dtype: type = np.float64) -> np.ndarray:
    """Guided filter of He, Sun & Tang (grey guide), O(N) in the image size.

    Implements, with ``mean`` the :func:`box_mean` of ``radius``::

        a = (mean(I·p) − mean(I)·mean(p)) / (mean(I²) − mean(I)² + eps)
        b = mean(p) − a·mean(I)
        q = mean(a)·I + mean(b)

    All intermediate values are float64 whatever ``dtype`` is, computed by
    :func:`medfuse.core.kernels.guided_images` in two passes over each image.

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
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"gaussian_blur needs (..., H, W) images, got shape {images.shape}")
    if not sigma > 0:
        raise ValueError(f"Gaussian sigma must be > 0, got {sigma!r}")
    radius = int(radius)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.empty(images.shape, np.float64)
    if math.prod(images.shape):
        kernels.gaussian_images(_images(images), kernel, radius, out.reshape((-1,) + images.shape[-2:]))
    return out
