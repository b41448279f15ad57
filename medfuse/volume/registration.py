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

import time
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError, RegistrationError
from medfuse.volume.masks import foreground_mask
from medfuse.volume.model import Volume, as_float32
from medfuse.volume.pyramid import LevelReport, Pyramid, evaluate_metric, itk_threads, metric_method, metric_value, optimise
from medfuse.volume.registration_config import RegistrationConfig
from medfuse.volume.resampling import coverage_mask
from medfuse.volume.transforms import TransformSummary, as_linear_transform, summarize_transform

__all__ = ["RegistrationConfig", "RegistrationResult", "evaluate_transform", "register"]


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
    initial : SimpleITK.Transform or None
        Where the optimisation started (after initialisation); the given or
        identity transform when none ran. For the independent check
        (:mod:`medfuse.volume.alignment_check`).
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
    initial: sitk.Transform | None = None

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


def register(fixed: Volume, moving: Volume, config: RegistrationConfig | None = None, *,
             fixed_mask: sitk.Image | None = None) -> RegistrationResult:
    """Register *moving* to *fixed*: rigid, then optionally affine.

    Parameters
    ----------
    fixed, moving : Volume
        3-D float32 volumes in LPS space. When both carry the same non-empty
        FrameOfReferenceUID no optimisation runs (they are already in one
        patient coordinate system) and the identity is returned.
    config : RegistrationConfig, optional
        Defaults to ``RegistrationConfig()``.
    fixed_mask : SimpleITK.Image, optional
        A foreground mask of the fixed volume already at hand (uint8, 1
        inside, on any grid covering it), used instead of computing the
        automatic one when ``config.auto_mask`` asks for a fixed mask (the
        alignment check's mirror control reuses its own).

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

    # The filters (mask, pyramid, resampling) give the same voxels with any thread count; the
    # metric and the optimiser run with config.threads (pyramid.evaluate_metric, pyramid.optimise).
    with itk_threads(config.filter_threads):
        return _register_images(fixed_image, moving_image, config, started, fixed_mask)


def _register_images(
    fixed_image: sitk.Image, moving_image: sitk.Image, config: RegistrationConfig, started: float,
    given_mask: sitk.Image | None,
) -> RegistrationResult:
    # The masks stay on their coarse working grid; each pyramid level resamples them once.
    fixed_mask = None
    if config.auto_mask in ("fixed", "both"):
        fixed_mask = given_mask if given_mask is not None else foreground_mask(fixed_image, config.mask,
                                                                                on_image_grid=False)
    moving_mask = foreground_mask(moving_image, config.mask, on_image_grid=False) if config.auto_mask == "both" else None
    fixed, moving = Pyramid(fixed_image, fixed_mask), Pyramid(moving_image, moving_mask)
    initial, initialization = _initial_transform(fixed, moving, config)
    metric_before = metric_value(fixed, moving, initial, config)

    levels: list[LevelReport] = []
    rigid, stop = optimise("rigid", fixed, moving, initial, config, config.iterations, levels,
                           keep_levels=config.affine)
    transform: sitk.Transform = rigid
    if config.affine:
        affine = _same_kind(rigid, sitk.AffineTransform(3))
        affine_config = config.replace(
            shrink_factors=config.shrink_factors[-config.affine_levels :],
            smoothing_sigmas_mm=config.smoothing_sigmas_mm[-config.affine_levels :],
            sampling_percentages=config.sampling_percentages[-config.affine_levels :],
            step_mm=config.step_mm[-config.affine_levels :],
        )
        transform, stop = optimise("affine", fixed, moving, affine, affine_config, config.affine_iterations, levels,
                                   keep_levels=False)
    metric_after = metric_value(fixed, moving, transform, config)
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
        initial=initial,
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
    with itk_threads(config.filter_threads):
        metric = metric_value(Pyramid(fixed_image), Pyramid(moving_image), transform, config)
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
        initial=transform,
    )


def _image_center(image: sitk.Image) -> tuple[float, float, float]:
    far_corner = [(n - 1) / 2.0 for n in image.GetSize()]
    return image.TransformContinuousIndexToPhysicalPoint(far_corner)


def _initial_transform(fixed: Pyramid, moving: Pyramid, config: RegistrationConfig) -> tuple[sitk.Euler3DTransform, str]:
    candidates = ("none", "geometry", "moments") if config.initialization == "auto" else (config.initialization,)
    fixed_image, moving_image = fixed.image, moving.image
    coarse_fixed, coarse_mask = fixed.level(config.shrink_factors[0], config.smoothing_sigmas_mm[0])
    coarse_moving, _ = moving.level(config.shrink_factors[0], config.smoothing_sigmas_mm[0])
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
        method = metric_method(config, coarse_mask, None, sampling="none", percentage=1.0, gradient_images=False)
        scored.append((evaluate_metric(method, coarse_fixed, coarse_moving, transform, config.threads), order, name,
                       transform))
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


def _overlap_fraction(
    fixed_image: sitk.Image, fixed_mask: sitk.Image | None, moving_image: sitk.Image, transform: sitk.Transform
) -> float:
    covered = sitk.GetArrayFromImage(coverage_mask(fixed_image, moving_image, transform)) > 0
    region = sitk.GetArrayViewFromImage(fixed_mask) > 0 if fixed_mask is not None else np.ones_like(covered)
    total = int(region.sum())
    return float((covered & region).sum()) / total if total else 0.0


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
