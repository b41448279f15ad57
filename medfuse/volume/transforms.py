"""Linear 3-D transforms: reading, writing, checking and describing them.

The transforms :mod:`medfuse.volume.registration` returns and
:mod:`medfuse.volume.resampling` applies follow ITK's convention: they map
points of the *fixed* image's physical space (LPS, mm) to the *moving* image's
space. Also the geometry helpers of the known-transform experiments
(:mod:`medfuse.volume.validation`): TRE, composition, moving a header.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medfuse.atomic import atomic_output
from medfuse.errors import InputError


@dataclass(frozen=True)
class TransformSummary:
    """Human-readable parameters of a rigid or affine transform.

    Attributes
    ----------
    rotation_deg : tuple of float
        Euler angles about x, y, z (degrees) of the rotation part.
    rotation_angle_deg : float
        Total rotation angle (axis-angle magnitude), degrees.
    translation_mm : tuple of float
        Translation about the centre of rotation, mm (LPS).
    translation_norm_mm : float
    center_mm : tuple of float
        Centre of rotation (fixed space, LPS, mm).
    scales : tuple of float
        Singular values of the linear part (1, 1, 1 for a rigid transform).
    """

    rotation_deg: tuple[float, float, float]
    rotation_angle_deg: float
    translation_mm: tuple[float, float, float]
    translation_norm_mm: float
    center_mm: tuple[float, float, float]
    scales: tuple[float, float, float]




def summarize_transform(transform: sitk.Transform) -> TransformSummary:
    """Rotation (degrees), translation (mm) and scales of a linear 3-D transform."""
    linear = as_linear_transform(transform)
    matrix = np.asarray(linear.GetMatrix(), dtype=float).reshape(3, 3)
    u, singular, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    angle = math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
    translation = np.asarray(linear.GetTranslation(), dtype=float)
    return TransformSummary(
        rotation_deg=tuple(float(a) for a in _euler_angles_deg(rotation)),
        rotation_angle_deg=angle,
        translation_mm=tuple(float(t) for t in translation),
        translation_norm_mm=float(np.linalg.norm(translation)),
        center_mm=tuple(float(c) for c in linear.GetCenter()),
        scales=tuple(float(s) for s in singular),
    )


def as_linear_transform(transform: sitk.Transform) -> sitk.Transform:
    """The transform downcast to its concrete 3-D matrix-plus-offset type.

    Raises
    ------
    InputError
        If it is not 3-D, or not a matrix-plus-offset (rigid, similarity,
        affine) transform, or a composite of more than one.
    """
    concrete = transform.Downcast() if hasattr(transform, "Downcast") else transform
    if isinstance(concrete, sitk.CompositeTransform):
        if concrete.GetNumberOfTransforms() != 1:
            raise InputError(
                f"expected a single rigid/affine transform, got a composite of {concrete.GetNumberOfTransforms()}"
            )
        concrete = concrete.GetNthTransform(0).Downcast()
    if concrete.GetDimension() != 3:
        raise InputError(f"expected a 3-D transform, got a {concrete.GetDimension()}-D {concrete.GetName()}")
    if not (hasattr(concrete, "GetMatrix") and hasattr(concrete, "GetCenter")):
        raise InputError(f"expected a rigid or affine transform, got {concrete.GetName()}")
    return concrete


def affine_parts(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` such that the transform maps a point p to ``A @ p + b``.

    Returns
    -------
    A : ndarray (3, 3) float64
    b : ndarray (3,) float64
    """
    linear = as_linear_transform(transform)
    matrix = np.asarray(linear.GetMatrix(), dtype=float).reshape(3, 3)
    center = np.asarray(linear.GetCenter(), dtype=float)
    translation = np.asarray(linear.GetTranslation(), dtype=float)
    return matrix, translation + center - matrix @ center


