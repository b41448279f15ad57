"""Automatic foreground (body / head) masks for registration.

A registration metric sampled over air, the CT table or the padding outside a
scanner's field of view learns to align those instead of the anatomy. The
mask here keeps the largest bright connected object: threshold (Otsu on
percentile-clipped intensities without the padding value, so a few very hot
PET voxels, metal, or CT padding do not move the threshold), a morphological opening that cuts thin bridges such as
the CT table, the largest connected component, hole filling, and a small
dilation so the body's edge (a strong MI cue) stays inside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError


@dataclass(frozen=True)
class MaskConfig:
    """Parameters of :func:`foreground_mask`.

    Attributes
    ----------
    clip_percentiles : tuple of float
        Intensities are clipped to these percentiles before Otsu's threshold,
        so that rare extreme values (PET hot spots, metal, CT padding) do not
        decide the threshold. Default (1, 99).
    opening_radius_mm : float
        Radius of the binary opening that separates the body from thin
        attached objects (table, cables) before the largest component is kept.
        Default 3 mm (cuts thin bridges; a CT table pad thicker than ~6 mm
        that touches the body stays in the mask).
    dilation_radius_mm : float
        Radius of the final dilation, so the skin/skull edge stays inside.
        Default 4 mm.
    working_spacing_mm : float
        The mask is computed on a copy resampled to at least this spacing
        (speed; a mask needs no sub-millimetre detail), then brought back to
        the image grid. Default 2 mm.
    """

    clip_percentiles: tuple[float, float] = (1.0, 99.0)
    opening_radius_mm: float = 3.0
    dilation_radius_mm: float = 4.0
    working_spacing_mm: float = 2.0

    def __post_init__(self) -> None:
        low, high = self.clip_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise InputError(f"mask clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")
        for name in ("opening_radius_mm", "dilation_radius_mm"):
            if getattr(self, name) < 0:
                raise InputError(f"mask {name} must be >= 0, got {getattr(self, name)}")
        if self.working_spacing_mm <= 0:
            raise InputError(f"mask working_spacing_mm must be > 0, got {self.working_spacing_mm}")


def foreground_mask(image: sitk.Image, config: MaskConfig | None = None) -> sitk.Image:
    """Mask of the largest bright object (the body or head) of a 3-D image.

    Parameters
    ----------
    image : SimpleITK.Image
        3-D scalar image, any pixel type.
    config : MaskConfig, optional
        Defaults to ``MaskConfig()``.

    Returns
    -------
    SimpleITK.Image
        uint8 mask (1 inside) on the grid of *image*.

    Raises
    ------
    InputError
        If the image is constant, so that no foreground can be found.
    """
    config = config or MaskConfig()
    work = _coarse_copy(sitk.Cast(image, sitk.sitkFloat32), config.working_spacing_mm)
    values = sitk.GetArrayViewFromImage(work)
    # Padding (CT -3024 outside the reconstruction circle, zeros around a
    # resampled MR) is not air: leave the image minimum out of the statistics.
    content = values[values > values.min()]
    if content.size == 0:
        raise InputError("cannot compute a foreground mask: the image is constant")
    low, high = np.percentile(content, config.clip_percentiles)
    if not high > low:
        low, high = float(content.min()), float(content.max())
    clipped = sitk.Clamp(work, sitk.sitkFloat32, float(low), float(high))
    not_padding = sitk.Cast(work > float(values.min()), sitk.sitkUInt8)
    # Otsu labels the bright class 1 with insideValue=0, outsideValue=1.
    threshold = sitk.OtsuThreshold(clipped, not_padding, 0, 1, 128, False, 1) * not_padding
    binary = _morphology(threshold, sitk.BinaryMorphologicalOpening, config.opening_radius_mm)
    largest = _largest_component(binary)
    if largest is None:
        # The opening removed everything (a thin object): fall back to the raw threshold.
        largest = _largest_component(threshold)
    if largest is None:
        raise InputError("cannot compute a foreground mask: no bright object found")
    filled = sitk.BinaryFillhole(largest, fullyConnected=False, foregroundValue=1)
    dilated = _morphology(filled, sitk.BinaryDilate, config.dilation_radius_mm)
    on_grid = sitk.Resample(dilated, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return on_grid


def _coarse_copy(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    spacing = np.asarray(image.GetSpacing())
    factors = np.maximum(1, np.floor(spacing_mm / spacing)).astype(int)
    if np.all(factors == 1):
        return image
    return sitk.BinShrink(image, [int(f) for f in factors])


def _morphology(binary: sitk.Image, operation, radius_mm: float) -> sitk.Image:
    radius = [int(round(radius_mm / s)) for s in binary.GetSpacing()]
    if not any(radius):
        return binary
    return operation(binary, radius, sitk.sitkBall, 1)


def _largest_component(binary: sitk.Image) -> sitk.Image | None:
    components = sitk.RelabelComponent(sitk.ConnectedComponent(binary), sortByObjectSize=True)
    largest = sitk.Cast(components == 1, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(largest)):
        return None
    return largest
