"""Choose the fixed and moving series of a patient folder, or say why not.

Rules per role (:class:`SeriesRule`): modality, a description regex
(case-insensitive search), an orientation. Among the usable series matching
a rule, the default choice is *the largest axial series*: axial series are
preferred when any match, then the one with most voxels. Two candidates of
equal size, a folder with several patients, or a role with no rule and
more than two modalities in the folder are ambiguous: :class:`SelectionError`
lists the candidates instead of guessing. ``fixed`` / ``moving`` (series
number or SeriesInstanceUID) override the rules.

Without any modality rule, the fixed (anatomical) series is taken from the
first modality present in :data:`FIXED_MODALITY_PRIORITY` and the moving
one from the other modality.

**One modality** (two contrasts, e.g. T1 + T2): when the folder's usable
series all have one modality and no modality rule is given, both roles
take that modality (each keeps its description/orientation rule).

**One rule for both roles**: when, without overrides, the fixed and moving
rules are then equal, the usable series matching that rule must be exactly
two. The fixed one is the first by :func:`_fixed_order` (axial before other
orientations, then more voxels, then the lower series number, then the UID)
and the other is moving. More than two candidates are refused with the
list, because which two contrasts to fuse is a clinical choice: give
``--fixed``/``--moving`` or a description rule per role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medfuse.errors import SelectionError
from medfuse.io.dicom.series import FolderIndex, SeriesInfo, mask_identifier, orphans_problem, skipped_files
from medfuse.io.dicom.verdicts import choose_split

ORIENTATIONS = ("axial", "coronal", "sagittal", "oblique")
FIXED_MODALITY_PRIORITY = ("CT", "MR", "PT", "NM")


@dataclass(frozen=True)
class SeriesRule:
    """Which series may play a role; unset fields match anything."""

    modality: str | None = None
    description: str | None = None
    orientation: str | None = None

    def __post_init__(self) -> None:
        if self.modality is not None:
            object.__setattr__(self, "modality", self.modality.strip().upper())
        if self.orientation is not None:
            value = self.orientation.strip().lower()
            if value not in ORIENTATIONS:
                raise SelectionError(f"orientation {self.orientation!r}: use one of {', '.join(ORIENTATIONS)}")
            object.__setattr__(self, "orientation", value)
        if self.description is not None:
            try:
                re.compile(self.description)
            except re.error as exc:
                raise SelectionError(f"description regex {self.description!r}: {exc}") from exc

    @classmethod
    def from_value(cls, value: SeriesRule | dict | str | None) -> SeriesRule:
        """A rule from a SeriesRule, a dict of its fields, a modality string, or None."""
        if value is None:
            return cls()
        if isinstance(value, SeriesRule):
            return value
        if isinstance(value, str):
            return cls(modality=value)
        if isinstance(value, dict):
            unknown = set(value) - {"modality", "description", "orientation"}
            if unknown:
                raise SelectionError(f"unknown series rule key(s): {', '.join(sorted(unknown))}")
            return cls(**value)
        raise SelectionError(f"series rule {value!r}: expected a dict or a modality")

    def matches(self, series: SeriesInfo) -> bool:
        if self.modality and series.modality.upper() != self.modality:
            return False
        if self.orientation and series.orientation != self.orientation:
            return False
        if self.description and not re.search(self.description, series.series_description, re.IGNORECASE):
            return False
        return True

    def to_dict(self) -> dict:
        return {k: v for k, v in (("modality", self.modality), ("description", self.description),
                                  ("orientation", self.orientation)) if v is not None}


@dataclass(frozen=True)
class SelectionRules:
    fixed: SeriesRule = field(default_factory=SeriesRule)
    moving: SeriesRule = field(default_factory=SeriesRule)

    @classmethod
    def from_value(cls, value: SelectionRules | dict | None) -> SelectionRules:
        """Rules from SelectionRules, {"fixed": rule, "moving": rule}, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, SelectionRules):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"fixed", "moving"}
            if unknown:
                raise SelectionError(f"unknown selection rule key(s): {', '.join(sorted(unknown))}")
            return cls(SeriesRule.from_value(value.get("fixed")), SeriesRule.from_value(value.get("moving")))
        raise SelectionError(f"selection rules {value!r}: expected a dict with 'fixed'/'moving'")


