"""Input handling and local statistics shared by the fusion metrics.

Every metric works in **8-bit range semantics**, as the literature's reference
code does (images read from 8-bit files, values 0..255):

* ``uint8`` arrays are used as they are;
* other integer arrays (``uint16``, ``int16``, ...) are scaled by their dtype's
  range onto 0..255 (``bool`` maps to 0/255);
* floating-point arrays must lie in [0, 1] (medfuse's working range) and are
  multiplied by 255; values outside [0, 1] are refused rather than guessed at;
* ``(H, W, 3)`` colour arrays are reduced to luma ``Y = 0.299 R + 0.587 G +
  0.114 B`` (ITU-R BT.601, the weights of MATLAB's ``rgb2gray`` that the VIFB
  and MEFB wrappers call), after the scaling above.

The histogram metrics (EN, MI, QMI) quantise to the 256 integer levels by
rounding to nearest; the others use the continuous 0..255 values.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from medfuse.errors import InputError

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])

#: Smallest side accepted: VIFF's coarsest scale needs about 32 pixels.
MIN_SIDE = 32

#: Relative size, against the local second moment, below which a local
#: (co)variance is float round-off and is set to exactly 0 (see docs/metrics.md,
#: "flat windows").
FLAT_TOLERANCE = 1e-10


def to_gray255(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Convert one image to a float64 (H, W) array in 8-bit range semantics.

    Parameters
    ----------
    image : ndarray, (H, W) or (H, W, 3)
        Grey or RGB image; integer of any width, bool, or float in [0, 1].
    name : str
        What to call the image in error messages.

    Returns
    -------
    ndarray, (H, W) float64
        Values in [0, 255].

    Raises
    ------
    InputError
        If the array is not 2-D grey or 3-channel colour, is empty, holds
        non-finite values, or is float outside [0, 1].
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise InputError(f"{name}: expected a (H, W) grey or (H, W, 3) colour image, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name}: image is empty")
    if array.dtype == bool:
        scaled = array.astype(np.float64) * 255.0
    elif np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if array.dtype == np.uint8:
            scaled = array.astype(np.float64)
        else:
            scaled = (array.astype(np.float64) - info.min) * (255.0 / (int(info.max) - int(info.min)))
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array.astype(np.float64)
        if not np.all(np.isfinite(scaled)):
            raise InputError(f"{name}: image holds NaN or infinite values")
        low, high = float(scaled.min()), float(scaled.max())
        if low < -1e-6 or high > 1.0 + 1e-6:
            raise InputError(
                f"{name}: float images must lie in [0, 1] (got {low:.4g}..{high:.4g}); "
                "pass uint8 for 0..255 data"
            )
        scaled = np.clip(scaled, 0.0, 1.0) * 255.0
    else:
        raise InputError(f"{name}: unsupported dtype {array.dtype}")
    if scaled.ndim == 3:
        scaled = scaled @ LUMA_WEIGHTS
    return scaled


def prepare(sources: Sequence[np.ndarray], fused: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Validate and convert sources and fused image (see :func:`to_gray255`).

    Parameters
    ----------
    sources : sequence of K >= 2 arrays, each (H, W) or (H, W, 3)
    fused : ndarray, (H, W) or (H, W, 3)

    Returns
    -------
    sources : list of K float64 (H, W) arrays in [0, 255]
    fused : float64 (H, W) array in [0, 255]

    Raises
    ------
    InputError
        Fewer than two sources, mismatched sizes, or images smaller than
        ``MIN_SIDE`` pixels on a side.
    """
    if len(sources) < 2:
        raise InputError(f"fusion metrics need at least 2 source images, got {len(sources)}")
    grey = [to_gray255(s, name=f"source {i + 1}") for i, s in enumerate(sources)]
    out = to_gray255(fused, name="fused image")
    for i, s in enumerate(grey):
        if s.shape != out.shape:
            raise InputError(f"source {i + 1} is {s.shape[1]}x{s.shape[0]} but the fused image is {out.shape[1]}x{out.shape[0]}")
    if min(out.shape) < MIN_SIDE:
        raise InputError(f"images must be at least {MIN_SIDE} pixels on each side, got {out.shape[1]}x{out.shape[0]}")
    return grey, out


def quantize(image255: np.ndarray) -> np.ndarray:
    """Round a [0, 255] image to its 256 integer levels (intp, same shape)."""
    return np.clip(np.rint(image255), 0, 255).astype(np.intp)


@lru_cache(maxsize=16)
def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of odd *size*; its outer product with itself is
    MATLAB's ``fspecial('gaussian', size, sigma)`` (to round-off)."""
    half = (size - 1) / 2.0
    x = np.arange(size) - half
    kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    kernel.setflags(write=False)
    return kernel


def gaussian_filter(image: np.ndarray, size: int, sigma: float, *, valid: bool) -> np.ndarray:
    """Separable Gaussian window, zero-padded like MATLAB ``filter2``.

    ``valid=True`` keeps only fully covered positions ((H-size+1, W-size+1));
    ``valid=False`` returns the zero-padded 'same' result ((H, W)). Float64,
    computed by the compiled loop :func:`medfuse.metrics._kernels.correlate_zero`
    (the values of ``scipy.ndimage.correlate1d`` down the columns and then along
    the rows with ``mode="constant"``, to round-off).
    """
    from medfuse.metrics import _kernels  # numba is imported by the first metric that needs it

    kernel = gaussian_kernel_1d(size, sigma)
    half = size // 2
    image = np.ascontiguousarray(image, dtype=np.float64)
    rows, cols = image.shape
    shape = (max(rows - 2 * half, 0), max(cols - 2 * half, 0)) if valid else (rows, cols)
    out = np.empty(shape, np.float64)
    _kernels.correlate_zero(image, kernel, half if valid else 0, out)
    return out


def snap_flat(moment: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Set (co)variances that are round-off relative to *scale* to exactly 0.

    ``E[x^2] - E[x]^2`` in a constant window is not exactly 0 in floating
    point; left alone, those residues decide 0/0 ratios (QY's and QC's
    weights, VIFF's gain) at random.
    """
    return np.where(np.abs(moment) <= FLAT_TOLERANCE * (scale + 1.0), 0.0, moment)


def local_moments(x: np.ndarray, y: np.ndarray, size: int, sigma: float, *, valid: bool):
    """Gaussian-weighted local means, variances and covariance of x and y.

    Returns
    -------
    mu_x, mu_y, var_x, var_y, cov_xy : float64 arrays, all the same shape
        Variances are clipped at 0 and round-off residues snapped to 0.
    """
    mu_x = gaussian_filter(x, size, sigma, valid=valid)
    mu_y = gaussian_filter(y, size, sigma, valid=valid)
    ex2 = gaussian_filter(x * x, size, sigma, valid=valid)
    ey2 = gaussian_filter(y * y, size, sigma, valid=valid)
    exy = gaussian_filter(x * y, size, sigma, valid=valid)
    var_x = snap_flat(np.maximum(ex2 - mu_x * mu_x, 0.0), ex2)
    var_y = snap_flat(np.maximum(ey2 - mu_y * mu_y, 0.0), ey2)
    cov = snap_flat(exy - mu_x * mu_y, np.sqrt(ex2 * ey2))
    return mu_x, mu_y, var_x, var_y, cov
