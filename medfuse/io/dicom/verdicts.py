"""From the instances of one Series Instance UID to readable units, each with its verdict.

Instances are split the way converters such as dcm2niix split them: by
image size, ImageType, echo and orientation (the rule is recorded).
Within one split, repeated slice positions that a temporal index
(TemporalPositionIndex / TemporalPositionIdentifier / TriggerTime, then
AcquisitionNumber, then the multi-frame instance) tells apart make a 4-D
series; otherwise they are duplicates and the series is refused. Before
any geometry, the frames are checked for what would make a silently wrong
volume (impossible orientation or spacing, zero or non-numeric rescale,
indexed colour, a file's own problem). Parts of a split series are held
until one is chosen (:func:`choose_split`); localizers are refused.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from medfuse.io.dicom.geometry import (
    MAX_POSITION_MM,
    PLAUSIBLE_SPACING_MM,
    TILT_TOLERANCE_DEG,
    StackGeometry,
    analyse_stack,
    orientation_label,
    orientation_problem,
    spacing_tolerance,
)
from medfuse.io.dicom.headers import IMAGE_SOP_CLASSES, FrameHeader, InstanceHeader
from medfuse.io.dicom.series import SeriesInfo, SliceRef
from medfuse.io.dicom.source import missing_decoder

#: Largest magnitude a rescaled pixel may reach: far inside float32 (3.4e38), so sums and products of
#: voxels in later stages stay finite.
MAX_RESCALED_VALUE = 1e30

#: Series made of at most this many slices, split off by orientation from a
#: larger stack of the same SeriesInstanceUID, are called localizers.
LOCALIZER_MAX_SLICES = 5


_SPLIT_KEYS = ("image size", "ImageType", "echo", "orientation")


def _split_key(instance: InstanceHeader, frame: FrameHeader) -> tuple:
    orient = tuple(np.round(frame.orientation, 4)) if frame.orientation is not None else None
    return (
        (instance.rows, instance.columns),
        instance.image_type,
        frame.echo,
        orient,
    )


def _describe(rule: str, value) -> str:
    if rule == "image size":
        return f"{value[1]}x{value[0]}"
    if rule == "ImageType":
        return "\\".join(value)
    if rule == "orientation":
        return "none" if value is None else orientation_label(np.array(value))
    return str(value)


def split_series(members: list[InstanceHeader], notes: tuple[str, ...]) -> list[SeriesInfo]:
    members = sorted(members, key=lambda h: (h.instance_number if h.instance_number is not None else 0, str(h.path)))
    if not members[0].has_pixel_data or members[0].sop_class_uid not in IMAGE_SOP_CLASSES:
        return [_non_volume_series(members, notes)]
    groups: dict[tuple, list[SliceRef]] = defaultdict(list)
    for inst in members:
        for frame in inst.frames:
            groups[_split_key(inst, frame)].append(SliceRef(inst, frame))
    if len(groups) == 1:
        refs = next(iter(groups.values()))
        return [_build(refs, notes)]
    keys = list(groups)
    differing = [i for i in range(len(_SPLIT_KEYS)) if len({k[i] for k in keys}) > 1]
    rule = _SPLIT_KEYS[differing[0]]
    largest = max(len(g) for g in groups.values())
    values = [_describe(rule, key[differing[0]]) for key in groups]
    if len(set(values)) < len(values):
        # Two planes with one name (e.g. two sagittal orientations): number them to pick one.
        values = [f"{value}-{n + 1}" for n, value in enumerate(values)]
    out = []
    for value, (key, refs) in zip(values, groups.items()):
        localizer = (
            _SPLIT_KEYS[differing[0]] == "orientation"
            and len(refs) <= LOCALIZER_MAX_SLICES
            and len(refs) < largest
        )
        out.append(_build(refs, notes, split_rule=rule, split_value=value, orientation_localizer=localizer))
    return _hold_for_choice(out)


def _hold_for_choice(parts: list[SeriesInfo]) -> list[SeriesInfo]:
    """Parts of one split series that could be read are held until one is chosen by its split value.

    Taking one echo, orientation or image size of a series would drop the
    others without a word, so when more than one part remains besides
    localizers, each readable part says what the series holds and how to
    pick it. A single part beside localizers stays usable (the localizers
    are listed as their own, refused, parts).
    """
    main = [p for p in parts if not p.reason.startswith("localizer")]
    if len(main) < 2:
        return parts
    first = main[0]
    key = first.series_number if first.series_number is not None else first.series_instance_uid
    listing = ", ".join(f"{p.split_value} ({p.dimensions[2]} slices{'' if p.usable or p.needs_volume_index else ', unusable'})"
                        for p in main)
    out = []
    for part in parts:
        if any(part is m for m in main) and (part.usable or part.needs_volume_index):
            reason = (f"series split by {part.split_rule} into {len(main)} parts: {listing}; "
                      f"none is taken without a choice: read this one with --series '{key}:{part.split_value}'")
            part = dataclasses.replace(part, usable=False, needs_volume_index=False, needs_split_choice=True,
                                       chosen_reason=part.reason, reason=reason)
        out.append(part)
    return out


def choose_split(series: SeriesInfo) -> SeriesInfo:
    """The part *series* as chosen explicitly: usable (or 4-D) when only the choice held it back."""
    if not series.needs_split_choice:
        return series
    return dataclasses.replace(series, usable=not series.chosen_reason, reason=series.chosen_reason,
                               needs_volume_index=series.chosen_reason.startswith("4-D series"),
                               needs_split_choice=False)


def _non_volume_series(members: list[InstanceHeader], notes: tuple[str, ...]) -> SeriesInfo:
    first = members[0]
    if not first.has_pixel_data:
        reason = f"non-image SOP class ({first.sop_class_name})"
    else:
        reason = f"SOP class not read as a volume ({first.sop_class_name})"
    return _info(members, (), (first.columns, first.rows, 0), (0.0, 0.0, 0.0), "", False, reason, notes=notes)


def _info(members, volumes, dims, spacing, orientation, usable, reason, **kw) -> SeriesInfo:
    first = members[0]
    return SeriesInfo(
        study_instance_uid=first.study_instance_uid,
        series_instance_uid=first.series_instance_uid,
        patient_id=first.patient_id,
        patient_name=first.patient_name,
        study_date=first.study_date,
        modality=first.modality,
        series_number=first.series_number,
        series_description=first.series_description,
        sop_class_uid=first.sop_class_uid,
        sop_class_name=first.sop_class_name,
        transfer_syntax_uid=first.transfer_syntax_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        instances=tuple(members),
        volumes=tuple(volumes),
        dimensions=dims,
        spacing=spacing,
        orientation=orientation,
        usable=usable,
        reason=reason,
        **kw,
    )


def _unique_instances(refs: list[SliceRef]) -> list[InstanceHeader]:
    seen: dict[str, InstanceHeader] = {}
    for ref in refs:
        seen.setdefault(ref.instance.sop_instance_uid, ref.instance)
    return list(seen.values())


def _first_problem(refs: list[SliceRef], members: list[InstanceHeader]) -> str:
    """The first reason found why these frames cannot make a volume ("" when none), naming a file.

    Checked before any geometry is computed: a file's own problem (e.g.
    fewer functional-group items than frames), indexed colour, missing or
    impossible geometry, non-positive or differing pixel spacing, and
    rescale values that would turn slices into zeros or NaN.
    """
    for inst in members:
        if inst.problem:
            return f"{inst.path.name}: {inst.problem}"
        if inst.photometric == "PALETTE COLOR":
            return (f"{inst.path.name}: PALETTE COLOR (indexed colour) images are not a scalar volume"
                    + ("" if inst.has_palette_lut else ", and the file has no lookup table"))
    for ref in refs:
        frame, name = ref.frame, _frame_name(ref)
        if frame.position is None or frame.orientation is None:
            return "no patient geometry (ImagePositionPatient/ImageOrientationPatient missing)"
        problem = orientation_problem(frame.orientation)
        if problem:
            return f"{name}: {problem}"
        if frame.pixel_spacing is None:
            return f"{name}: no PixelSpacing"
        if np.any(frame.pixel_spacing <= 0):
            return f"{name}: PixelSpacing {_values(frame.pixel_spacing)} is not positive"
        low, high = PLAUSIBLE_SPACING_MM
        if np.any(frame.pixel_spacing < low) or np.any(frame.pixel_spacing > high):
            return f"{name}: PixelSpacing {_values(frame.pixel_spacing)} mm is outside {low:g}-{high:g} mm"
        if np.any(np.abs(frame.position) > MAX_POSITION_MM):
            return f"{name}: ImagePositionPatient {_values(frame.position)} is beyond {MAX_POSITION_MM:g} mm"
        if not (np.isfinite(frame.slope) and np.isfinite(frame.intercept)):
            return f"{name}: RescaleSlope/RescaleIntercept is not a finite number"
        if frame.slope == 0:
            return f"{name}: RescaleSlope is 0 (every pixel would read as the intercept)"
        stored = 2.0 ** max(1, ref.instance.bits_stored or ref.instance.bits_allocated or 16)
        if abs(frame.slope) * stored + abs(frame.intercept) > MAX_RESCALED_VALUE:
            return (f"{name}: RescaleSlope {frame.slope:g} and RescaleIntercept {frame.intercept:g} take "
                    f"values beyond {MAX_RESCALED_VALUE:g} (float32 would overflow)")
    spacings = {tuple(r.frame.pixel_spacing) for r in refs if r.frame.pixel_spacing is not None}
    if len(spacings) > 1:
        low, high = min(spacings), max(spacings)
        if not np.allclose(low, high, rtol=1e-4, atol=1e-6):
            return f"PixelSpacing differs between slices ({_values(low)} to {_values(high)} mm)"
    return ""


def _frame_name(ref: SliceRef) -> str:
    name = ref.instance.path.name
    return name if ref.frame.frame_index is None else f"{name} frame {ref.frame.frame_index + 1}"


def _values(numbers) -> str:
    return "\\".join(f"{float(v):g}" for v in numbers)


def _temporal_volumes(refs: list[SliceRef]) -> tuple[list[list[SliceRef]], str] | None:
    """Split refs with repeated positions into volumes by a temporal key."""
    keyers = (
        ("temporal index", lambda r: r.frame.temporal),
        ("acquisition number", lambda r: r.instance.acquisition_number),
        ("multi-frame instance", lambda r: r.instance.sop_instance_uid if r.instance.is_multiframe else ""),
    )
    for name, keyer in keyers:
        keys = {keyer(r) for r in refs}
        if len(keys) < 2:
            continue
        parts: dict[str, list[SliceRef]] = defaultdict(list)
        for ref in refs:
            parts[keyer(ref)].append(ref)
        counts = {len(p) for p in parts.values()}
        if len(counts) != 1:
            continue
        ok = all(
            analyse_stack(np.array([r.frame.position for r in p]), p[0].frame.orientation).duplicates == 0
            for p in parts.values()
        )
        if ok:
            ordered = sorted(parts.items(), key=lambda kv: _natural(kv[0]))
            return [p for _, p in ordered], name
    return None


def _natural(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _sorted_volume(refs: list[SliceRef], stack: StackGeometry) -> tuple[SliceRef, ...]:
    return tuple(refs[i] for i in stack.order)


def _build(
    refs: list[SliceRef],
    notes: tuple[str, ...],
    *,
    split_rule: str = "",
    split_value: str = "",
    orientation_localizer: bool = False,
) -> SeriesInfo:
    members = _unique_instances(refs)
    first_inst, first_frame = refs[0].instance, refs[0].frame
    dims_xy = (first_inst.columns, first_inst.rows)
    ps = first_frame.pixel_spacing
    spacing_xy = (float(ps[1]), float(ps[0])) if ps is not None else (0.0, 0.0)
    kw = dict(split_rule=split_rule, split_value=split_value, notes=notes)

    def refuse(reason, volumes=(), n_slices=len(refs), spacing_z=0.0, orientation="", **extra):
        return _info(members, volumes, (*dims_xy, n_slices), (*spacing_xy, spacing_z), orientation,
                     False, reason, **kw, **extra)

    if first_inst.is_multiframe and not first_inst.functional_groups:
        return refuse(f"multi-frame {first_inst.sop_class_name} without per-frame functional groups "
                      "is not supported")
    problem = _first_problem(refs, members)
    if problem:
        return refuse(problem)
    orientation = orientation_label(first_frame.orientation)
    if "LOCALIZER" in first_inst.image_type:
        return refuse("localizer (ImageType LOCALIZER)", orientation=orientation)
    if orientation_localizer:
        return refuse("localizer: orientation differs between slices", orientation=orientation)
    if "MOSAIC" in first_inst.image_type:
        return refuse("Siemens mosaic (slices tiled in one image) is not supported", orientation=orientation)
    if first_inst.samples_per_pixel != 1:
        return refuse(f"colour images (SamplesPerPixel {first_inst.samples_per_pixel}), not a scalar volume",
                      orientation=orientation)
    if ps is None:
        return refuse("no PixelSpacing", orientation=orientation)
    codec_problem = missing_decoder(first_inst.transfer_syntax_uid)
    positions = np.array([r.frame.position for r in refs])
    stack = analyse_stack(positions, first_frame.orientation)
    volumes: list[tuple[SliceRef, ...]] = [_sorted_volume(refs, stack)]
    split_4d = ""
    if stack.duplicates:
        found = _temporal_volumes(refs)
        if found is None:
            return refuse(
                f"duplicate positions: {stack.duplicates} slice(s) share a position with another "
                "and no temporal index tells them apart",
                orientation=orientation,
            )
        parts, split_4d = found
        volumes = []
        for part in parts:
            part_stack = analyse_stack(np.array([r.frame.position for r in part]), first_frame.orientation)
            volumes.append(_sorted_volume(part, part_stack))
        stack = analyse_stack(np.array([r.frame.position for r in parts[0]]), first_frame.orientation)
    n_slices = len(volumes[0])
    common = dict(volumes=tuple(volumes), n_slices=n_slices, spacing_z=stack.spacing,
                  orientation=orientation, tilt_deg=stack.tilt_deg)
    if codec_problem:
        return refuse(codec_problem, **common)
    if n_slices < 2:
        return refuse("single slice: not a volume", **common)
    if not PLAUSIBLE_SPACING_MM[0] <= abs(stack.spacing) <= PLAUSIBLE_SPACING_MM[1]:
        low, high = PLAUSIBLE_SPACING_MM
        return refuse(f"slice spacing {stack.spacing:g} mm (from the positions) is outside {low:g}-{high:g} mm",
                      **common)
    if stack.tilt_deg > TILT_TOLERANCE_DEG:
        return refuse(f"gantry tilt {stack.tilt_deg:.1f}° (tilted stacks are not resampled yet)", **common)
    if stack.gaps:
        where, multiple = stack.gaps[0]
        more = f" (+{len(stack.gaps) - 1} more)" if len(stack.gaps) > 1 else ""
        return refuse(
            f"missing slices: gap of {multiple:.1f} × spacing at {where:.2f} mm along the normal{more}",
            **common,
        )
    if not stack.uniform:
        return refuse(
            f"non-uniform slice spacing: gaps deviate up to {stack.max_deviation:.3f} mm from "
            f"{stack.median_gap:.3f} mm (tolerance {spacing_tolerance(stack.median_gap):.3f} mm)",
            **common,
        )
    if len(volumes) > 1:
        return refuse(
            f"4-D series: {len(volumes)} volumes by {split_4d}; choose one with volume_index "
            "(--volume-index)",
            needs_volume_index=True,
            **common,
        )
    return _info(members, tuple(volumes), (*dims_xy, n_slices), (*spacing_xy, stack.spacing), orientation,
                 True, "", **kw, tilt_deg=stack.tilt_deg)
