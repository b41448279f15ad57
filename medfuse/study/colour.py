"""Colour fused output: anatomy (CT/MR) + functional (PET/SPECT) through a standard palette.

The functional volume, mapped to [0, 1] like every source, is shown through
the DICOM well-known colour palette **HOT_IRON** (PS3.6 Annex B, Color Palette
SOP Instance UID 1.2.840.10008.1.5.1; black -> red -> yellow -> white, the
palette PET viewers commonly use), read from the palette instance that pydicom
ships (:func:`pydicom.pixels.apply_color_lut`). As in the fusion core for 2-D
colour images (:mod:`medfuse.core.colour`, :func:`medfuse.api.fuse`, paper
IV-A), the colour source is converted to BT.601 YCbCr, its **luma** Y is fused
with the grey sources, and the fused luma takes the colour source's chroma
(Cb, Cr) back before converting to RGB. Where the functional volume is 0
(outside its field of view, or no uptake) the palette is black, its chroma
neutral, and the colour image shows the grey fused anatomy.

Because the palette is a 256-entry table and YCbCr is linear in RGB, the
functional volume is kept as uint8 palette indices (one byte per voxel) and
its luma and chroma are looked up from per-entry tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.pixels import apply_color_lut

from medfuse.core.colour import rgb_to_ycbcr, ycbcr_to_rgb
from medfuse.errors import InputError

__all__ = ["ANATOMICAL_MODALITIES", "FUNCTIONAL_MODALITIES", "Palette", "functional_source", "rgb_slices"]

#: Sources shown through the palette.
FUNCTIONAL_MODALITIES = ("PT", "NM")
#: Sources fused as grey anatomy.
ANATOMICAL_MODALITIES = ("CT", "MR")


@dataclass(frozen=True)
class Palette:
    """A 256-entry colour palette and its BT.601 YCbCr.

    Attributes
    ----------
    name : str
        DICOM well-known palette name, e.g. ``HOT_IRON``.
    uid : str
        Its Color Palette SOP Instance UID (PS3.6 Annex B).
    rgb : ndarray (256, 3) uint8
    ycbcr : ndarray (256, 3) float32
        Y in [0, 1]; Cb, Cr centred on 0.5.
    """

    name: str
    uid: str
    rgb: np.ndarray
    ycbcr: np.ndarray

    def __post_init__(self) -> None:
        if self.rgb.shape != (256, 3) or self.rgb.dtype != np.uint8:
            raise InputError(f"palette {self.name}: expected (256, 3) uint8 RGB, got {self.rgb.dtype} {self.rgb.shape}")

    @classmethod
    def hot_iron(cls) -> Palette:
        """The DICOM well-known HOT_IRON palette (from pydicom's bundled palette instance)."""
        uid = "1.2.840.10008.1.5.1"
        rgb = apply_color_lut(np.arange(256, dtype=np.uint8), palette=uid)
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8:  # 16-bit palette entries: keep the high byte
            rgb = (rgb >> 8).astype(np.uint8)
        return cls("HOT_IRON", uid, rgb, rgb_to_ycbcr(rgb / 255.0))

    def indices(self, unit: np.ndarray) -> np.ndarray:
        """Values in [0, 1] (any shape, float) -> palette indices uint8 (same shape), round(255 * v)."""
        out = np.empty(np.shape(unit), np.uint8)
        np.rint(np.clip(unit, 0.0, 1.0) * 255.0, out=out, casting="unsafe")
        return out

    def luma(self, indices: np.ndarray) -> np.ndarray:
        """Palette indices (any shape) -> luma float32 in [0, 1] (same shape)."""
        return np.clip(self.ycbcr[:, 0], 0.0, 1.0)[indices]


def functional_source(modalities: Sequence[str]) -> int:
    """Index of the one functional (PT/NM) source, checking the set suits colour output.

    Raises
    ------
    InputError
        Unless exactly one source is PT/NM and at least one is CT/MR.
    """
    functional = [i for i, m in enumerate(modalities) if m in FUNCTIONAL_MODALITIES]
    if len(functional) != 1 or not any(m in ANATOMICAL_MODALITIES for m in modalities):
        raise InputError("colour output needs one PET/SPECT (PT/NM) volume and at least one CT/MR volume; "
                         f"got {', '.join(m or 'unknown' for m in modalities)}")
    return functional[0]


def rgb_slices(fused_luma: np.ndarray, indices: np.ndarray, palette: Palette) -> Callable[[int], np.ndarray]:
    """``slice(z) -> (Y, X, 3) uint8`` RGB: fused luma with the functional source's chroma.

    Parameters
    ----------
    fused_luma : ndarray (Z, Y, X) float32 in [0, 1]
        Fusion of the grey sources with the functional source's palette luma.
    indices : ndarray (Z, Y, X) uint8
        The functional source's palette indices on the same grid.
    palette : Palette
    """
    if fused_luma.shape != indices.shape:
        raise InputError(f"fused luma {fused_luma.shape} and palette indices {indices.shape} differ in shape")

    def rgb_slice(z: int) -> np.ndarray:
        ycbcr = np.empty(fused_luma.shape[1:] + (3,), np.float32)
        ycbcr[..., 0] = fused_luma[z]
        ycbcr[..., 1:] = palette.ycbcr[indices[z], 1:]
        rgb = np.clip(ycbcr_to_rgb(ycbcr), 0.0, 1.0)
        return np.rint(rgb * 255.0).astype(np.uint8)

    return rgb_slice
