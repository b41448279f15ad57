"""BT.601 YCbCr colour conversion (full range, as JPEG/JFIF), for luma fusion.

RGB sources are fused on their luma Y; the chroma (Cb, Cr) of the colour
sources is averaged (paper IV-A). Values are in [0, 1]; Cb and Cr are centred
on 0.5. The inverse is the exact algebraic inverse of the forward matrix.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rgb_to_ycbcr", "ycbcr_to_rgb", "is_grey_rgb"]

_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
# Rows: Y, Cb, Cr as linear combinations of R, G, B (offsets of 0.5 added after).
_RGB_TO_YCBCR = np.array(
    [
        [_KR, _KG, _KB],
        [-_KR / (2 * (1 - _KB)), -_KG / (2 * (1 - _KB)), 0.5],
        [0.5, -_KG / (2 * (1 - _KR)), -_KB / (2 * (1 - _KR))],
    ]
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)
_OFFSET = np.array([0.0, 0.5, 0.5])


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) in [0, 1] -> YCbCr (..., 3) float32 (Y in [0, 1], Cb/Cr in [0, 1] centred at 0.5)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"RGB data needs a last axis of 3, got shape {rgb.shape}")
    return (rgb @ _RGB_TO_YCBCR.T + _OFFSET).astype(np.float32)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """YCbCr (..., 3) -> RGB (..., 3) float32, not clipped (clip to [0, 1] for display)."""
    ycbcr = np.asarray(ycbcr, dtype=np.float64)
    if ycbcr.shape[-1] != 3:
        raise ValueError(f"YCbCr data needs a last axis of 3, got shape {ycbcr.shape}")
    return ((ycbcr - _OFFSET) @ _YCBCR_TO_RGB.T).astype(np.float32)


def is_grey_rgb(rgb: np.ndarray) -> bool:
    """True when an (H, W, 3) image has identical R, G and B everywhere.

    Many medical PNGs are grey images stored as RGB; they are fused as grey
    (their chroma is neutral and must not dilute a real colour source's).
    """
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