def target_registration_error(
    estimated: sitk.Transform, reference: sitk.Transform, points_mm: np.ndarray
) -> np.ndarray:
    """Distance between where two transforms send each point.

    Parameters
    ----------
    estimated, reference : SimpleITK.Transform
        Linear 3-D transforms (fixed -> moving).
    points_mm : ndarray (N, 3) float
        Physical points of the fixed space (LPS, mm).

    Returns
    -------
    ndarray (N,) float64
        Per-point error in mm.
    """
    points = np.asarray(points_mm, dtype=float)
    a_est, b_est = affine_parts(estimated)
    a_ref, b_ref = affine_parts(reference)
    return np.linalg.norm(points @ (a_est - a_ref).T + (b_est - b_ref), axis=1)


def transform_geometry(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The same voxels, placed where a linear *transform* sends them.

    Voxel data are untouched; origin and direction change so that a voxel
    that was at physical point p is now at ``transform(p)``. Registering the
    result (moving) to *image* (fixed) must therefore recover *transform*
    exactly: a known-transform test case without interpolation blur.

    Raises
    ------
    InputError
        If the linear part is not a rotation (geometry cannot hold scaling
        or shear in its direction matrix).
    """
    matrix, offset = affine_parts(transform)
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-9):
        raise InputError("transform_geometry needs a rigid transform (an image direction must stay orthonormal)")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    moved = sitk.Image(image)
    moved.SetDirection((matrix @ direction).ravel().tolist())
    moved.SetOrigin((matrix @ np.asarray(image.GetOrigin(), dtype=float) + offset).tolist())
    return moved


def compose(outer: sitk.Transform, inner: sitk.Transform) -> sitk.AffineTransform:
    """The linear transform p -> outer(inner(p)) as one AffineTransform."""
    a_outer, b_outer = affine_parts(outer)
    a_inner, b_inner = affine_parts(inner)
    composed = sitk.AffineTransform(3)
    composed.SetMatrix((a_outer @ a_inner).ravel().tolist())
    composed.SetTranslation((a_outer @ b_inner + b_outer).tolist())
    return composed


def mask_points_mm(mask: sitk.Image, step: int = 1) -> np.ndarray:
    """Physical coordinates (N, 3) of the nonzero voxels of *mask*, every *step*-th along each axis."""
    array = sitk.GetArrayViewFromImage(mask)[::step, ::step, ::step]
    zyx = np.argwhere(array > 0) * step
    index_xyz = zyx[:, ::-1].astype(float)
    origin = np.asarray(mask.GetOrigin(), dtype=float)
    spacing = np.asarray(mask.GetSpacing(), dtype=float)
    direction = np.asarray(mask.GetDirection(), dtype=float).reshape(3, 3)
    return origin + (index_xyz * spacing) @ direction.T


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> Path:
    """Write *transform* as an ITK ``.tfm`` file atomically (no half-written file).

    Raises
    ------
    InputError
        If the folder does not exist or cannot be written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write transform {path}: folder {path.parent} does not exist")
    try:
        with atomic_output(path) as temporary:
            sitk.WriteTransform(transform, str(temporary))
    except RuntimeError as exc:
        raise InputError(f"cannot write transform {path}: {itk_reason(exc)}") from exc
    return path


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read a rigid/affine ``.tfm`` (fixed -> moving, ITK convention).

    Raises
    ------
    InputError
        Missing, unreadable, or not a single 3-D rigid/affine transform.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"transform file not found: {path}")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read transform {path}: {itk_reason(exc)}") from exc
    return as_linear_transform(transform)


def _euler_angles_deg(rotation: np.ndarray) -> np.ndarray:
    # ITK's Euler3DTransform (ZXY order by default): R = Rz @ Rx @ Ry.
    angle_x = math.asin(float(np.clip(rotation[2, 1], -1.0, 1.0)))
    angle_y = math.atan2(-rotation[2, 0], rotation[2, 2])
    angle_z = math.atan2(-rotation[0, 1], rotation[1, 1])
    return np.degrees([angle_x, angle_y, angle_z])


def itk_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages put the useful description last ("... : description").
    return lines[-1] if lines else type(exc).__name__