@dataclass(frozen=True)
class Selection:
    """The chosen series and how each was chosen (for provenance)."""

    fixed: SeriesInfo
    moving: SeriesInfo
    how: dict

    def to_dict(self) -> dict:
        return {
            "fixed": {"series_instance_uid": self.fixed.series_instance_uid, "label": self.fixed.label,
                      "how": self.how["fixed"]},
            "moving": {"series_instance_uid": self.moving.series_instance_uid, "label": self.moving.label,
                       "how": self.how["moving"]},
        }


def describe_candidates(series: list[SeriesInfo] | tuple[SeriesInfo, ...]) -> str:
    """One line listing series as 'number/modality/description/orientation/size [UID]'."""
    return "; ".join(
        f"#{s.series_number} {s.modality} '{s.series_description}' {s.orientation} "
        f"{'x'.join(str(d) for d in s.dimensions)} [{s.series_instance_uid}]"
        + ("" if s.usable else f" ({s.reason})")
        for s in series
    )


def find_series(index: FolderIndex, key: str | int) -> SeriesInfo:
    """The one series whose SeriesInstanceUID or SeriesNumber is *key*.

    A single match is returned even when unusable (a 4-D series can still be
    read with a volume index); the caller checks ``usable``. Among several
    matches (splits of one UID, or one number reused), the only usable one
    is returned.

    Raises
    ------
    SelectionError
        No series matches (the message also names files the scan skipped,
        which may have been the series asked for); several match and none is
        usable (each one's reason is given); several usable ones match.
    """
    _check_orphans(index)
    text = str(key).strip()
    text, colon, part = text.partition(":")
    matches = [s for s in index.series if s.series_instance_uid == text]
    if not matches:
        try:
            number = int(text)
        except ValueError:
            number = None
        matches = [s for s in index.series if number is not None and s.series_number == number]
    if not matches:
        raise SelectionError(f"no series with number or UID {text!r}; series: "
                             f"{describe_candidates(index.series) or '(none)'}{_skipped_note(index)}")
    if colon:
        parts = [s for s in matches if s.split_rule and s.split_value.lower() == part.strip().lower()]
        if len(parts) != 1:
            values = ", ".join(repr(s.split_value) for s in matches if s.split_rule) or "none (not split)"
            raise SelectionError(f"series {text!r} has {'no' if not parts else 'more than one'} part "
                                 f"{part.strip()!r}; its parts: {values}")
        return choose_split(parts[0])
    if len(matches) > 1:
        usable = [s for s in matches if s.usable]
        if len(usable) == 1:
            return usable[0]
        if not usable:
            raise SelectionError(f"series {text!r} is not usable: "
                                 + "; ".join(f"{s.label}: {s.reason}" for s in matches))
        raise SelectionError(f"{len(usable)} usable series match {text!r}: {describe_candidates(usable)}")
    return matches[0]


def _check_orphans(index: FolderIndex) -> None:
    """Refuse to choose from a folder holding DICOM files whose series is unknown: any series may miss them."""
    problem = orphans_problem(index)
    if problem:
        raise SelectionError(f"{index.root}: {problem}")


def _skipped_note(index: FolderIndex) -> str:
    """'; N files skipped by the scan: path: reason, ...' (the first three files), or ''."""
    listing = skipped_files(index, verb="skipped by the scan")
    return f"; {listing}" if listing else ""


def _usable_override(index: FolderIndex, role: str, key: str | int) -> SeriesInfo:
    series = find_series(index, key)
    if not series.usable:
        raise SelectionError(f"{role} series {str(key).strip()!r} ({series.label}) is not usable: {series.reason}")
    return series


