"""Every number of a registration: :class:`RegistrationConfig` (see :mod:`medfuse.volume.registration`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from medfuse.errors import InputError
from medfuse.volume.masks import MaskConfig
from medfuse.volume.resampling import INTERPOLATORS

INITIALIZATIONS = ("auto", "geometry", "moments", "none")
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
        well). Default 60000 (30000 was tried for issue 14: the
        512x512x200 case's optimisation took about 1 s of CPU less, but the
        ct_pitch known-transform TRE rose from 0.02 to 0.19 mm).
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
    filter_threads : int
        ITK threads of the image filters around the optimisation (foreground
        mask, pyramid levels, mask resampling): their voxels do not depend on
        the thread count, so the transform stays bit-reproducible. Default 0
        (SimpleITK's global default, all cores).
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
    filter_threads: int = 0
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
        if self.threads < 0 or self.filter_threads < 0:
            raise InputError(f"threads must be >= 0 (0 = all cores), got {self.threads}, {self.filter_threads}")

    def replace(self, **changes) -> "RegistrationConfig":
        """A copy with *changes* applied (validated like the original)."""
        return replace(self, **changes)
