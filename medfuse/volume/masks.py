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

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError
from medfuse.volume.model import as_float32


#: Slices per slab of :func:`ball_morphology` (16 slices of 256 x 256: 1 MB per temporary).
_MORPHOLOGY_SLAB = 16


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
    del content
    above = values > np.float32(threshold)  # (Z, Y, X) bool, compared in float32 as ITK does
    # Only the working grid's geometry from here on: its float32 voxels are freed before the morphology.
    grid = (work.GetOrigin(), work.GetSpacing(), work.GetDirection())
    del values, work
    spacing = grid[1]
    joined = ball_morphology(above, _radius(config.closing_radius_mm, spacing), dilate=True)
    filled = _fill_holes(joined, grid)
    del joined
    solid = ball_morphology(filled, _radius(config.closing_radius_mm, spacing), dilate=False)
    del filled
    opening = _radius(config.opening_radius_mm, spacing)
    opened = ball_morphology(ball_morphology(solid, opening, dilate=False), opening, dilate=True)
    kept = _largest_component(opened, grid)
    del opened
    if kept is None or _fraction_kept(kept, above) < config.min_kept_fraction:
        # The opening or the largest-component rule threw much of the object
        # away: it is made of thin or separate parts. Keep every part.
        kept = solid
    del above, solid
    if not np.any(kept):
        raise InputError("cannot compute a foreground mask: no bright object found")
    dilated = _as_image(ball_morphology(kept, _radius(config.dilation_radius_mm, spacing), dilate=True), grid)
    if not on_image_grid:
        return dilated
    on_grid = sitk.Resample(dilated, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return on_grid


def ball_morphology(binary: np.ndarray, radius_zyx: tuple[int, ...], *, dilate: bool) -> np.ndarray:
    """Dilation or erosion of a binary array by ITK's flat ball, voxel for voxel as ITK gives it, faster.

    SimpleITK's ``BinaryDilate``/``BinaryErode`` with ``sitkBall`` run on one
    thread and took 2.5 s of the 512 x 512 x 200 CT's registration (issue 14).
    ITK's ball of radius r holds the offsets d with ``sum((d_i / (r_i + 0.5))**2) <= 1``
    (checked against ITK). It is convex and symmetric, so every box
    ``[-c_i, c_i]`` whose corner c lies in it lies in it too: the ball is the
    union of its few maximal boxes, and dilating by it is the union of the
    dilations by the boxes. A box dilation is separable (one axis at a time)
    and ``[-h, h]`` is h steps of ``[-1, 1]``, so boxes that share a start
    share its steps. Erosion is the same with AND. As in ITK, the outside of
    the array counts as background for a dilation and as foreground for an
    erosion (the edge of the image does not erode an object).
    The array is processed in slabs of slices, so its temporaries are a few
    slabs, not a few volumes. ``tests/test_registration.py`` compares it with
    ITK voxel for voxel.

    Parameters
    ----------
    binary : ndarray (Z, Y, X) bool
    radius_zyx : tuple of int
        Ball radius in voxels per axis, in array order (0: no extent).
    dilate : bool
        True: dilation; False: erosion.

    Returns
    -------
    ndarray (Z, Y, X) bool
        A new array.
    """
    binary = np.asarray(binary, dtype=bool)
    if not any(radius_zyx):
        return binary.copy()
    combine = np.logical_or if dilate else np.logical_and
    boxes = _ball_boxes(tuple(radius_zyx))
    # A slab of slices at a time, with radius_zyx[0] slices of context either side: the partial
    # results of the boxes stay small (memory, and the cache), the voxels are those of the whole.
    out = np.empty_like(binary)
    reach, depth = radius_zyx[0], binary.shape[0]
    for start in range(0, depth, _MORPHOLOGY_SLAB):
        stop = min(start + _MORPHOLOGY_SLAB, depth)
        low, high = max(0, start - reach), min(depth, stop + reach)
        part = _combined_boxes(binary[low:high], boxes, 0, combine)
        out[start:stop] = part[start - low:stop - low]
    return out


def _ball_boxes(radius: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Half-extents of the maximal boxes whose union is ITK's ball of *radius* (sorted)."""
    semi = [r + 0.5 for r in radius]
    corners = [c for c in itertools.product(*(range(r + 1) for r in radius))
               if sum((ci / s) ** 2 for ci, s in zip(c, semi)) <= 1.0]
    return [c for c in corners if not any(o != c and all(oi >= ci for oi, ci in zip(o, c)) for o in corners)]


def _combined_boxes(array: np.ndarray, boxes: list[tuple[int, ...]], axis: int, combine) -> np.ndarray:
    """Union (or intersection) over *boxes* of *array* filtered by each box along axes *axis* onward.

    May return *array* itself; never writes into it.
    """
    if axis == array.ndim:
        return array
    out, current, reached = None, array, 0
    for half in sorted({box[axis] for box in boxes}):
        for _ in range(half - reached):
            current = _step(current, axis, combine)
        reached = half
        part = _combined_boxes(current, [box for box in boxes if box[axis] == half], axis + 1, combine)
        if out is None:
            out = part if part is not current and part is not array else part.copy()
        else:
            combine(out, part, out=out)
    return out


def _step(array: np.ndarray, axis: int, combine) -> np.ndarray:
    """*array* combined with its neighbours at -1 and +1 along *axis* (a new array)."""
    out = array.copy()
    ahead = tuple(slice(1, None) if a == axis else slice(None) for a in range(array.ndim))
    behind = tuple(slice(None, -1) if a == axis else slice(None) for a in range(array.ndim))
    combine(out[ahead], array[behind], out=out[ahead])
    combine(out[behind], array[ahead], out=out[behind])
    return out


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


def _fraction_kept(mask: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of the nonzero voxels of *reference* that are nonzero in *mask* (bool arrays)."""
    return float(np.count_nonzero(mask & reference)) / max(int(np.count_nonzero(reference)), 1)


def _coarse_copy(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    spacing = np.asarray(image.GetSpacing())
    factors = np.maximum(1, np.floor(spacing_mm / spacing)).astype(int)
    if np.all(factors == 1):
        return image
    return sitk.BinShrink(image, [int(f) for f in factors])


def _radius(radius_mm: float, spacing_xyz: tuple[float, ...]) -> tuple[int, ...]:
    """A radius in mm as whole voxels per axis, in array (Z, Y, X) order."""
    return tuple(int(round(radius_mm / s)) for s in spacing_xyz[::-1])


def _as_image(binary: np.ndarray, grid: tuple) -> sitk.Image:
    """A (Z, Y, X) bool array as a uint8 image with *grid*'s (origin, spacing, direction)."""
    image = sitk.GetImageFromArray(binary.view(np.uint8))
    origin, spacing, direction = grid
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _fill_holes(binary: np.ndarray, grid: tuple) -> np.ndarray:
    """*binary* with every background region not connected to the image border filled (face connectivity)."""
    filled = sitk.BinaryFillhole(_as_image(binary, grid), fullyConnected=False, foregroundValue=1)
    return sitk.GetArrayViewFromImage(filled) > 0


def _largest_component(binary: np.ndarray, grid: tuple) -> np.ndarray | None:
    """The largest face-connected component of *binary* (None when it is empty)."""
    components = sitk.ConnectedComponent(_as_image(binary, grid))
    labels = sitk.GetArrayViewFromImage(components)  # (Z, Y, X) uint32, 0 = background
    # Sizes counted a slab at a time: np.bincount of the whole would copy the labels as int64 (8 bytes a voxel).
    sizes = np.zeros(1, np.int64)
    for start in range(0, labels.shape[0], _MORPHOLOGY_SLAB):
        counts = np.bincount(labels[start:start + _MORPHOLOGY_SLAB].ravel())
        if counts.size > sizes.size:
            counts[:sizes.size] += sizes
            sizes = counts
        else:
            sizes[:counts.size] += counts
    if sizes.size < 2:
        return None
    # The largest; among equal sizes the lowest label (np.argmax takes the first).
    largest = int(np.argmax(sizes[1:])) + 1
    return labels == largest
