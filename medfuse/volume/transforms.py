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
        Missing, unreadable, not an ITK text transform, not a single 3-D
        rigid/affine transform, NaN or infinite parameters, singular matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"transform file not found: {path}")
    # ITK's text reader stops at a value it cannot parse ("nan", "inf", "1e999") and hands back a
    # parameter array too short for the transform, on which SimpleITK then crashes the process:
    # the file is checked as text before ITK sees it.
    expected = _check_transform_text(path)
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read transform {path}: {itk_reason(exc)}") from exc
    linear = as_linear_transform(transform)
    parameters = np.asarray(linear.GetParameters(), dtype=float)
    fixed = np.asarray(linear.GetFixedParameters(), dtype=float)
    if parameters.size != expected or not (np.all(np.isfinite(parameters)) and np.all(np.isfinite(fixed))):
        raise InputError(f"cannot read transform {path}: parameters were not read as written "
                         f"(got {parameters.size} of {expected})")
    matrix = np.asarray(linear.GetMatrix(), dtype=float).reshape(3, 3)
    if abs(np.linalg.det(matrix)) < 1e-6:
        raise InputError(f"cannot read transform {path}: its matrix is singular "
                         f"(determinant {np.linalg.det(matrix):.3g})")
    return linear


# ITK text transform types medfuse applies (3-D, matrix plus offset): (parameters, fixed parameters).
LINEAR_TRANSFORM_PARAMETERS = {
    "Euler3DTransform": (6, 4), "VersorRigid3DTransform": (6, 3), "Similarity3DTransform": (7, 3),
    "ScaleVersor3DTransform": (9, 3), "ScaleSkewVersor3DTransform": (15, 3), "AffineTransform": (12, 3),
    "MatrixOffsetTransformBase": (12, 3),
}


def _check_transform_text(path: Path) -> int:
    """Refuse what ITK's text reader would misread; return the number of parameters the transform has.

    The file must be an ITK text transform (``#Insight Transform File``) holding one 3-D
    rigid/similarity/affine transform (optionally inside a composite of one) whose parameters and
    fixed parameters are the right number of finite numbers.
    """
    try:
        with open(path, "rb") as stream:
            raw = stream.read(1_000_001)
    except OSError as exc:
        raise InputError(f"cannot read transform {path}: {exc.strerror or exc}") from exc
    if len(raw) > 1_000_000 or b"\0" in raw:
        raise InputError(f"cannot read transform {path}: not an ITK text transform file (.tfm)")
    lines = [line.strip() for line in raw.decode("latin-1").splitlines() if line.strip()]
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise InputError(f"cannot read transform {path}: not an ITK text transform file (.tfm); HDF5 and .mat transforms are "
                         "not supported")
    blocks: list[dict[str, str]] = []
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key == "Transform":
            blocks.append({"Transform": value.strip()})
        elif key in ("Parameters", "FixedParameters") and blocks:
            blocks[-1][key] = value
    kinds = [b for b in blocks if not b["Transform"].startswith("CompositeTransform")]
    if len(kinds) != 1:
        raise InputError(f"cannot read transform {path}: expected one rigid or affine transform, found {len(kinds)}")
    block = kinds[0]
    name, _, suffix = block["Transform"].partition("_")
    if name not in LINEAR_TRANSFORM_PARAMETERS or not suffix.endswith("_3_3"):
        raise InputError(f"cannot read transform {path}: {block['Transform']} is not supported (a 3-D rigid, similarity or "
                         "affine transform is)")
    expected, fixed = LINEAR_TRANSFORM_PARAMETERS[name]
    for key, count in (("Parameters", expected), ("FixedParameters", fixed)):
        words = block.get(key, "").split()
        try:
            values = [float(word) for word in words]
        except ValueError:
            values = []
        if len(words) != count or len(values) != count or not all(math.isfinite(v) for v in values):
            raise InputError(f"cannot read transform {path}: {key} must be {count} finite numbers, "
                             f"got {' '.join(words)[:80]!r}")
    return expected


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
