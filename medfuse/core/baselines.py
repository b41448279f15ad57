"""Baseline fusion methods, so that every metric table is side by side.

All take ``sources``, K >= 2 registered grey images of shape (K, H, W) with
values in [0, 1] (float) and return the fused (H, W) float32 image in
[0, 1]. They are deterministic and pure NumPy/SciPy, and reuse the core's
filters (:mod:`medfuse.core.filters`), whose border rule is to average over
the part of a window inside the image.

* :func:`average` — pixel-wise mean.
* :func:`maximum` — pixel-wise maximum (strong on medical slices whose
  sources are black where the other modality has signal).
* :func:`avg_max` — the paper's AVG-MAX ablation: the same two-scale box
  decomposition as the method, averaged base layers, and at each pixel the
  detail of the source with the largest absolute detail (choose-max, no
  weight refinement).
* :func:`gff` — guided filtering based fusion of S. Li, X. Kang and J. Hu,
  "Image fusion with guided filtering", IEEE Trans. Image Processing 22(7),
  2013, with the paper's defaults.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from medfuse.core.filters import box_mean, gaussian_blur, guided_filter
from medfuse.errors import InputError

__all__ = ["BASELINES", "average", "maximum", "avg_max", "gff"]

#: Box side of the AVG-MAX decomposition: the paper configuration's 45.
AVG_MAX_BOX_SIZE = 45

# GFF defaults (Li, Kang & Hu 2013, section III and IV-A).
GFF_BASE_SIZE = 31  # average filter Z, 31x31
GFF_SALIENCY_RADIUS = 5  # Gaussian low-pass g_{rg, sigma_g}: rg = 5 ...
GFF_SALIENCY_SIGMA = 5.0  # ... sigma_g = 5
GFF_R1, GFF_EPS1 = 45, 0.3  # guided filter for the base weights
GFF_R2, GFF_EPS2 = 7, 1e-6  # guided filter for the detail weights
_LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _check(sources) -> np.ndarray:
    """(K, H, W) float64 copy of the sources, validated."""
    stack = np.asarray(sources, dtype=np.float64) if not isinstance(sources, np.ndarray) else sources.astype(np.float64)
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise InputError(f"baseline fusion needs sources of shape (K >= 2, H, W), got {stack.shape}")
    if not np.all(np.isfinite(stack)):
        raise InputError("baseline fusion: sources hold NaN or infinite values")
    if stack.min() < -1e-6 or stack.max() > 1 + 1e-6:
        raise InputError(f"baseline fusion: sources must lie in [0, 1], got {stack.min():.4g}..{stack.max():.4g}")
    return stack


def _finish(fused: np.ndarray) -> np.ndarray:
    return np.clip(fused, 0.0, 1.0).astype(np.float32)


def _normalise(weights: np.ndarray) -> np.ndarray:
    """Weights scaled to sum 1 per pixel; equal weights where the sum is 0."""
    total = weights.sum(axis=0)
    zero = total == 0
    return np.where(zero, 1.0 / weights.shape[0], weights / np.where(zero, 1.0, total))


def _choose_max(activity: np.ndarray) -> np.ndarray:
    """One-hot (K, H, W) map of the source with the largest activity (first on ties)."""
    winner = np.argmax(activity, axis=0)
    return (np.arange(activity.shape[0])[:, None, None] == winner[None]).astype(np.float64)


def average(sources: np.ndarray) -> np.ndarray:
    """Pixel-wise mean of the sources.

    Parameters
    ----------
    sources : (K, H, W) array, float in [0, 1]

    Returns
    -------
    (H, W) float32 in [0, 1]
    """
    return _finish(_check(sources).mean(axis=0))


def maximum(sources: np.ndarray) -> np.ndarray:
    """Pixel-wise maximum of the sources.

    Parameters
    ----------
    sources : (K, H, W) array, float in [0, 1]

    Returns
    -------
    (H, W) float32 in [0, 1]
    """
    return _finish(_check(sources).max(axis=0))


def avg_max(sources: np.ndarray, *, box_size: int = AVG_MAX_BOX_SIZE) -> np.ndarray:
    """AVG-MAX: averaged base layers plus choose-max-absolute detail layers.

    Base B_k = box mean of I_k over ``box_size`` x ``box_size`` (the paper's
    decomposition), D_k = I_k - B_k; F = mean_k B_k + D_j with
    j = argmax_k |D_k| per pixel (Lahoud & Suesstrunk, section IV-C2).

    Parameters
    ----------
    sources : (K, H, W) array, float in [0, 1]
    box_size : int, odd
        Window side of the box decomposition.

    Returns
    -------
    (H, W) float32 in [0, 1]
    """
    stack = _check(sources)
    if box_size < 1 or box_size % 2 != 1:
        raise InputError(f"box_size must be a positive odd integer, got {box_size}")
    base = box_mean(stack, box_size // 2)
    detail = stack - base
    chosen = _choose_max(np.abs(detail))
    return _finish(base.mean(axis=0) + (chosen * detail).sum(axis=0))


def gff(
    sources: np.ndarray,
    *,
    r1: int = GFF_R1,
    eps1: float = GFF_EPS1,
    r2: int = GFF_R2,
    eps2: float = GFF_EPS2,
) -> np.ndarray:
    """Guided filtering based fusion (GFF), Li, Kang & Hu 2013.

    1. Two-scale decomposition: B_k = I_k * Z (31x31 average filter),
       D_k = I_k - B_k.
    2. Saliency S_k = |I_k * L| * g (3x3 Laplacian L, then Gaussian low-pass
       of radius 5, sigma 5); binary maps P_k = 1 where S_k is the largest
       (first source on ties).
    3. Weights W^B_k = G_{r1, eps1}(P_k, I_k), W^D_k = G_{r2, eps2}(P_k, I_k)
       (guided filter, source as guide), each normalised to sum 1 per pixel.
    4. F = sum_k W^B_k B_k + sum_k W^D_k D_k, clipped to [0, 1].

    Defaults r1 = 45, eps1 = 0.3, r2 = 7, eps2 = 1e-6 are the paper's.
    Borders: the core filters' rule (average over the in-image part of a
    window) for the box, Gaussian and guided filters; the Laplacian
    replicates edge pixels. Colour sources: pass luma (the paper's colour
    guided filter is not implemented).

    Parameters
    ----------
    sources : (K, H, W) array, float in [0, 1]
    r1, eps1, r2, eps2 : guided-filter radii and regularisation

    Returns
    -------
    (H, W) float32 in [0, 1]
    """
    stack = _check(sources)
    base = box_mean(stack, GFF_BASE_SIZE // 2)
    detail = stack - base
    high_pass = np.stack([ndimage.correlate(img, _LAPLACIAN, mode="nearest") for img in stack])
    saliency = gaussian_blur(np.abs(high_pass), sigma=GFF_SALIENCY_SIGMA, radius=GFF_SALIENCY_RADIUS)
    chosen = _choose_max(saliency)
    w_base = _normalise(guided_filter(stack, chosen, r1, eps1))
    w_detail = _normalise(guided_filter(stack, chosen, r2, eps2))
    return _finish((w_base * base).sum(axis=0) + (w_detail * detail).sum(axis=0))


#: Baselines by the names the evaluate command and the tables use.
BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "average": average,
    "max": maximum,
    "avg-max": avg_max,
    "gff": gff,
}
