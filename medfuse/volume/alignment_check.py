"""An independent check of a registration result: do the two volumes' edges meet?

Mutual information, which the registration maximises, cannot tell a good
result from a confident wrong one (a mirrored head, a rotation beyond the
capture range, another patient's scan). This check looks at the result with a
different measure and against controls:

* **edge agreement** ``S`` of the fixed volume and the moving volume on the
  fixed grid: the gradient-weighted mean of cos² of the angle between their
  gradients, ``sum (gf . gm)^2 / sum |gf|^2 |gm|^2``, over the fixed
  foreground where the moving volume has data, on a coarse smoothed copy
  (``working_spacing_mm``). Squared cosines ignore the sign of an edge, so CT,
  MR and PET compare alike (bone bright in CT, dark in MR). Unrelated
  directions give about 1/3;
* **shifted controls**: the same measure with the result moved by
  ``shift_mm`` along each fixed axis, both ways. A right registration sits on
  a peak: every shift lowers ``S``. A wrong one does not;
* **before**: the measure for the starting transform (world coordinates or
  the initialisation); a result with clearly less agreement than its start is
  suspect;
* **mirror control**: the moving volume mirrored left-right (about its own
  centre) and registered again on the coarse copies; when the mirrored volume
  meets the fixed edges better, left and right are probably swapped in one
  of the series.

Plus a header check that needs no pixels: two DICOM series of different
patients (PatientID, or PatientName and PatientBirthDate) are never fused
silently.

Each failed test adds a sentence to :attr:`AlignmentCheck.warnings`; an empty
tuple means nothing doubtful was found. The thresholds, and the values measured
on the shared data, are in docs/registration.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError, RegistrationError
from medfuse.volume.masks import ball_morphology, foreground_mask
from medfuse.volume.model import Volume, as_float32
from medfuse.volume.registration import RegistrationConfig, register


@dataclass(frozen=True)
class AlignmentCheckConfig:
    """Parameters of :func:`check_alignment`.

    Attributes
    ----------
    working_spacing_mm : float
        Both volumes are compared on the fixed grid block-averaged to about
        this spacing. Default 4 mm (edges of organs and the head, not noise).
    smoothing_mm : float
        Gaussian sigma applied before the gradients. Default 3 mm.
    shift_mm : float
        Size of the shifted controls. Default 8 mm.
    min_peak : float
        The result's agreement must exceed the best shifted control by at
        least this much. Default 0.01.
    max_loss : float
        Warn when the agreement fell by more than this from the starting
        transform's. Default 0.02.
    min_overlap : float
        Warn when the moving volume's object covers less than this fraction
        of the fixed volume's object after registration. Default 0.5.
    mirror_margin : float
        Warn when the mirrored volume's agreement exceeds the result's by more
        than this. Default 0.015: a symmetric object (the bundled rod
        phantom) fits mirrored about as well (+0.004 measured), a mirrored
        head clearly better (+0.034).
    mirror : bool
        Run the mirror control (one coarse registration). Default True.
    """

    working_spacing_mm: float = 4.0
    smoothing_mm: float = 3.0
    shift_mm: float = 8.0
    min_peak: float = 0.01
    min_overlap: float = 0.5
    max_loss: float = 0.02
    mirror_margin: float = 0.015
    mirror: bool = True

    def __post_init__(self) -> None:
        for name in ("working_spacing_mm", "smoothing_mm", "shift_mm"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise InputError(f"alignment check {name} must be a positive number, got {getattr(self, name)}")


@dataclass(frozen=True)
class AlignmentCheck:
    """Outcome of :func:`check_alignment` (all agreements in [0, 1], about 1/3 for unrelated edges).

    Attributes
    ----------
    agreement : float
        Edge agreement of the registration result.
    agreement_before : float or None
        Of the starting transform (None when not given).
    shifted : tuple of float
        Of the result shifted by ±shift_mm along x, y, z (fixed axes).
    peak : float
        ``agreement - max(shifted)``: positive when the result sits on a peak.
    overlap : float
        Fraction of the fixed volume's foreground (object) covered by the
        moving volume's foreground after registration.
    mirrored : float or None
        Of the left-right mirrored moving volume after its own coarse
        registration (None when the control did not run, or its
        registration failed).
    patients : tuple of str
        The two series' patient identities when both are DICOM ("" otherwise).
    warnings : tuple of str
        Why the result is doubtful; empty when no test failed.
    """

    agreement: float
    agreement_before: float | None
    shifted: tuple[float, ...]
    peak: float
    overlap: float
    mirrored: float | None
    patients: tuple[str, str]
    warnings: tuple[str, ...]

    @property
    def doubtful(self) -> bool:
        return bool(self.warnings)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["doubtful"] = self.doubtful
        out["method"] = ("edge agreement: gradient-weighted mean cos^2 between the fixed and the resampled moving "
                         "volume's gradients (1/3 = unrelated), vs shifted, starting and mirrored controls")
        return out


def check_alignment(
    fixed: Volume,
    moving: Volume,
    transform: sitk.Transform,
    initial: sitk.Transform | None = None,
    config: AlignmentCheckConfig | None = None,
) -> AlignmentCheck:
    """Check a registration result independently of the metric that produced it.

    Parameters
    ----------
    fixed, moving : Volume
        As given to :func:`medfuse.volume.registration.register`.
    transform : SimpleITK.Transform
        The result (fixed -> moving points).
    initial : SimpleITK.Transform, optional
        The starting transform, for the "before" comparison.
    config : AlignmentCheckConfig, optional

    Returns
    -------
    AlignmentCheck
    """
    config = config or AlignmentCheckConfig()
    patients = (_patient(fixed), _patient(moving))
    warnings = []
    if all(patients) and patients[0] != patients[1]:
        # Not the identifiers themselves: these lines go to terminals and logs.
        warnings.append("the series are of different patients (their PatientID, or name and birth date, differ)")
    region, fixed_mask = _fixed_region(fixed.image, config)
    # The mirror control's registration first, before the edges' arrays exist (its memory peak is the check's).
    mirror = _mirror_registration(fixed_mask, fixed, moving, config) if config.mirror else None
    grid = _smoothed(fixed.image, config)
    fixed_gradient = _gradient(sitk.GetArrayViewFromImage(grid), grid.GetSpacing())
    moving_smooth = _smoothed(moving.image, config)
    score = _agreement_for(fixed_gradient, region, grid, moving_smooth, transform)
    before = _agreement_for(fixed_gradient, region, grid, moving_smooth, initial) if initial is not None else None
    shifted = tuple(
        _agreement_for(fixed_gradient, region, grid, moving_smooth, _shifted(transform, axis, sign * config.shift_mm))
        for axis in range(3) for sign in (-1, 1)
    )
    peak = score - max(shifted)
    overlap = _object_overlap(region, grid, moving_smooth, transform)
    if overlap < config.min_overlap:
        warnings.append(
            f"the moving volume's object covers only {overlap:.0%} of the fixed volume's object after registration "
            f"(need {config.min_overlap:.0%}): shifted out of the field of view, or another body part?"
        )
    if peak < config.min_peak:
        warnings.append(
            f"the edges of the registered volumes do not meet better than with the result moved by "
            f"{config.shift_mm:g} mm (edge agreement {score:.3f}, best shifted {max(shifted):.3f})"
        )
    if before is not None and before - score > config.max_loss:
        warnings.append(f"the registration lowered the edge agreement from {before:.3f} to {score:.3f}")
    mirrored = None
    if mirror is not None:
        mirrored = _agreement_for(fixed_gradient, region, grid, *mirror)
        if mirrored - score > config.mirror_margin:
            warnings.append(
                f"the moving volume mirrored left-right fits better (edge agreement {mirrored:.3f} vs {score:.3f}): "
                "are left and right swapped in one of the series?"
            )
    return AlignmentCheck(score, before, shifted, peak, overlap, mirrored, patients, tuple(warnings))


def doubtful_registrations(volumes: list[Volume], checks: list[AlignmentCheck]) -> list[str]:
    """One line per doubt, naming the moving volume (fixed first in *volumes*, then one check per moving)."""
    lines = []
    for index, (volume, check) in enumerate(zip(volumes[1:], checks), start=1):
        name = volume.label or volume.modality or f"moving volume {index}"
        lines.extend(f"{name}: {warning}" for warning in check.warnings)
    return lines


# --- internals -----------------------------------------------------------------


def _patient(volume: Volume) -> str:
    ref = volume.references
    if ref is None:
        return ""
    info = ref.patient_study
    identity = info.get("PatientID") or "/".join(str(info.get(k) or "") for k in ("PatientName", "PatientBirthDate"))
    return str(identity).strip(" /")


def _factors(image: sitk.Image, spacing_mm: float) -> list[int]:
    """Per-axis factors bringing *image* to about *spacing_mm* (at least 4 voxels per axis left)."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    size = np.asarray(image.GetSize())
    return [int(f) for f in np.clip(np.round(spacing_mm / spacing), 1, np.maximum(1, size // 4))]


def _coarse(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    factors = _factors(image, spacing_mm)
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _smoothed(image: sitk.Image, config: AlignmentCheckConfig) -> sitk.Image:
    coarse = _coarse(as_float32(image), config.working_spacing_mm)
    return sitk.SmoothingRecursiveGaussian(coarse, config.smoothing_mm)


def _fixed_region(image: sitk.Image, config: AlignmentCheckConfig) -> tuple[np.ndarray, sitk.Image]:
    """The fixed object on the working grid: (Z, Y, X) bool, and as a uint8 mask image."""
    # The mask from a subsampled (not averaged) copy: averaging would blend a CT's padding value
    # into the air around the body, and the mask leaves out only the exact padding value.
    subsampled = sitk.Shrink(as_float32(image), _factors(image, config.working_spacing_mm))
    mask = foreground_mask(subsampled)
    return sitk.GetArrayViewFromImage(mask) > 0, mask


def _gradient(array: np.ndarray, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """(3, Z, Y, X) float64 gradient of a (Z, Y, X) array in physical units along the grid's axes."""
    return np.stack(np.gradient(array.astype(np.float64), *spacing_xyz[::-1]))


def _agreement_for(fixed_gradient, region, grid: sitk.Image, moving_smooth: sitk.Image, transform) -> float:
    # NaN outside the moving field of view marks where the data stop: the linear interpolator's
    # inside test is the one a nearest-neighbour resampling of ones would apply (one resampling, not two).
    moved = sitk.GetArrayFromImage(
        sitk.Resample(moving_smooth, grid, transform, sitk.sitkLinear, float("nan"), sitk.sitkFloat32))
    covered = ~np.isnan(moved)
    moved[~covered] = np.min(sitk.GetArrayViewFromImage(moving_smooth))
    # Away from the edge of the moving field of view, where the data stop (an edge of no anatomy).
    inside = ball_morphology(covered, (2, 2, 2), dilate=False)
    return _agreement(fixed_gradient, _gradient(moved, grid.GetSpacing()), region & inside)


def _agreement(fixed_gradient: np.ndarray, moving_gradient: np.ndarray, where: np.ndarray) -> float:
    gf, gm = fixed_gradient[:, where], moving_gradient[:, where]  # (3, N) each
    dot = np.einsum("ij,ij->j", gf, gm)
    weight = np.einsum("ij,ij->j", gf, gf) * np.einsum("ij,ij->j", gm, gm)
    total = float(weight.sum())
    return float((dot * dot).sum() / total) if total > 0 else 0.0


def _object_overlap(region, grid: sitk.Image, moving_smooth: sitk.Image, transform) -> float:
    """Fraction of *region* (the fixed object) where the moving volume has signal after *transform*.

    Signal: above 5 % of the way from the minimum to the 99th percentile, which keeps the body of
    a PET (whose Otsu foreground is only its hot organs) as well as an MR's head.
    """
    values = sitk.GetArrayViewFromImage(moving_smooth)
    low, high = float(values.min()), float(np.percentile(values, 99))
    moving_object = sitk.Cast(moving_smooth > low + 0.05 * (high - low), sitk.sitkUInt8)
    moved = sitk.Resample(moving_object, grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    inside = sitk.GetArrayViewFromImage(moved) > 0
    return float(np.count_nonzero(inside & region)) / max(int(np.count_nonzero(region)), 1)


def _shifted(transform: sitk.Transform, axis: int, mm: float) -> sitk.Transform:
    """*transform* applied after a translation of the fixed points by *mm* along *axis* (LPS)."""
    offset = [0.0, 0.0, 0.0]
    offset[axis] = mm
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(transform)
    composite.AddTransform(sitk.TranslationTransform(3, offset))
    return composite


def _mirror_registration(fixed_mask: sitk.Image, fixed: Volume, moving: Volume,
                         config: AlignmentCheckConfig) -> tuple[sitk.Image, sitk.Transform] | None:
    """The moving volume mirrored left-right (smoothed as the check's copies) and its own coarse registration.

    None when that registration fails.

    The registration samples the fixed object through the check's own mask
    (*fixed_mask*, on the working grid) instead of computing another.
    """
    coarse_moving = _coarse(as_float32(moving.image), config.working_spacing_mm / 2)
    direction = np.asarray(coarse_moving.GetDirection()).reshape(3, 3)
    lr_axis = int(np.argmax(np.abs(direction[0])))  # the image axis closest to the patient's x (left-right)
    mirrored = sitk.Flip(coarse_moving, [axis == lr_axis for axis in range(3)], flipAboutOrigin=False)
    mirrored.CopyInformation(coarse_moving)
    coarse_fixed = _coarse(as_float32(fixed.image), config.working_spacing_mm / 2)
    # A quick coarse registration: the control asks which of two hypotheses fits, not for sub-mm accuracy
    # (a level stops at 0.05 mm steps; fewer than 20 000 samples per level lost the mirrored T2, measured).
    quick = RegistrationConfig(shrink_factors=(2, 1), smoothing_sigmas_mm=(4.0, 2.0), sampling_percentages=(0.5, 0.2),
                               step_mm=(4.0, 1.0), min_step=0.05, max_samples_per_level=20_000)
    try:
        result = register(Volume(coarse_fixed), Volume(mirrored), quick, fixed_mask=fixed_mask)
    except RegistrationError:
        # A control, not the result: when the mirrored volume cannot even be registered (it drifted out of
        # the field of view on damaged input, say), the mirror hypothesis is untested, not confirmed.
        return None
    return _smoothed(mirrored, config), result.transform
