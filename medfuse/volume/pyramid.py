"""The multi-resolution optimisation behind :func:`medfuse.volume.registration.register`.

Pyramid levels (block averaging toward isotropic voxels, Gaussian smoothing in
mm), the Mattes mutual information metric with its masks and sampling, and
the level-by-level regular-step gradient descent. Every number comes from a
:class:`~medfuse.volume.registration_config.RegistrationConfig`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medfuse.errors import RegistrationError
from medfuse.volume.registration_config import SAMPLING_STRATEGIES, RegistrationConfig
from medfuse.volume.transforms import itk_reason


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


@contextmanager
def itk_threads(threads: int):
    """Set ITK's global default thread count for the duration (0 leaves it)."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def pyramid_level(image: sitk.Image, shrink_factor: int, sigma_mm: float, floor_mm: float = 0.0) -> sitk.Image:
    """Block-average by *shrink_factor* (per axis, toward isotropic voxels), then smooth.

    The factor applies to the finest axis; coarser axes (thick slices) shrink
    less, so a 0.9 x 0.9 x 5.5 mm volume becomes 3.6 x 3.6 x 5.5 mm at factor 4
    instead of 22 mm slices. Axes finer than *floor_mm* are shrunk at least
    to about it. No axis drops below four voxels (a small volume's coarse
    levels shrink less).
    """
    factors = block_factors(image, shrink_factor, floor_mm)
    level = sitk.BinShrink(image, list(factors)) if max(factors) > 1 else image
    if sigma_mm > 0:
        level = sitk.SmoothingRecursiveGaussian(level, float(sigma_mm))
    return level


