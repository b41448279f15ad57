"""Two-scale decomposition: base B = M(I) (smoothing), detail D = I − B (paper eqs. 1–2)."""

from __future__ import annotations

import numpy as np

from medfuse.core.filters import box_mean, gaussian_blur, guided_filter

__all__ = ["decompose"]


def decompose(images: np.ndarray, method: str = "box", size: int = 45, eps: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Split images into base and detail layers.

    Parameters
    ----------
    images : ndarray, shape (..., H, W), float32
    method : {'box', 'gaussian', 'guided'}
        'box': mean over a size×size window (the paper's choice).
        'gaussian': Gaussian, sigma = size / 6, truncated at the window.
        'guided': guided filter with the image as its own guide, radius
        size // 2 and ``eps`` (edge-preserving smoothing).
    size : int, odd
        Window side in pixels.
    eps : float
        Guided-filter ε (only for 'guided').

    Returns
    -------
    base, detail : ndarray, shape (..., H, W), float32
        ``base + detail == images`` up to float32 rounding.
    """
    radius = size // 2
    if method == "box":
        base = box_mean(images, radius, dtype=np.float32)
    elif method == "gaussian":
        base = gaussian_blur(images, sigma=size / 6.0, radius=radius).astype(np.float32)
    elif method == "guided":
        base = guided_filter(images, images, radius, eps, dtype=np.float32)
    else:
        raise ValueError(f"unknown decomposition {method!r}")
    return base, images - base