def select_series(
    index: FolderIndex,
    rules: SelectionRules | dict | None = None,
    fixed: str | int | None = None,
    moving: str | int | None = None,
) -> Selection:
    """Choose the fixed and moving series of one patient.

    Parameters
    ----------
    index : FolderIndex
        From :func:`medfuse.io.dicom.index.scan_folder`.
    rules : SelectionRules or dict, optional
        ``{"fixed": {...}, "moving": {...}}`` with modality / description /
        orientation per role (a bare string is a modality).
    fixed, moving : str or int, optional
        Series number or SeriesInstanceUID; overrides the rules for that role.

    Returns
    -------
    Selection

    Raises
    ------
    SelectionError
        No usable candidate, an ambiguous choice (candidates listed), an
        override naming an unusable series, both roles on one series, or
        series of different patients.
    """
    rules = SelectionRules.from_value(rules)
    _check_orphans(index)
    # Overrides are resolved first so that a requested series that is
    # unusable is reported with the scan's reason for it.
    given = {role: _usable_override(index, role, key)
             for role, key in (("fixed", fixed), ("moving", moving)) if key is not None}
    usable = [s for s in index.series if s.usable]
    if not usable:
        raise SelectionError(f"{index.root}: no usable series; series: "
                             f"{describe_candidates(index.series) or '(none)'}{_skipped_note(index)}")
    fixed_rule, moving_rule = rules.fixed, rules.moving
    if fixed is None and moving is None and not fixed_rule.modality and not moving_rule.modality:
        fixed_rule, moving_rule = _default_modalities(usable, fixed_rule, moving_rule)
    if fixed is None and moving is None and fixed_rule == moving_rule:
        return _pair_by_one_rule(usable, fixed_rule)
    chosen: dict[str, SeriesInfo] = {}
    how: dict[str, str] = {}
    # Overrides first, so a free role is chosen among the other series of
    # the given series' patient.
    for role, series in given.items():
        chosen[role], how[role] = series, f"given by {role}={fixed if role == 'fixed' else moving}"
    for role, rule in (("fixed", fixed_rule), ("moving", moving_rule)):
        if role in chosen:
            continue
        pool = [s for s in usable if all(s is not c for c in chosen.values())]
        if chosen:
            given = next(iter(chosen.values()))
            elsewhere = [s for s in pool if s.patient_id != given.patient_id and rule.matches(s)]
            pool = [s for s in pool if s.patient_id == given.patient_id]
            if elsewhere and not any(rule.matches(s) for s in pool):
                raise SelectionError(
                    f"the only {role} candidates belong to different patients than {given.label} "
                    f"({mask_identifier(given.patient_id) or '(none)'}): {describe_candidates(elsewhere)}"
                )
            if not rule.modality:
                rule = _modality_beside(pool, given, rule, role)
        chosen[role] = _largest_axial(pool, rule, role, None)
        how[role] = (f"largest {'axial ' if chosen[role].orientation == 'axial' else ''}series matching "
                     f"{rule.to_dict() or 'any'}")
    if chosen["fixed"].series_instance_uid == chosen["moving"].series_instance_uid and \
            chosen["fixed"].split_value == chosen["moving"].split_value:
        raise SelectionError(f"fixed and moving are the same series: {describe_candidates([chosen['fixed']])}")
    patients = {chosen["fixed"].patient_id, chosen["moving"].patient_id}
    if len(patients) > 1:
        raise SelectionError(
            "fixed and moving series belong to different patients ("
            + ", ".join(mask_identifier(p) or "(none)" for p in sorted(patients)) + ")"
        )
    return Selection(chosen["fixed"], chosen["moving"], how)


def _modality_beside(pool: list[SeriesInfo], given: SeriesInfo, rule: SeriesRule, role: str) -> SeriesRule:
    """The free role's modality when the other role was given: another modality if there is one.

    The fixed role takes the first of FIXED_MODALITY_PRIORITY present; the
    moving role needs exactly one other modality, else the choice is ambiguous.
    """
    others = sorted({s.modality for s in pool if rule.matches(s)} - {given.modality},
                    key=lambda m: (FIXED_MODALITY_PRIORITY.index(m) if m in FIXED_MODALITY_PRIORITY else 99, m))
    if not others:
        modality = given.modality
    elif role == "fixed" or len(others) == 1:
        modality = others[0]
    else:
        raise SelectionError(
            f"cannot choose the {role} series: {len(others)} other modalities ({', '.join(others)}); "
            f"give --{role} or a rule. Candidates: {describe_candidates(pool)}"
        )
    return SeriesRule(modality, rule.description, rule.orientation)


