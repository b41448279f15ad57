"""Automatic foreground (body / head) masks for registration.

A registration metric sampled over air, the CT table or the padding outside a
scanner's field of view learns to align those instead of the anatomy. The
mask here keeps the bright object:

1. threshold: the lowest of the multi-class Otsu thresholds of the
   percentile-clipped intensities without the padding value. Two classes
   split "background | object" on a head or body, but on an object with
   large dim regions and a bright minority (a rod phantom, a contrast where
   mid-grey is bright) they split "dim object | bright object"; with three
   classes the lowest threshold is the one between background and the
   dimmest part of the object;
2. a closing that also fills cavities (dilate, fill holes, erode), so a
   thin skull with gaps, or a brain whose CT values equal air's, becomes one
   solid object;
3. an opening that cuts thin attachments (the CT table), then the largest
   connected component; unless that keeps too little of the above-threshold
   voxels (an object made of thin or separate parts: then every part stays);
4. a small dilation so the body's edge (a strong MI cue) stays inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError
from medfuse.volume.model import as_float32


@dataclass(frozen=True)
class MaskConfig:
    """Parameters of :func:`foreground_mask`.

    Attributes
    ----------
    clip_percentiles : tuple of float
        Intensities are clipped to these percentiles before the threshold is
        chosen, so that rare extreme values (PET hot spots, metal) do not
        decide it. Default (1, 99).
    threshold_classes : int
        Number of intensity classes of the multi-class Otsu threshold; the
        lowest threshold separates background from object. Default 3 (2 is
        plain Otsu, which splits off the brightest structures of objects
        with large dim regions).
    histogram_bins : int
        Histogram bins of the Otsu threshold. Default 128.
    closing_radius_mm : float
        Radius of the closing (with cavity filling) that makes the object
        solid: gaps narrower than about twice this are bridged. Default 3 mm.
    opening_radius_mm : float
        Radius of the binary opening that separates the solid object from
        thin attached objects (table, cables) before the largest component is
        kept. Default 3 mm (cuts attachments thinner than ~6 mm).
    min_kept_fraction : float
        The opening and the largest component must keep at least this
        fraction of the above-threshold voxels; otherwise the object is made
        of parts thinner than the opening or apart from each other (a rod
        phantom, two legs) and every part of the closed mask is kept.
        Default 0.9 (heads, bodies, PET keep 0.94 to 1.0 in shared/data; the
        sample study's rod phantom 0.21 to 0.56).
    dilation_radius_mm : float
        Radius of the final dilation, so the skin/skull edge stays inside.
        Default 4 mm.
    working_spacing_mm : float
        The mask is computed on a copy block-averaged to at least this
        spacing (speed; a mask needs no sub-millimetre detail), then brought
        back to the image grid. Default 2 mm.
    """

    clip_percentiles: tuple[float, float] = (1.0, 99.0)
    threshold_classes: int = 3
    histogram_bins: int = 128
    closing_radius_mm: float = 3.0
    opening_radius_mm: float = 3.0
    min_kept_fraction: float = 0.9
    dilation_radius_mm: float = 4.0
    working_spacing_mm: float = 2.0

    def __post_init__(self) -> None:
        low, high = self.clip_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise InputError(f"mask clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")
        if self.threshold_classes < 2:
            raise InputError(f"mask threshold_classes must be >= 2, got {self.threshold_classes}")
        if self.histogram_bins < self.threshold_classes:
            raise InputError(f"mask histogram_bins must be >= threshold_classes, got {self.histogram_bins}")
        for name in ("closing_radius_mm", "opening_radius_mm", "dilation_radius_mm"):
            if getattr(self, name) < 0:
                raise InputError(f"mask {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_kept_fraction <= 1.0:
            raise InputError(f"mask min_kept_fraction must be in [0, 1], got {self.min_kept_fraction}")
        if self.working_spacing_mm <= 0:
            raise InputError(f"mask working_spacing_mm must be > 0, got {self.working_spacing_mm}")


def foreground_mask(image: sitk.Image, config: MaskConfig | None = None, *, on_image_grid: bool = True) -> sitk.Image:
    """Mask of the bright object (the body, the head, a phantom) of a 3-D image.

    Parameters
    ----------
    image : SimpleITK.Image
        3-D scalar image, any pixel type.
    config : MaskConfig, optional
        Defaults to ``MaskConfig()``.
    on_image_grid : bool
        True (default): the mask on the grid of *image*. False: on the
        coarse working grid it was computed on (same physical extent), for
        a caller that resamples it onto grids of its own anyway
        (registration's pyramid levels).

    Returns
    -------
    SimpleITK.Image
        uint8 mask (1 inside).

    Raises
    ------
    InputError
        If the image is constant, or nothing is brighter than the threshold.
    """
    config = config or MaskConfig()
    work = _coarse_copy(as_float32(image), config.working_spacing_mm)
    values = sitk.GetArrayViewFromImage(work)
    # Padding (CT -3024 outside the reconstruction circle, zeros around a
    # resampled MR) is not air: leave the image minimum out of the statistics.
    padding = float(values.min())
    content = values[values > padding]
    if content.size == 0:
        raise InputError("cannot compute a foreground mask: the image is constant")
    threshold = _background_threshold(content, config)
    del content, values  # freed before the morphology's own peak
    above = sitk.Cast(work > threshold, sitk.sitkUInt8)
    del work
    joined = _morphology(above, sitk.BinaryDilate, config.closing_radius_mm)
    filled = sitk.BinaryFillhole(joined, fullyConnected=False, foregroundValue=1)
    solid = _morphology(filled, sitk.BinaryErode, config.closing_radius_mm)
    opened = _morphology(solid, sitk.BinaryMorphologicalOpening, config.opening_radius_mm)
    kept = _largest_component(opened)
    if kept is None or _fraction_kept(kept, above) < config.min_kept_fraction:
        # The opening or the largest-component rule threw much of the object
        # away: it is made of thin or separate parts. Keep every part.
        kept = solid
    if not np.any(sitk.GetArrayViewFromImage(kept)):
        raise InputError("cannot compute a foreground mask: no bright object found")
    dilated = _morphology(kept, sitk.BinaryDilate, config.dilation_radius_mm)
    if not on_image_grid:
        return dilated
    on_grid = sitk.Resample(dilated, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return on_grid


def _background_threshold(content: np.ndarray, config: MaskConfig) -> float:
    """The intensity separating background from the object: the lowest multi-class Otsu threshold.

    *content* is the (N,) array of non-padding intensities; the histogram is
    taken of them alone (a (1, 1, N) image), so padding never counts. It is a
    scratch copy, reordered and clipped in place (a histogram ignores order):
    two fewer copies of it at the stage's memory peak.
    """
    content = content.astype(np.float32, copy=False)
    low, high = np.percentile(content, config.clip_percentiles, overwrite_input=True)
    if not high > low:
        low, high = float(content.min()), float(content.max())
    clipped = np.clip(content, low, high, out=content).reshape(1, 1, -1)
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(config.threshold_classes - 1)
    otsu.SetNumberOfHistogramBins(config.histogram_bins)
    otsu.Execute(sitk.GetImageFromArray(clipped))
    return float(otsu.GetThresholds()[0])


def _fraction_kept(mask: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the nonzero voxels of *reference* that are nonzero in *mask*."""
    kept = sitk.GetArrayViewFromImage(mask).astype(bool)
    whole = sitk.GetArrayViewFromImage(reference).astype(bool)
    return float(np.count_nonzero(kept & whole)) / max(int(np.count_nonzero(whole)), 1)


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
    # By keyword: the fourth positional parameter is backgroundValue for
    # some of these filters and foregroundValue for others.
    return operation(binary, kernelRadius=radius, kernelType=sitk.sitkBall, foregroundValue=1)


def _largest_component(binary: sitk.Image) -> sitk.Image | None:
    components = sitk.ConnectedComponent(binary)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(components)
    labels = shapes.GetLabels()
    if not labels:
        return None
    # The largest; among equal sizes the first label, as RelabelComponent would rank them (without its
    # second full-size label image).
    largest = max(labels, key=lambda label: (shapes.GetNumberOfPixels(label), -label))
    return sitk.Cast(components == largest, sitk.sitkUInt8)