def block_factors(image: sitk.Image, shrink_factor: int, floor_mm: float = 0.0) -> tuple[int, ...]:
    """The per-axis block-averaging factors of :func:`pyramid_level`."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    factors = np.maximum(1, np.round(shrink_factor * spacing.min() / spacing)).astype(int)
    factors = np.maximum(factors, np.floor(floor_mm / spacing)).astype(int)
    # At least 4 voxels per axis: fewer break the recursive Gaussian (ITK: "less than 4" pixels).
    factors = np.minimum(factors, np.maximum(1, np.asarray(image.GetSize()) // 4))
    return tuple(int(f) for f in factors)


class Pyramid:
    """The pyramid levels of one image and its mask, each computed once per registration.

    The initialisation, the metric before and after, and every stage's levels
    ask for the same few (factor, sigma, floor) levels; they are block
    averaged, smoothed and their masks resampled only the first time. A
    level no later step needs can be released (memory: the second-finest
    level of a 512x512x200 CT is 52 MB).
    """

    def __init__(self, image: sitk.Image, mask: sitk.Image | None = None) -> None:
        self.image = image
        self.mask = mask
        self._levels: dict[tuple, tuple[sitk.Image, sitk.Image | None]] = {}
        self._samples: dict[tuple, tuple[sitk.Image, sitk.Image | None]] = {}

    def level(self, factor: int, sigma_mm: float, floor_mm: float = 0.0) -> tuple[sitk.Image, sitk.Image | None]:
        """(image, mask on its grid) of one level; the mask is None without a mask."""
        key = self._key(factor, sigma_mm, floor_mm)
        if key not in self._levels:
            image = pyramid_level(self.image, factor, sigma_mm, floor_mm)
            self._levels[key] = (image, mask_on(self.mask, image))
        return self._levels[key]

    def every_other_voxel(self, factor: int, sigma_mm: float, floor_mm: float = 0.0
                          ) -> tuple[sitk.Image, sitk.Image | None]:
        """(image, mask) of one level at every second voxel along each axis with at least 8 (not averaged)."""
        key = self._key(factor, sigma_mm, floor_mm)
        if key not in self._samples:
            image, mask = self.level(factor, sigma_mm, floor_mm)
            every_other = [2 if n >= 8 else 1 for n in image.GetSize()]
            self._samples[key] = (sitk.Shrink(image, every_other),
                                  sitk.Shrink(mask, every_other) if mask is not None else None)
        return self._samples[key]

    def release(self, factor: int, sigma_mm: float, floor_mm: float = 0.0) -> None:
        """Forget one level (computed again if asked for); its every-other-voxel copy stays."""
        self._levels.pop(self._key(factor, sigma_mm, floor_mm), None)

    def _key(self, factor: int, sigma_mm: float, floor_mm: float) -> tuple:
        return block_factors(self.image, factor, floor_mm), float(sigma_mm)  # equal levels computed once


def mask_on(mask: sitk.Image | None, grid: sitk.Image) -> sitk.Image | None:
    """*mask* on the grid of *grid* (a voxel is in when more than half of it is; same spacing: as is)."""
    if mask is None:
        return None
    if (mask.GetSize() == grid.GetSize() and mask.GetSpacing() == grid.GetSpacing()
            and mask.GetOrigin() == grid.GetOrigin()):
        return mask
    # Interpolated straight into float32 output: no float32 copy of the full-resolution mask.
    fraction = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(fraction > 0.5, sitk.sitkUInt8)


def metric_method(
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


def evaluate_metric(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, transform,
                    threads: int) -> float:
    """The metric of *method* for *transform*, with *threads* ITK threads (1: bit-reproducible)."""
    method.SetInitialTransform(transform, inPlace=False)
    try:
        with itk_threads(threads):
            return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError as exc:
        raise RegistrationError(f"cannot evaluate the registration metric: {itk_reason(exc)}") from exc


def metric_value(fixed: Pyramid, moving: Pyramid, transform: sitk.Transform, config: RegistrationConfig) -> float:
    """Mattes MI at every second voxel along each axis of the second-finest level (comparable before/after).

    SimpleITK's MetricEvaluate uses every (masked) voxel of the fixed image
    it is given whatever the sampling settings (checked: identical values for
    1 %, 20 % and no sampling), and its cost grows with that image's voxels,
    masked or not. It is therefore given a subsampled copy of the level below
    the finest (the finest when there is one level): an eighth of its voxels,
    plenty for a histogram of 50 bins. The value is exact for those points,
    not the optimiser's random estimate, and the same at every call. On the
    large 512x512x200 CT each call took 1.2 s of CPU at full resolution and
    0.7 s on the whole second-finest level (issue 14).
    """
    fixed_floor, moving_floor = _resolution_floors(fixed.image, moving.image, config)
    level = max(0, len(config.shrink_factors) - 2)
    factor, sigma = config.shrink_factors[level], config.smoothing_sigmas_mm[level]
    points, points_mask = fixed.every_other_voxel(factor, sigma, fixed_floor)
    level_moving, moving_mask = moving.level(factor, sigma, moving_floor)
    method = metric_method(config, points_mask, moving_mask, sampling="none", percentage=1.0, gradient_images=False)
    return evaluate_metric(method, points, level_moving, transform, config.threads)


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


def optimise(
    stage: str,
    fixed: Pyramid,
    moving: Pyramid,
    initial: sitk.Transform,
    config: RegistrationConfig,
    iterations: int,
    levels: list[LevelReport],
    *,
    keep_levels: bool = True,
) -> tuple[sitk.Transform, str]:
    """Run the pyramid one level at a time (own images, step length and timing per level).

    With *keep_levels* False each level's fixed image is released once its
    optimisation ended, so the finest level is not built beside the coarser
    ones (for the last stage; the metric after it uses its own sample).
    """
    transform = type(initial)(initial)
    stop = ""
    fixed_floor, moving_floor = _resolution_floors(fixed.image, moving.image, config)
    for level, (factor, sigma) in enumerate(zip(config.shrink_factors, config.smoothing_sigmas_mm)):
        started = time.perf_counter()
        level_fixed, level_mask = fixed.level(factor, sigma, fixed_floor)
        level_moving, moving_mask = moving.level(factor, sigma, moving_floor)
        # Whole-volume gradient images pay off on the small coarse levels, where
        # many points are sampled; at full resolution central differences at
        # the few sampled points are cheaper.
        method = metric_method(
            config,
            level_mask,
            moving_mask,
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
            with itk_threads(config.threads):
                method.Execute(level_fixed, level_moving)
        except RuntimeError as exc:
            raise RegistrationError(f"{stage} registration failed at level {level}: {itk_reason(exc)}") from exc
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
        del method, level_fixed, level_mask, level_moving, moving_mask
        if not keep_levels:
            fixed.release(factor, sigma, fixed_floor)
    return transform, stop