def _default_modalities(usable: list[SeriesInfo], fixed_rule: SeriesRule, moving_rule: SeriesRule):
    patients = sorted({s.patient_id for s in usable})
    if len(patients) > 1:
        raise SelectionError(
            f"folder holds {len(patients)} patients; give --fixed/--moving or select one patient's folder: "
            + describe_candidates(usable)
        )
    modalities = sorted({s.modality for s in usable},
                        key=lambda m: (FIXED_MODALITY_PRIORITY.index(m) if m in FIXED_MODALITY_PRIORITY else 99, m))
    if len(modalities) == 1:  # two contrasts of one modality: each role keeps its description/orientation
        return (
            SeriesRule(modalities[0], fixed_rule.description, fixed_rule.orientation),
            SeriesRule(modalities[0], moving_rule.description, moving_rule.orientation),
        )
    if len(modalities) != 2:
        raise SelectionError(
            f"cannot choose fixed/moving by modality: {len(modalities)} modalities "
            f"({', '.join(modalities)}); give rules or --fixed/--moving. Candidates: {describe_candidates(usable)}"
        )
    return (
        SeriesRule(modalities[0], fixed_rule.description, fixed_rule.orientation),
        SeriesRule(modalities[1], moving_rule.description, moving_rule.orientation),
    )


def _pair_by_one_rule(usable: list[SeriesInfo], rule: SeriesRule) -> Selection:
    """Fixed and moving when one rule serves both roles: exactly two candidates, ordered by :func:`_fixed_order`."""
    candidates = sorted((s for s in usable if rule.matches(s)), key=_fixed_order)
    wanted = rule.to_dict() or "any"
    if len(candidates) < 2:
        raise SelectionError(f"fixed and moving both match {wanted} but only {len(candidates)} usable series "
                             f"does; usable: {describe_candidates(usable)}")
    if len(candidates) > 2:
        raise SelectionError(
            f"ambiguous: {len(candidates)} usable series match {wanted} for both fixed and moving; choose two "
            f"with --fixed/--moving or a description rule per role. Candidates: {describe_candidates(candidates)}"
        )
    fixed, moving = candidates
    patients = {fixed.patient_id, moving.patient_id}
    if len(patients) > 1:
        raise SelectionError(
            "fixed and moving series belong to different patients ("
            + ", ".join(mask_identifier(p) or "(none)" for p in sorted(patients)) + ")"
        )
    return Selection(fixed, moving, {
        "fixed": f"of the two usable series matching {wanted}, the {_fixed_why(fixed, moving)}",
        "moving": f"the other usable series matching {wanted}",
    })


def _fixed_order(series: SeriesInfo) -> tuple:
    """Sort key, best fixed candidate first: axial, then more voxels, then lower series number, then UID."""
    number = series.series_number if series.series_number is not None else float("inf")
    return (series.orientation != "axial", -_voxels(series), number, series.series_instance_uid)


def _fixed_why(fixed: SeriesInfo, moving: SeriesInfo) -> str:
    if fixed.orientation == "axial" and moving.orientation != "axial":
        return "axial one"
    if _voxels(fixed) != _voxels(moving):
        return "larger one"
    return "one with the lower series number (equal size)"


def _largest_axial(usable: list[SeriesInfo], rule: SeriesRule, role: str, exclude: SeriesInfo | None) -> SeriesInfo:
    candidates = [s for s in usable if rule.matches(s) and s is not exclude]
    if not candidates:
        raise SelectionError(f"no usable series for {role} matching {rule.to_dict() or 'any'}; "
                             f"usable: {describe_candidates(usable)}")
    axial = [s for s in candidates if s.orientation == "axial"]
    pool = axial or candidates
    pool = sorted(pool, key=_voxels, reverse=True)
    if len(pool) > 1 and _voxels(pool[0]) == _voxels(pool[1]):
        tied = [s for s in pool if _voxels(s) == _voxels(pool[0])]
        raise SelectionError(
            f"ambiguous {role} series: {len(tied)} equally large candidates matching "
            f"{rule.to_dict() or 'any'}: {describe_candidates(tied)}; choose with --{role}"
        )
    return pool[0]


def _voxels(series: SeriesInfo) -> int:
    cols, rows, slices = series.dimensions
    return cols * rows * slices
