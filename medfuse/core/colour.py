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
    return _linear(rgb, _RGB_TO_YCBCR, after=_OFFSET, what="RGB")


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """YCbCr (..., 3) -> RGB (..., 3) float32, not clipped (clip to [0, 1] for display)."""
    return _linear(ycbcr, _YCBCR_TO_RGB, before=-_OFFSET, what="YCbCr")


def _linear(data: np.ndarray, matrix: np.ndarray, *, before=None, after=None, what: str) -> np.ndarray:
    """out[..., r] = Σ_c matrix[r, c] · (data[..., c] + before[c]) + after[r], channel by channel in float32."""
    data = np.asarray(data)
    if data.shape[-1] != 3:
        raise ValueError(f"{what} data needs a last axis of 3, got shape {data.shape}")
    channels = [data[..., c].astype(np.float32) for c in range(3)]
    if before is not None:
        channels = [channel + np.float32(shift) for channel, shift in zip(channels, before)]
    out = np.empty(data.shape, np.float32)
    for row in range(3):
        target = out[..., row]
        np.multiply(channels[0], np.float32(matrix[row, 0]), out=target)
        target += np.float32(matrix[row, 1]) * channels[1]
        target += np.float32(matrix[row, 2]) * channels[2]
        if after is not None:
            target += np.float32(after[row])
    return out


def is_grey_rgb(rgb: np.ndarray) -> bool:
    """True when an (H, W, 3) image has identical R, G and B everywhere.

    Many medical PNGs are grey images stored as RGB; they are fused as grey
    (their chroma is neutral and must not dilute a real colour source's).
    """
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
