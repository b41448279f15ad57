"""Bring a moving volume onto a fixed volume's grid (rigid, optionally affine).

The paper fuses pre-registered sources; real CT, MR and PET of one patient are
not. This module registers two :class:`~medfuse.volume.model.Volume` objects
with SimpleITK (ITKv4 registration framework) and resamples the moving one
onto the fixed grid, with a coverage mask saying where moving data exist.

Method (every number is a :class:`RegistrationConfig` field):

1. Same non-empty FrameOfReferenceUID (hybrid PET/CT, same-session MR): no
   optimisation, the identity is used and the result says so.
2. Initialisation: the world coordinates as they are, the centres of the two
   images' extents ("geometry") or their centres of mass ("moments"). "auto"
   keeps world coordinates when they already overlap well, otherwise it
   evaluates the metric for the three on the coarsest level and keeps the best.
3. Rigid (Euler3D) registration maximising Mattes mutual information, on a
   pyramid run level by level (block averaging 4/2/1 toward isotropic voxels,
   Gaussian smoothing in mm), random sampling with a fixed seed and one ITK
   thread (bit-reproducible results), regular-step gradient descent with
   parameter scales from the physical shift, sampling restricted to an
   automatic foreground mask of the fixed image (no air around the body).
4. Optionally an affine stage initialised with the rigid result.
5. The metric over every masked voxel of the finest level, before and after;
   a result that scores worse than its start is replaced by the start.

Transforms follow ITK's convention: they map points of the *fixed* image's
physical space to the *moving* image's space (``moving(T(x))`` is the moving
image resampled onto the fixed grid).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medfuse.atomic import atomic_output
from medfuse.errors import InputError, RegistrationError
from medfuse.volume.masks import MaskConfig, foreground_mask
from medfuse.volume.model import Volume, as_float32

INITIALIZATIONS = ("auto", "geometry", "moments", "none")
INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline3,
    "nearest": sitk.sitkNearestNeighbor,
}
SAMPLING_STRATEGIES = {"random": "RANDOM", "regular": "REGULAR", "none": "NONE"}
AUTO_MASK_CHOICES = ("none", "fixed", "both")


@dataclass(frozen=True)
class RegistrationConfig:
    """Every parameter of :func:`register` and :func:`resample_onto`.

    Attributes
    ----------
    initialization : {"auto", "geometry", "moments", "none"}
        How the rigid transform starts. "none" trusts the world coordinates
        (right for one scanner session), "geometry" aligns the centres of the
        image extents, "moments" the intensity centres of mass. "auto"
        (default) keeps the world coordinates when they already put at least
        *world_overlap_fraction* of the fixed foreground inside the moving
        field of view (typical of one session, e.g. PET/CT with a longer PET
        range, where centring would shift by the difference in coverage);
        otherwise it evaluates the metric for the three on the coarsest level
        and keeps the best.
    world_overlap_fraction : float
        See *initialization*. Default 0.9.
    affine : bool
        Run an affine stage after the rigid one. Default False.
    histogram_bins : int
        Mattes mutual information histogram bins. Default 50.
    sampling : {"random", "regular", "none"}
        Metric sampling strategy. Default "random" (with *seed*).
    sampling_percentages : tuple of float
        Fraction of (masked) voxels sampled at each pyramid level, coarse to
        fine. Default (0.5, 0.1, 0.01): coarse levels are small, so a large
        fraction is cheap and keeps the metric smooth where the transform
        travels furthest; the full-resolution level only refines, and 1 % of
        a 256x256x150 volume is ~1e5 points (fewer inside the mask).
    max_samples_per_level : int
        Upper bound on the points sampled at one level: the fractions above
        are lowered for large volumes (a 512x512 CT's coarse level would
        otherwise draw ~1.6e5 points where 6e4 estimate 6 parameters as
        well). Default 60000.
    seed : int
        Seed of the random sampling; fixed so a run is reproducible.
    shrink_factors : tuple of int
        Pyramid shrink factor per level, coarse to fine. Default (4, 2, 1).
    smoothing_sigmas_mm : tuple of float
        Gaussian smoothing per level, in mm. Default (2.0, 1.0, 0.0).
    resolution_ratio : float
        Neither image is registered on voxels finer than about this times the
        other image's finest spacing (block averaging), since detail the other
        image cannot show only costs time. Default 1.0 (no effect between
        images of similar resolution).
    step_mm : tuple of float
        Initial step of the regular-step gradient descent at each level, in
        mm of physical shift (the optimizer scales are estimated from the
        physical shift). Default (4.0, 1.0, 0.5): long steps where the image
        is coarse, short ones where it is sharp.
    min_step : float
        Step below which a level stops, in mm. Default 0.01.
    relaxation : float
        Step reduction when the gradient changes direction. Default 0.5.
    gradient_tolerance : float
        Gradient magnitude below which a level stops. Default 1e-6.
    iterations : int
        Maximum optimizer iterations per level (rigid). Default 300; the
        coarse level may need many (cheap) steps to cover 20 degrees, finer
        levels stop early on the step length.
    affine_iterations : int
        Maximum optimizer iterations per level (affine stage). Default 100.
    affine_levels : int
        How many of the finest pyramid levels the affine stage uses. Default 2.
    auto_mask : {"none", "fixed", "both"}
        Which images get an automatic foreground mask (threshold + largest
        component) restricting metric sampling. Default "fixed".
    mask : MaskConfig
        Parameters of the automatic masks.
    min_overlap_fraction : float
        After initialisation at least this fraction of the fixed foreground
        must map inside the moving image, otherwise RegistrationError.
        Default 0.1.
    min_voxels_per_axis : int
        Fewer voxels than this along any axis is not a 3-D volume a rigid
        registration can constrain (a 2-D image): InputError. Default 4.
    threads : int
        ITK threads while registering. Default 1: ITK's multi-threaded Mattes
        MI accumulates per-thread partial sums in a scheduling-dependent order,
        so with more threads the parameters differ from run to run in about
        the 10th significant digit (measured); one thread makes the transform
        byte-identical between runs. 0 means SimpleITK's global default (all
        cores), faster but not bit-reproducible.
    interpolation : {"linear", "bspline", "nearest"}
        Resampling of the moving volume onto the fixed grid. Default "linear";
        "nearest" for label maps.
    default_value : float or None
        Value written outside the moving image's field of view. None (default)
        means the moving image's minimum (air for CT, background for MR/PET),
        so the gap reads as background; the coverage mask marks it as no data.
    warn_rotation_deg : float
        Warn when the total rotation exceeds this. Default 30.
    warn_translation_mm : float
        Warn when the translation exceeds this. Default 100.
    warn_min_improvement : float
        Warn when the metric improved by less than this fraction of its
        initial magnitude. Default 0.01.
    """

    initialization: str = "auto"
    world_overlap_fraction: float = 0.9
    affine: bool = False
    histogram_bins: int = 50
    sampling: str = "random"
    sampling_percentages: tuple[float, ...] = (0.5, 0.1, 0.01)
    max_samples_per_level: int = 60_000
    seed: int = 20260101
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    resolution_ratio: float = 1.0
    step_mm: tuple[float, ...] = (4.0, 1.0, 0.5)
    min_step: float = 0.01
    relaxation: float = 0.5
    gradient_tolerance: float = 1e-6
    iterations: int = 300
    affine_iterations: int = 100
    affine_levels: int = 2
    auto_mask: str = "fixed"
    mask: MaskConfig = field(default_factory=MaskConfig)
    min_overlap_fraction: float = 0.1
    min_voxels_per_axis: int = 4
    threads: int = 1
    interpolation: str = "linear"
    default_value: float | None = None
    warn_rotation_deg: float = 30.0
    warn_translation_mm: float = 100.0
    warn_min_improvement: float = 0.01

    def __post_init__(self) -> None:
        if self.initialization not in INITIALIZATIONS:
            raise InputError(f"initialization must be one of {INITIALIZATIONS}, got {self.initialization!r}")
        if self.sampling not in SAMPLING_STRATEGIES:
            raise InputError(f"sampling must be one of {tuple(SAMPLING_STRATEGIES)}, got {self.sampling!r}")
        if self.interpolation not in INTERPOLATORS:
            raise InputError(f"interpolation must be one of {tuple(INTERPOLATORS)}, got {self.interpolation!r}")
        if self.auto_mask not in AUTO_MASK_CHOICES:
            raise InputError(f"auto_mask must be one of {AUTO_MASK_CHOICES}, got {self.auto_mask!r}")
        levels = len(self.shrink_factors)
        per_level = (self.shrink_factors, self.smoothing_sigmas_mm, self.sampling_percentages, self.step_mm)
        if levels == 0 or any(len(values) != levels for values in per_level):
            raise InputError(
                "shrink_factors, smoothing_sigmas_mm, sampling_percentages and step_mm need one entry per level "
                f"(got {', '.join(str(len(values)) for values in per_level)})"
            )
        if any(step <= 0 for step in self.step_mm):
            raise InputError(f"step_mm must be > 0, got {self.step_mm}")
        if any(int(f) < 1 for f in self.shrink_factors):
            raise InputError(f"shrink_factors must be >= 1, got {self.shrink_factors}")
        if any(s < 0 for s in self.smoothing_sigmas_mm):
            raise InputError(f"smoothing_sigmas_mm must be >= 0, got {self.smoothing_sigmas_mm}")
        if any(not 0 < p <= 1 for p in self.sampling_percentages):
            raise InputError(f"sampling_percentages must be in (0, 1], got {self.sampling_percentages}")
        if not 1 <= self.affine_levels <= levels:
            raise InputError(f"affine_levels must be between 1 and {levels}, got {self.affine_levels}")
        positive = ("histogram_bins", "max_samples_per_level", "resolution_ratio", "min_step", "iterations", "affine_iterations", "min_voxels_per_axis")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.relaxation < 1:
            raise InputError(f"relaxation must be in (0, 1), got {self.relaxation}")
        if not 0 <= self.world_overlap_fraction <= 1:
            raise InputError(f"world_overlap_fraction must be in [0, 1], got {self.world_overlap_fraction}")
        if not 0 <= self.min_overlap_fraction <= 1:
            raise InputError(f"min_overlap_fraction must be in [0, 1], got {self.min_overlap_fraction}")
        if self.threads < 0:
            raise InputError(f"threads must be >= 0 (0 = all cores), got {self.threads}")

    def replace(self, **changes) -> "RegistrationConfig":
        """A copy with *changes* applied (validated like the original)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class LevelReport:
    """What one pyramid level of one stage did."""

    stage: str
    level: int
    shrink_factor: int
    smoothing_sigma_mm: float
    iterations: int
    seconds: float
    metric: float


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


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register` (or :func:`evaluate_transform`).

    Attributes
    ----------
    transform : SimpleITK.Transform
        Euler3DTransform (rigid) or AffineTransform; maps fixed physical
        points to moving physical points (ITK convention).
    optimised : bool
        False when no optimisation ran (same Frame of Reference, or a given
        transform); *reason* says why.
    reason : str
        Why the optimisation was skipped ("" when it ran).
    initialization : str
        The initialisation used ("none", "geometry", "moments", or "" when
        no optimisation ran).
    metric_before, metric_after : float
        Mattes mutual information (ITK sign: lower is better) over every
        masked voxel of the finest level, before and after the optimisation.
    iterations : int
        Total optimizer iterations over all levels and stages.
    seconds : float
        Wall time of the whole call.
    levels : tuple of LevelReport
        Per stage and pyramid level: iterations, seconds, final metric.
    summary : TransformSummary
    stop_condition : str
        The optimizer's stop condition at the last level ("" when skipped).
    warnings : tuple of str
        Suspicious results (large rotation or translation, no improvement).
        When the optimisation ends with a worse full-resolution metric than
        it started from, the initial transform is returned and a warning
        says so.
    """

    transform: sitk.Transform
    optimised: bool
    reason: str
    initialization: str
    metric_before: float
    metric_after: float
    iterations: int
    seconds: float
    levels: tuple[LevelReport, ...]
    summary: TransformSummary
    stop_condition: str
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-ready description (the transform as its name and parameters)."""
        out = {
            "optimised": self.optimised,
            "reason": self.reason,
            "initialization": self.initialization,
            "metric": "MattesMutualInformation (lower is better)",
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 3),
            "levels": [asdict(level) for level in self.levels],
            "stop_condition": self.stop_condition,
            "warnings": list(self.warnings),
            "transform": {
                "type": self.transform.GetName(),
                "parameters": list(self.transform.GetParameters()),
                "fixed_parameters": list(self.transform.GetFixedParameters()),
                "convention": "maps fixed physical points (LPS, mm) to moving physical points",
            },
        }
        out.update(asdict(self.summary))
        return out


def register(fixed: Volume, moving: Volume, config: RegistrationConfig | None = None) -> RegistrationResult:
    """Register *moving* to *fixed*: rigid, then optionally affine.

    Parameters
    ----------
    fixed, moving : Volume
        3-D float32 volumes in LPS space. When both carry the same non-empty
        FrameOfReferenceUID no optimisation runs (they are already in one
        patient coordinate system) and the identity is returned.
    config : RegistrationConfig, optional
        Defaults to ``RegistrationConfig()``.

    Returns
    -------
    RegistrationResult
        Use :func:`resample_onto` with ``result.transform`` to get the moving
        volume on the fixed grid.

    Raises
    ------
    InputError
        A volume is 2-D, too small or constant.
    RegistrationError
        No overlap after initialisation, or the optimisation failed.
    """
    config = config or RegistrationConfig()
    started = time.perf_counter()
    fixed_image = _checked_image(fixed, "fixed", config)
    moving_image = _checked_image(moving, "moving", config)
    same_frame = fixed.frame_of_reference_uid and fixed.frame_of_reference_uid == moving.frame_of_reference_uid
    if same_frame:
        identity = sitk.Euler3DTransform()
        identity.SetCenter(_image_center(fixed_image))
        return _unoptimised_result(
            fixed_image,
            moving_image,
            identity,
            f"same FrameOfReferenceUID {fixed.frame_of_reference_uid}: resampled without registration",
            config,
            started,
        )

    with _itk_threads(config.threads):
        return _register_images(fixed_image, moving_image, config, started)


def _register_images(
    fixed_image: sitk.Image, moving_image: sitk.Image, config: RegistrationConfig, started: float
) -> RegistrationResult:
    fixed_mask = foreground_mask(fixed_image, config.mask) if config.auto_mask in ("fixed", "both") else None
    moving_mask = foreground_mask(moving_image, config.mask) if config.auto_mask == "both" else None
    initial, initialization = _initial_transform(fixed_image, moving_image, fixed_mask, config)
    metric_before = _metric_value(fixed_image, moving_image, initial, fixed_mask, moving_mask, config)

    levels: list[LevelReport] = []
    rigid, stop = _optimise(
        "rigid", fixed_image, moving_image, initial, fixed_mask, moving_mask, config, config.iterations, levels
    )
    transform: sitk.Transform = rigid
    if config.affine:
        affine = _same_kind(rigid, sitk.AffineTransform(3))
        affine_config = config.replace(
            shrink_factors=config.shrink_factors[-config.affine_levels :],
            smoothing_sigmas_mm=config.smoothing_sigmas_mm[-config.affine_levels :],
            sampling_percentages=config.sampling_percentages[-config.affine_levels :],
            step_mm=config.step_mm[-config.affine_levels :],
        )
        transform, stop = _optimise(
            "affine", fixed_image, moving_image, affine, fixed_mask, moving_mask, affine_config,
            config.affine_iterations, levels,
        )
    metric_after = _metric_value(fixed_image, moving_image, transform, fixed_mask, moving_mask, config)
    reverted = ()
    if metric_after > metric_before:
        # Never hand back a transform the full-resolution metric scores worse
        # than the starting point (the pyramid can drift on a flat metric).
        reverted = (
            f"optimisation worsened the metric ({metric_before:.4f} -> {metric_after:.4f}); "
            f"kept the {initialization} initialisation"
        ,)
        transform = _same_kind(initial, transform)
        metric_after = metric_before
    summary = summarize_transform(transform)
    return RegistrationResult(
        transform=transform,
        optimised=True,
        reason="",
        initialization=initialization,
        metric_before=metric_before,
        metric_after=metric_after,
        iterations=sum(level.iterations for level in levels),
        seconds=time.perf_counter() - started,
        levels=tuple(levels),
        summary=summary,
        stop_condition=stop,
        warnings=reverted + _warnings(summary, metric_before, metric_after, config),
    )


def _same_kind(initial: sitk.Euler3DTransform, kind: sitk.Transform) -> sitk.Transform:
    """*initial* as the type of *kind* (Euler3D, or Affine after an affine stage)."""
    if isinstance(kind, sitk.AffineTransform):
        affine = sitk.AffineTransform(3)
        affine.SetCenter(initial.GetCenter())
        affine.SetMatrix(initial.GetMatrix())
        affine.SetTranslation(initial.GetTranslation())
        return affine
    return sitk.Euler3DTransform(initial)


def evaluate_transform(
    fixed: Volume, moving: Volume, transform: sitk.Transform, config: RegistrationConfig | None = None
) -> RegistrationResult:
    """Report on a given transform (e.g. a saved, verified one) without optimising.

    Parameters and return as :func:`register`; ``optimised`` is False.
    """
    config = config or RegistrationConfig()
    started = time.perf_counter()
    fixed_image = _checked_image(fixed, "fixed", config)
    moving_image = _checked_image(moving, "moving", config)
    return _unoptimised_result(fixed_image, moving_image, as_linear_transform(transform), "transform given", config, started)


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
    ones = None if unmoved else _ones_like(moving_image)
    for start in range(0, nz, slab_slices):
        stop = min(start + slab_slices, nz)
        if unmoved:  # as resample_onto: the voxels as they are
            values = sitk.GetArrayViewFromImage(moving_image)[start:stop].copy()
            yield start, stop, values, np.ones(values.shape, bool)
            continue
        size, origin = (nx, ny, stop - start), fixed_image.TransformIndexToPhysicalPoint((0, 0, start))
        spacing, direction = fixed_image.GetSpacing(), fixed_image.GetDirection()
        values = sitk.Resample(moving_image, size, transform, INTERPOLATORS[interpolation], origin, spacing,
                               direction, float(default_value), sitk.sitkFloat32)
        coverage = sitk.Resample(ones, size, transform, sitk.sitkNearestNeighbor, origin, spacing, direction,
                                 0, sitk.sitkUInt8)
        yield start, stop, sitk.GetArrayFromImage(values), sitk.GetArrayViewFromImage(coverage).astype(bool)


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
        raise InputError(f"cannot write transform {path}: {_first_line(exc)}") from exc
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
        raise InputError(f"cannot read transform {path}: {_first_line(exc)}") from exc
    return as_linear_transform(transform)


# --- internals -----------------------------------------------------------------


@contextmanager
def _itk_threads(threads: int):
    """Set ITK's global default thread count for the duration (0 leaves it)."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _checked_image(volume: Volume, role: str, config: RegistrationConfig) -> sitk.Image:
    image = volume.image
    if image.GetDimension() != 3:
        raise InputError(f"{role} image is {image.GetDimension()}-D; registration needs a 3-D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{role} image has {image.GetNumberOfComponentsPerPixel()} components; need a scalar volume")
    size = image.GetSize()
    if min(size) < config.min_voxels_per_axis:
        raise InputError(
            f"{role} image of size {'x'.join(map(str, size))} is not a 3-D volume "
            f"(needs at least {config.min_voxels_per_axis} voxels along every axis)"
        )
    image = as_float32(image)
    values = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{role} volume contains NaN or infinite values")
    if values.min() == values.max():
        raise InputError(f"{role} volume is constant (every voxel is {float(values.min()):g}); nothing to register")
    return image


def _unoptimised_result(
    fixed_image: sitk.Image,
    moving_image: sitk.Image,
    transform: sitk.Transform,
    reason: str,
    config: RegistrationConfig,
    started: float,
) -> RegistrationResult:
    with _itk_threads(config.threads):
        metric = _metric_value(fixed_image, moving_image, transform, None, None, config)
    summary = summarize_transform(transform)
    return RegistrationResult(
        transform=transform,
        optimised=False,
        reason=reason,
        initialization="",
        metric_before=metric,
        metric_after=metric,
        iterations=0,
        seconds=time.perf_counter() - started,
        levels=(),
        summary=summary,
        stop_condition="",
        warnings=_warnings(summary, None, None, config),
    )


def _image_center(image: sitk.Image) -> tuple[float, float, float]:
    far_corner = [(n - 1) / 2.0 for n in image.GetSize()]
    return image.TransformContinuousIndexToPhysicalPoint(far_corner)


def _initial_transform(
    fixed_image: sitk.Image, moving_image: sitk.Image, fixed_mask: sitk.Image | None, config: RegistrationConfig
) -> tuple[sitk.Euler3DTransform, str]:
    candidates = ("none", "geometry", "moments") if config.initialization == "auto" else (config.initialization,)
    coarsest = 0
    coarse_fixed = _pyramid_level(fixed_image, config.shrink_factors[coarsest], config.smoothing_sigmas_mm[coarsest])
    coarse_moving = _pyramid_level(moving_image, config.shrink_factors[coarsest], config.smoothing_sigmas_mm[coarsest])
    coarse_mask = _mask_on(fixed_mask, coarse_fixed)
    scored = []
    best_overlap = 0.0
    for order, name in enumerate(candidates):
        transform = _centred_transform(fixed_image, moving_image, name)
        overlap = _overlap_fraction(coarse_fixed, coarse_mask, moving_image, transform)
        best_overlap = max(best_overlap, overlap)
        if config.initialization == "auto" and name == "none" and overlap >= config.world_overlap_fraction:
            return transform, name
        if overlap < config.min_overlap_fraction:
            continue
        method = _metric_method(config, coarse_mask, None, sampling="none", percentage=1.0, gradient_images=False)
        scored.append((_evaluate(method, coarse_fixed, coarse_moving, transform), order, name, transform))
    if not scored:
        raise RegistrationError(
            f"no overlap after initialisation: at most {best_overlap:.0%} of the fixed volume's foreground maps inside "
            f"the moving volume (need {config.min_overlap_fraction:.0%}); do the two series show the same body part?"
        )
    _, _, name, transform = min(scored, key=lambda item: item[:2])
    return transform, name


def _centred_transform(fixed_image: sitk.Image, moving_image: sitk.Image, name: str) -> sitk.Euler3DTransform:
    if name == "none":
        transform = sitk.Euler3DTransform()
        transform.SetCenter(_image_center(fixed_image))
        return transform
    mode = (
        sitk.CenteredTransformInitializerFilter.GEOMETRY
        if name == "geometry"
        else sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    initial = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(), mode)
    return sitk.Euler3DTransform(initial)


def _pyramid_level(image: sitk.Image, shrink_factor: int, sigma_mm: float, floor_mm: float = 0.0) -> sitk.Image:
    """Block-average by *shrink_factor* (per axis, toward isotropic voxels), then smooth.

    The factor applies to the finest axis; coarser axes (thick slices) shrink
    less, so a 0.9 x 0.9 x 5.5 mm volume becomes 3.6 x 3.6 x 5.5 mm at factor 4
    instead of 22 mm slices. Axes finer than *floor_mm* are shrunk at least
    to about it. No axis drops below two voxels.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    factors = np.maximum(1, np.round(shrink_factor * spacing.min() / spacing)).astype(int)
    factors = np.maximum(factors, np.floor(floor_mm / spacing)).astype(int)
    factors = np.minimum(factors, np.maximum(1, np.asarray(image.GetSize()) // 2))
    level = sitk.BinShrink(image, [int(f) for f in factors]) if np.any(factors > 1) else image
    if sigma_mm > 0:
        level = sitk.SmoothingRecursiveGaussian(level, float(sigma_mm))
    return level


def _mask_on(mask: sitk.Image | None, grid: sitk.Image) -> sitk.Image | None:
    if mask is None:
        return None
    if mask.GetSize() == grid.GetSize() and mask.GetSpacing() == grid.GetSpacing():
        return mask
    # Interpolated straight into float32 output: no float32 copy of the full-resolution mask.
    fraction = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(fraction > 0.5, sitk.sitkUInt8)


def _overlap_fraction(
    fixed_image: sitk.Image, fixed_mask: sitk.Image | None, moving_image: sitk.Image, transform: sitk.Transform
) -> float:
    covered = sitk.GetArrayFromImage(coverage_mask(fixed_image, moving_image, transform)) > 0
    region = sitk.GetArrayViewFromImage(fixed_mask) > 0 if fixed_mask is not None else np.ones_like(covered)
    total = int(region.sum())
    return float((covered & region).sum()) / total if total else 0.0


def _metric_method(
    config: RegistrationConfig,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    *,
    sampling: str,
    percentage: float,
    gradient_images: bool,
) -> sitk.ImageRegistrationMethod:
    """A single-level registration method with the Mattes MI metric configured."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    # Mattes MI's derivative uses only the moving image's gradient, and a
    # metric value alone needs none: never compute a fixed gradient image.
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(gradient_images)
    method.SetMetricSamplingStrategy(getattr(method, SAMPLING_STRATEGIES[sampling]))
    if sampling != "none":
        method.SetMetricSamplingPercentage(float(percentage), config.seed)
    method.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    return method


def _evaluate(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, transform) -> float:
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError as exc:
        raise RegistrationError(f"cannot evaluate the registration metric: {_first_line(exc)}") from exc


def _metric_value(
    fixed_image: sitk.Image,
    moving_image: sitk.Image,
    transform: sitk.Transform,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    config: RegistrationConfig,
) -> float:
    """Mattes MI on the finest pyramid level's images (comparable before/after).

    SimpleITK's MetricEvaluate uses every (masked) voxel whatever the sampling
    settings (checked: identical values for 1 %, 20 % and no sampling), so the
    value is exact rather than the optimiser's sampled estimate.
    """
    fixed_floor, moving_floor = _resolution_floors(fixed_image, moving_image, config)
    sigma = config.smoothing_sigmas_mm[-1]
    level_fixed = _pyramid_level(fixed_image, 1, sigma, fixed_floor)
    level_moving = _pyramid_level(moving_image, 1, sigma, moving_floor)
    method = _metric_method(
        config, _mask_on(fixed_mask, level_fixed), _mask_on(moving_mask, level_moving), sampling="none",
        percentage=1.0, gradient_images=False,
    )
    return _evaluate(method, level_fixed, level_moving, transform)


def _capped_percentage(
    percentage: float, image: sitk.Image, mask: sitk.Image | None, config: RegistrationConfig
) -> float:
    """The level's sampling fraction, lowered so that at most max_samples_per_level points are drawn."""
    candidates = _sample_candidates(image, mask)
    if candidates * percentage <= config.max_samples_per_level:
        return percentage
    return config.max_samples_per_level / candidates


def _sample_candidates(image: sitk.Image, mask: sitk.Image | None) -> int:
    if mask is not None:
        return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return int(np.prod(image.GetSize()))


def _resolution_floors(
    fixed_image: sitk.Image, moving_image: sitk.Image, config: RegistrationConfig
) -> tuple[float, float]:
    # Neither image needs voxels much finer than the other's: a 0.9 mm CT
    # against a PET of 5.5 x 5.5 x 3.3 mm is registered on ~2.8 mm CT voxels.
    return (
        config.resolution_ratio * min(moving_image.GetSpacing()),
        config.resolution_ratio * min(fixed_image.GetSpacing()),
    )


def _optimise(
    stage: str,
    fixed_image: sitk.Image,
    moving_image: sitk.Image,
    initial: sitk.Transform,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    config: RegistrationConfig,
    iterations: int,
    levels: list[LevelReport],
) -> tuple[sitk.Transform, str]:
    """Run the pyramid one level at a time (own images, step length and timing per level)."""
    transform = type(initial)(initial)
    stop = ""
    fixed_floor, moving_floor = _resolution_floors(fixed_image, moving_image, config)
    for level, (factor, sigma) in enumerate(zip(config.shrink_factors, config.smoothing_sigmas_mm)):
        started = time.perf_counter()
        level_fixed = _pyramid_level(fixed_image, factor, sigma, fixed_floor)
        level_moving = _pyramid_level(moving_image, factor, sigma, moving_floor)
        # Whole-volume gradient images pay off on the small coarse levels, where
        # many points are sampled; at full resolution central differences at
        # the few sampled points are cheaper.
        level_mask = _mask_on(fixed_mask, level_fixed)
        method = _metric_method(
            config,
            level_mask,
            _mask_on(moving_mask, level_moving),
            sampling=config.sampling,
            percentage=_capped_percentage(config.sampling_percentages[level], level_fixed, level_mask, config),
            gradient_images=factor > 1,
        )
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=config.step_mm[level],
            minStep=config.min_step,
            numberOfIterations=iterations,
            relaxationFactor=config.relaxation,
            gradientMagnitudeTolerance=config.gradient_tolerance,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(transform, inPlace=True)
        try:
            method.Execute(level_fixed, level_moving)
        except RuntimeError as exc:
            raise RegistrationError(f"{stage} registration failed at level {level}: {_first_line(exc)}") from exc
        levels.append(
            LevelReport(
                stage=stage,
                level=level,
                shrink_factor=int(factor),
                smoothing_sigma_mm=float(sigma),
                iterations=int(method.GetOptimizerIteration()),
                seconds=time.perf_counter() - started,
                metric=float(method.GetMetricValue()),
            )
        )
        stop = method.GetOptimizerStopConditionDescription()
    return transform, stop


def _warnings(
    summary: TransformSummary, metric_before: float | None, metric_after: float | None, config: RegistrationConfig
) -> tuple[str, ...]:
    found = []
    if summary.rotation_angle_deg > config.warn_rotation_deg:
        found.append(f"rotation of {summary.rotation_angle_deg:.1f} degrees exceeds {config.warn_rotation_deg:g}")
    if summary.translation_norm_mm > config.warn_translation_mm:
        found.append(f"translation of {summary.translation_norm_mm:.1f} mm exceeds {config.warn_translation_mm:g} mm")
    if metric_before is not None and metric_after is not None:
        gain = metric_before - metric_after
        if gain < config.warn_min_improvement * abs(metric_before):
            found.append(
                f"metric barely improved ({metric_before:.4f} -> {metric_after:.4f}, "
                f"less than {config.warn_min_improvement:.0%}); check the overlay"
            )
    return tuple(found)


def _euler_angles_deg(rotation: np.ndarray) -> np.ndarray:
    # ITK's Euler3DTransform (ZXY order by default): R = Rz @ Rx @ Ry.
    angle_x = math.asin(float(np.clip(rotation[2, 1], -1.0, 1.0)))
    angle_y = math.atan2(-rotation[2, 0], rotation[2, 2])
    angle_z = math.atan2(-rotation[0, 1], rotation[1, 1])
    return np.degrees([angle_x, angle_y, angle_z])


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages put the useful description last ("... : description").
    return lines[-1] if lines else type(exc).__name__
