"""Modality-aware mapping of volume intensities into the fusion range [0, 1] and back.

The fusion core expects float32 in [0, 1]. How scanner values get there is
a clinical choice, so it is explicit and recorded:

* **CT** — a window (centre C, width W in HU): [C − W/2, C + W/2] → [0, 1].
  Presets :data:`CT_WINDOWS` (brain, soft-tissue, bone); the default is
  soft-tissue. ``window="C,W"`` or ``window=(C, W)`` sets one explicitly.
* **MR** (and anything unknown) — robust percentiles of the volume, by
  default 0.5 → 0 and 99.5 → 1.
* **PT / NM** — when SUV (body weight) can be computed from the DICOM
  header facts in ``Volume.references.extra`` (Units BQML, decay-corrected,
  PatientWeight, RadionuclideTotalDose, RadionuclideHalfLife,
  RadiopharmaceuticalStartTime, SeriesTime), the SUV range
  ``suv_range`` (default 0–10) → [0, 1]; otherwise the percentiles, and the
  recorded mapping says why SUV was not used.

Values outside the range are clipped; NaN maps to 0 so the output is
always inside [0, 1]. :meth:`IntensityMapping.inverse`
maps [0, 1] back to scanner units (clipped values stay at the range ends).

Memory: the exact percentiles are found by histogram refinement in a few
slab-wise passes (:func:`_order_statistics`), and everything else works on
slabs of :data:`SLAB_VOXELS` voxels, so :func:`choose_mapping` needs a few
slabs and :func:`map_to_unit` the output plus a few slabs, whatever the
input's size and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError
from medfuse.volume.model import Volume

#: CT windows as (centre, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "soft-tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
DEFAULT_CT_WINDOW = "soft-tissue"
DEFAULT_PERCENTILES = (0.5, 99.5)
DEFAULT_SUV_RANGE = (0.0, 10.0)

#: Voxels per slab for the slab-wise passes (4 MiB of float32).
SLAB_VOXELS = 1 << 20


@dataclass(frozen=True)
class IntensityMapping:
    """A linear map from scanner units [low, high] to [0, 1], with clipping.

    Attributes
    ----------
    modality : str
    method : str
        "window", "percentile", or "suv".
    low, high : float
        Scanner values mapped to 0 and 1 (for "suv", in the stored units,
        i.e. SUV bounds divided by ``details["suv_factor"]``).
    details : dict
        What chose the range: preset name, centre/width, percentiles,
        SUV factor and range, or why SUV was not used.
    """

    modality: str
    method: str
    low: float
    high: float
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise InputError("intensity range must be finite")
        if self.high <= self.low:
            raise InputError(f"empty intensity range [{self.low:g}, {self.high:g}] (constant volume?)")

    def apply(self, values: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Scanner values (any shape) → float32 in [0, 1]; NaN → 0, ±Inf → the range ends.

        Values are cast to float32 before ``(value - low) / (high - low)``.
        *out*, if given, is a C-contiguous float32 array of the same shape
        that receives the result (it may not be *values* itself); the work
        is done slab by slab, so no full-size temporary is made.
        """
        values = np.asarray(values)
        if out is None:
            out = np.empty(values.shape, dtype=np.float32)
        elif out.shape != values.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous float32 array of the values' shape")
        low, scale = np.float32(self.low), np.float32(1.0 / (self.high - self.low))
        flat_in, flat_out = values.reshape(-1), out.reshape(-1)
        for start in range(0, flat_in.size, SLAB_VOXELS):
            slab = flat_out[start:start + SLAB_VOXELS]
            np.subtract(flat_in[start:start + SLAB_VOXELS].astype(np.float32, copy=False), low, out=slab)
            slab *= scale
            np.nan_to_num(slab, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
            np.clip(slab, 0.0, 1.0, out=slab)
        return out

    def inverse(self, unit_array: np.ndarray) -> np.ndarray:
        """[0, 1] values (any shape) → float32 scanner units."""
        unit = np.asarray(unit_array, dtype=np.float32)
        return unit * np.float32(self.high - self.low) + np.float32(self.low)

    def to_dict(self) -> dict:
        return {
            "modality": self.modality,
            "method": self.method,
            "low": float(self.low),
            "high": float(self.high),
            "details": dict(self.details),
        }


def parse_window(window: str | tuple[float, float]) -> tuple[str, float, float]:
    """(name, centre, width) from a preset name, "C,W" text, or a (C, W) pair."""
    if isinstance(window, str):
        key = window.strip().lower().replace("_", "-").replace(" ", "-")
        if key in CT_WINDOWS:
            return (key, *CT_WINDOWS[key])
        parts = window.split(",")
        if len(parts) != 2:
            raise InputError(
                f"window {window!r}: use one of {', '.join(CT_WINDOWS)} or 'C,W' (centre,width in HU)"
            )
        try:
            centre, width = float(parts[0]), float(parts[1])
        except ValueError as exc:
            raise InputError(f"window {window!r}: centre and width must be numbers") from exc
    else:
        try:
            centre, width = (float(v) for v in window)
        except (TypeError, ValueError) as exc:
            raise InputError(f"window {window!r}: expected (centre, width)") from exc
    if not (math.isfinite(centre) and math.isfinite(width)):
        raise InputError(f"window centre {centre:g}, width {width:g}: centre and width must be finite numbers")
    if width <= 0:
        raise InputError(f"window centre {centre:g}, width {width:g}: width must be positive")
    return ("custom", centre, width)


def map_to_unit(
    volume_or_array: Volume | np.ndarray,
    modality: str | None = None,
    *,
    window: str | tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    suv_range: tuple[float, float] | None = DEFAULT_SUV_RANGE,
) -> tuple[np.ndarray, IntensityMapping]:
    """Map a volume's intensities to float32 [0, 1], recording how.

    Parameters
    ----------
    volume_or_array : Volume or ndarray
        A Volume (its array is (z, y, x)) or any float array.
    modality : str, optional
        CT, MR, PT, NM, ...; defaults to ``volume.modality``.
    window : str or (centre, width), optional
        CT window: preset name, "C,W", or a pair. Also accepted for other
        modalities, in their units, to force a fixed range.
    percentiles : (low, high)
        Percentiles (0–100) used for MR, unknown modalities, and PT/NM
        when SUV is not computable or *suv_range* is None.
    suv_range : (low, high) or None
        SUV range for PT/NM when SUV is computable; None forces percentiles.

    Returns
    -------
    unit : ndarray float32, same shape as the input array, in [0, 1]
    mapping : IntensityMapping

    Notes
    -----
    Percentiles are exact: NumPy's "linear" definition (interpolation
    between the two nearest order statistics of all finite voxels, as
    float32, computed in float64).
    """
    mapping = choose_mapping(volume_or_array, modality, window=window, percentiles=percentiles, suv_range=suv_range)
    return mapping.apply(_values_and_facts(volume_or_array, modality)[0]), mapping


def choose_mapping(
    volume_or_array: Volume | np.ndarray,
    modality: str | None = None,
    *,
    window: str | tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    suv_range: tuple[float, float] | None = DEFAULT_SUV_RANGE,
) -> IntensityMapping:
    """The mapping :func:`map_to_unit` would apply, without applying it.

    For callers that map a volume piece by piece (e.g. slab by slab as it is
    resampled). Parameters as :func:`map_to_unit`. Needs no memory beyond a
    few slabs, also for percentiles.

    Returns
    -------
    IntensityMapping
    """
    values, modality, extra = _values_and_facts(volume_or_array, modality)
    return _choose_mapping(values, modality, window, percentiles, suv_range, extra)


def _values_and_facts(volume_or_array, modality):
    if isinstance(volume_or_array, Volume):
        values = sitk.GetArrayViewFromImage(volume_or_array.image)
        modality = modality if modality is not None else volume_or_array.modality
        extra = volume_or_array.references.extra if volume_or_array.references else None
    else:
        values = np.asarray(volume_or_array)
        extra = None
    return values, (modality or "").upper(), extra


def _choose_mapping(values, modality, window, percentiles, suv_range, extra) -> IntensityMapping:
    if modality == "CT" and window is None:
        window = DEFAULT_CT_WINDOW
    if window is not None:
        name, centre, width = parse_window(window)
        return IntensityMapping(
            modality, "window", centre - width / 2.0, centre + width / 2.0,
            {"window": name, "centre": centre, "width": width},
        )
    if modality in ("PT", "NM") and suv_range is not None:
        factor, why_not = suv_factor(extra)
        if factor is not None:
            lo, hi = (float(v) for v in suv_range)
            return IntensityMapping(
                modality, "suv", lo / factor, hi / factor,
                {"suv_range": [lo, hi], "suv_factor": factor, "suv_type": "SUVbw"},
            )
        mapping = _percentile_mapping(values, modality, percentiles)
        return IntensityMapping(mapping.modality, mapping.method, mapping.low, mapping.high,
                                {**mapping.details, "suv_not_used": why_not})
    return _percentile_mapping(values, modality, percentiles)


def _percentile_mapping(values, modality, percentiles) -> IntensityMapping:
    """Exact percentiles of the finite voxels (as float32), NumPy's "linear" definition.

    The order statistics are found by :func:`_order_statistics` in a few
    slab-wise passes, without a copy of the volume.
    """
    p_lo, p_hi = (float(p) for p in percentiles)
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise InputError(f"percentiles {percentiles}: need 0 <= low < high <= 100")
    values = np.asarray(values)
    count, smallest, largest = _finite_extent(values)
    if count == 0:
        raise InputError("volume has no finite voxel")
    # Each percentile lies at position h of the sorted values: between ranks floor(h) and the next.
    neighbours = [(h, math.floor(h), min(math.floor(h) + 1, count - 1))
                  for h in ((count - 1) * p / 100.0 for p in (p_lo, p_hi))]
    ordered = _order_statistics(values, sorted({r for _, *pair in neighbours for r in pair}), smallest, largest, 0)
    low, high = (ordered[below] + (ordered[above] - ordered[below]) * (h - below) for h, below, above in neighbours)
    if high <= low:
        # A mostly constant volume (e.g. large zero background): widen to the full range.
        low, high = smallest, largest
    return IntensityMapping(modality, "percentile", low, high, {"percentiles": [p_lo, p_hi]})


#: Histogram bins per refinement step of :func:`_order_statistics`.
SELECT_BINS = 4096
#: At most this many candidate values are gathered into memory for the final selection.
SELECT_GATHER_LIMIT = 1 << 20
#: Voxels per slab of the selection passes (their temporaries are a few times this, in 4-byte values).
SELECT_SLAB_VOXELS = 1 << 18


def _finite_slabs(values: np.ndarray):
    """The finite voxels of *values* as float32, in 1-D slabs of at most :data:`SELECT_SLAB_VOXELS`."""
    flat = values.reshape(-1)
    for start in range(0, flat.size, SELECT_SLAB_VOXELS):
        slab = flat[start:start + SELECT_SLAB_VOXELS].astype(np.float32, copy=False)
        finite = np.isfinite(slab)
        yield slab if finite.all() else slab[finite]


def _finite_extent(values: np.ndarray) -> tuple[int, float, float]:
    """(count, min, max) of the finite voxels; (0, nan, nan) when there are none."""
    count, smallest, largest = 0, math.inf, -math.inf
    for slab in _finite_slabs(values):
        if slab.size:
            count += slab.size
            smallest, largest = min(smallest, float(slab.min())), max(largest, float(slab.max()))
    return (count, smallest, largest) if count else (0, math.nan, math.nan)


def _order_statistics(values: np.ndarray, ranks: list[int], low: float, high: float, below: int) -> dict[int, float]:
    """The finite values of 0-based *ranks* in sorted order, all known to lie in [low, high].

    *below* finite values are smaller than *low*. Exact selection by histogram
    refinement: one pass counts the candidates in :data:`SELECT_BINS` bins of
    [low, high]; a bin holding a wanted rank is either gathered (at most
    :data:`SELECT_GATHER_LIMIT` values) and partitioned, or narrowed to the
    exact range of its values and refined again. A bin's values are exactly
    those in that range, because the bin index is monotonic in the value.
    Memory: a few slabs plus the gathered values, never a copy of the volume.
    """
    if low == high:
        return {rank: low for rank in ranks}
    scale = SELECT_BINS / (high - low)

    def in_range(slab):
        return slab[(slab >= low) & (slab <= high)]

    def bin_of(inside):
        # float32 arithmetic is enough: rounding is monotonic, so the bin index is monotonic in the value.
        position = inside - np.float32(low)
        position *= np.float32(scale)
        index = position.astype(np.int32)
        return np.minimum(index, SELECT_BINS - 1, out=index)

    counts = np.zeros(SELECT_BINS, np.int64)
    for slab in _finite_slabs(values):
        counts += np.bincount(bin_of(in_range(slab)), minlength=SELECT_BINS)
    if counts.sum() <= SELECT_GATHER_LIMIT:
        gathered = np.concatenate([in_range(slab) for slab in _finite_slabs(values)])
        relative = [rank - below for rank in ranks]
        ordered = np.partition(gathered, relative)
        return {rank: float(ordered[r]) for rank, r in zip(ranks, relative)}
    cumulative = np.cumsum(counts)
    wanted: dict[int, list[int]] = {}
    for rank in ranks:
        wanted.setdefault(int(np.searchsorted(cumulative, rank - below, side="right")), []).append(rank)
    bins = np.array(sorted(wanted))
    extent = {b: [math.inf, -math.inf] for b in wanted}
    for slab in _finite_slabs(values):
        inside = in_range(slab)
        which = bin_of(inside)
        for b in bins:  # a few wanted bins: one comparison each is cheaper than np.isin's sort of the slab
            members = inside[which == b]
            if members.size:
                extent[int(b)] = [min(extent[int(b)][0], float(members.min())),
                                  max(extent[int(b)][1], float(members.max()))]
    found = {}
    for b, bin_ranks in wanted.items():
        found.update(_order_statistics(values, bin_ranks, *extent[b], below + (int(cumulative[b - 1]) if b else 0)))
    return found


def suv_factor(extra: dict | None) -> tuple[float | None, str]:
    """SUVbw multiplier (g/Bq·ml → SUV = value × factor) from DICOM facts, or (None, why).

    Uses SeriesTime as the decay reference for DecayCorrection START and no
    decay for ADMIN; dose decays with RadionuclideHalfLife from
    RadiopharmaceuticalStartTime (same day assumed unless the DateTime form
    is present).
    """
    if not extra:
        return None, "no DICOM header facts (not a DICOM PET/NM volume)"
    if extra.get("Units", "").upper() != "BQML":
        return None, f"Units is {extra.get('Units') or 'absent'}, not BQML"
    missing = [k for k in ("PatientWeight", "RadionuclideTotalDose", "RadionuclideHalfLife") if not extra.get(k)]
    if missing:
        return None, f"missing {', '.join(missing)}"
    try:
        weight_g = float(extra["PatientWeight"]) * 1000.0
        dose = float(extra["RadionuclideTotalDose"])
        half_life = float(extra["RadionuclideHalfLife"])
    except ValueError:
        return None, "unparsable weight, dose or half-life"
    if weight_g <= 0 or dose <= 0 or half_life <= 0:
        return None, "non-positive weight, dose or half-life"
    correction = extra.get("DecayCorrection", "").upper()
    if correction == "ADMIN":
        decayed = dose
    elif correction == "START":
        start = extra.get("RadiopharmaceuticalStartDateTime", "")[8:] or extra.get("RadiopharmaceuticalStartTime", "")
        scan = extra.get("SeriesTime", "")
        if not start or not scan:
            return None, "missing RadiopharmaceuticalStartTime or SeriesTime"
        try:
            elapsed = _seconds(scan) - _seconds(start)
        except ValueError:
            return None, "unparsable injection or series time"
        if elapsed < 0:
            return None, "series time before injection time (crosses midnight?)"
        decayed = dose * 2.0 ** (-elapsed / half_life)
    else:
        return None, f"DecayCorrection is {correction or 'absent'}"
    return weight_g / decayed, ""


def _seconds(tm: str) -> float:
    text = tm.strip()
    whole, _, frac = text.partition(".")
    if len(whole) < 2 or not whole.isdigit():
        raise ValueError(tm)
    h = int(whole[0:2])
    m = int(whole[2:4]) if len(whole) >= 4 else 0
    s = int(whole[4:6]) if len(whole) >= 6 else 0
    return h * 3600 + m * 60 + s + (float("0." + frac) if frac else 0.0)
