"""Resampling a moving volume onto a fixed grid through a registration transform.

:func:`resample_onto` gives the whole moving volume on the fixed grid with a
coverage mask (where the moving data exist); :func:`resample_slabs` the same
voxels a slab of fixed slices at a time, for the pipeline's staging.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError
from medfuse.volume.model import Volume, as_float32
from medfuse.volume.transforms import affine_parts

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline3,
    "nearest": sitk.sitkNearestNeighbor,
}


def resample_onto(
    fixed: Volume,
    moving: Volume,
    transform: sitk.Transform,
    *,
    interpolation: str = "linear",
    default_value: float | None = None,
) -> tuple[Volume, sitk.Image]:
    """Resample *moving* onto the grid of *fixed* through *transform*.

    Parameters
    ----------
    fixed, moving : Volume
    transform : SimpleITK.Transform
        Maps fixed physical points to moving physical points (ITK convention,
        as :func:`register` returns it).
    interpolation : {"linear", "bspline", "nearest"}
        "nearest" for label maps. Default "linear".
    default_value : float, optional
        Value outside the moving field of view; None means the moving image's
        minimum, so that the gap reads as background.

    Returns
    -------
    moved : Volume
        float32 image on the fixed grid (size, spacing, origin, direction of
        ``fixed.image``); modality, references, source of *moving*.
    coverage : SimpleITK.Image
        uint8 on the fixed grid, 1 where the moving image has data, 0 where
        the fixed voxel maps outside the moving field of view.
    """
    moving_image, default_value, unmoved = _resampling_inputs(fixed.image, moving, transform, interpolation,
                                                              default_value)
    if unmoved:
        # Same grid, no motion (e.g. one Frame of Reference): the voxels as they are,
        # without the last-bit noise of interpolating at integer positions.
        moved = sitk.Image(moving_image)
        moved.CopyInformation(fixed.image)
        coverage = _ones_like(fixed.image)
    else:
        moved = sitk.Resample(
            moving_image, fixed.image, transform, INTERPOLATORS[interpolation], float(default_value), sitk.sitkFloat32
        )
        coverage = coverage_mask(fixed.image, moving_image, transform)
    label = f"{moving.label or 'moving'} on the grid of {fixed.label or 'fixed'}"
    return Volume(image=moved, modality=moving.modality, references=moving.references, source=moving.source, label=label), coverage


def resample_slabs(
    fixed_image: sitk.Image,
    moving: Volume,
    transform: sitk.Transform,
    slab_slices: int,
    *,
    interpolation: str = "linear",
    default_value: float | None = None,
):
    """:func:`resample_onto`, a slab of fixed slices at a time, as arrays.

    Each slab is resampled onto its own part of the fixed grid (same spacing
    and direction, origin at its first slice), so the moving volume on the
    fixed grid never exists whole in memory. The voxels are those of
    :func:`resample_onto` (tested equal).

    Parameters
    ----------
    fixed_image : SimpleITK.Image
        The fixed grid (its pixels are not used).
    moving : Volume
    transform : SimpleITK.Transform
        Fixed-to-moving, as :func:`register` returns it.
    slab_slices : int
        Fixed slices per slab.
    interpolation, default_value
        As :func:`resample_onto`.

    Yields
    ------
    start, stop : int
        The slab's fixed slice range.
    values : ndarray (stop - start, Y, X) float32
    coverage : ndarray (stop - start, Y, X) bool
        Where the moving image has data.
    """
    moving_image, default_value, unmoved = _resampling_inputs(fixed_image, moving, transform, interpolation,
                                                              default_value)
    nx, ny, nz = fixed_image.GetSize()
    # NaN outside the field of view marks the coverage in the same resampling: ITK's interpolators share
    # one inside test, the one a nearest-neighbour resampling of ones applies (tested equal). Unless the
    # moving voxels hold NaN themselves: the coverage is then resampled on its own (twice the work).
    separate = not unmoved and _has_nan(sitk.GetArrayViewFromImage(moving_image))
    ones = _ones_like(moving_image) if separate else None
    for start in range(0, nz, slab_slices):
        stop = min(start + slab_slices, nz)
        if unmoved:  # as resample_onto: the voxels as they are
            values = sitk.GetArrayViewFromImage(moving_image)[start:stop].copy()
            yield start, stop, values, np.ones(values.shape, bool)
            continue
        size, origin = (nx, ny, stop - start), fixed_image.TransformIndexToPhysicalPoint((0, 0, start))
        spacing, direction = fixed_image.GetSpacing(), fixed_image.GetDirection()
        outside = float(default_value) if separate else math.nan
        values = sitk.GetArrayFromImage(sitk.Resample(moving_image, size, transform, INTERPOLATORS[interpolation],
                                                      origin, spacing, direction, outside, sitk.sitkFloat32))
        if separate:
            coverage = sitk.Resample(ones, size, transform, sitk.sitkNearestNeighbor, origin, spacing, direction,
                                     0, sitk.sitkUInt8)
            yield start, stop, values, sitk.GetArrayViewFromImage(coverage).astype(bool)
            continue
        covered = ~np.isnan(values)
        values[~covered] = default_value
        yield start, stop, values, covered


def _resampling_inputs(fixed_image: sitk.Image, moving: Volume, transform: sitk.Transform, interpolation: str,
                       default_value: float | None) -> tuple[sitk.Image, float, bool]:
    """The checks and choices of :func:`resample_onto` and :func:`resample_slabs`.

    Returns the moving image as float32, the value outside its field of view
    (its minimum unless given), and whether no resampling is needed (same
    grid, identity transform: the voxels are used as they are).
    """
    if interpolation not in INTERPOLATORS:
        raise InputError(f"interpolation must be one of {tuple(INTERPOLATORS)}, got {interpolation!r}")
    moving_image = as_float32(moving.image)
    if default_value is None:
        default_value = float(np.min(sitk.GetArrayViewFromImage(moving_image)))
    return moving_image, float(default_value), _same_grid(fixed_image, moving_image) and _is_identity(transform)


def _has_nan(values: np.ndarray, slices: int = 16) -> bool:
    """Whether a (Z, Y, X) array holds NaN, *slices* at a time (no volume-sized bool temporary)."""
    return any(bool(np.isnan(values[start:start + slices]).any()) for start in range(0, values.shape[0], slices))


def _ones_like(image: sitk.Image) -> sitk.Image:
    """A uint8 image of ones on the grid of *image* (resampled, it marks the field of view)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


def _same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-6) -> bool:
    return a.GetSize() == b.GetSize() and all(
        np.allclose(x, y, rtol=0, atol=tolerance)
        for x, y in ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()), (a.GetDirection(), b.GetDirection()))
    )


def _is_identity(transform: sitk.Transform) -> bool:
    matrix, offset = affine_parts(transform)
    return bool(np.array_equal(matrix, np.eye(3)) and not np.any(offset))


def coverage_mask(fixed_image: sitk.Image, moving_image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """uint8 mask on the fixed grid: 1 where *transform* lands inside *moving_image*."""
    return sitk.Resample(_ones_like(moving_image), fixed_image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
