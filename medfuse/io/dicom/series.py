"""The records an index of a DICOM folder is made of: series, studies, the folder, and their display.

:class:`SeriesInfo` is one readable unit (a series UID, or a split of one)
with its verdict; :class:`FolderIndex` is what
:func:`medfuse.io.dicom.index.scan_folder` returns. Built by
:mod:`medfuse.io.dicom.verdicts`; read by :mod:`medfuse.io.dicom.read`
and :mod:`medfuse.io.select`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medfuse.io.dicom.headers import FrameHeader, InstanceHeader


@dataclass(frozen=True)
class SliceRef:
    """One 2-D frame of a series: the file it lives in and its geometry."""

    instance: InstanceHeader
    frame: FrameHeader


@dataclass(frozen=True)
class SeriesInfo:
    """One readable unit of a study: a series UID, or a split of one.

    Attributes
    ----------
    volumes : tuple of tuple of SliceRef
        One tuple per 3-D volume (several for a 4-D series), each sorted
        ascending along the slice normal. Empty for non-image series.
    dimensions : (columns, rows, slices)
    spacing : (x, y, z) in mm; z from positions (0 when unknown).
    orientation : 'axial' | 'coronal' | 'sagittal' | 'oblique' | ''
    usable : bool
        True when :func:`medfuse.io.dicom.read.read_series` can read it as
        one 3-D volume without further choices.
    reason : str
        Why it is not usable ("" when usable).
    split_rule : str
        The rule that split this out of its SeriesInstanceUID ("" if none).
    notes : tuple of str
        Problems handled without refusing (e.g. duplicate files ignored).
    """

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    modality: str
    series_number: int | None
    series_description: str
    sop_class_uid: str
    sop_class_name: str
    transfer_syntax_uid: str
    frame_of_reference_uid: str
    instances: tuple[InstanceHeader, ...]
    volumes: tuple[tuple[SliceRef, ...], ...]
    dimensions: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    usable: bool
    reason: str
    split_rule: str = ""
    split_value: str = ""
    notes: tuple[str, ...] = ()
    tilt_deg: float = 0.0
    #: A 4-D series that is otherwise readable: read_series needs volume_index.
    needs_volume_index: bool = False
    #: One of several parts a series was split into: read only when chosen by
    #: its split value (``--series NUMBER:VALUE``), never taken silently.
    needs_split_choice: bool = False
    #: The reason it has once chosen ("" = usable), for a part held for a choice.
    chosen_reason: str = ""

    @property
    def n_instances(self) -> int:
        return len(self.instances)

    @property
    def n_frames(self) -> int:
        return sum(len(inst.frames) for inst in self.instances)

    @property
    def n_volumes(self) -> int:
        return len(self.volumes)

    @property
    def verdict(self) -> str:
        return "usable" if self.usable else f"unusable: {self.reason}"

    @property
    def label(self) -> str:
        number = f"series {self.series_number}" if self.series_number is not None else "no series number"
        desc = self.series_description or "(no description)"
        split = f" [{self.split_rule} {self.split_value}]" if self.split_rule else ""
        return f"{self.modality} {desc} ({number}){split}"

    def to_dict(self, *, show_phi: bool = False) -> dict:
        """JSON-ready summary (patient ID masked unless *show_phi*)."""
        return {
            "patient_id": self.patient_id if show_phi else mask_identifier(self.patient_id),
            "study_instance_uid": self.study_instance_uid,
            "study_date": self.study_date,
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "series_number": self.series_number,
            "series_description": self.series_description,
            "sop_class": self.sop_class_name,
            "instances": self.n_instances,
            "frames": self.n_frames,
            "volumes": self.n_volumes,
            "dimensions": list(self.dimensions),
            "spacing": [round(s, 6) for s in self.spacing],
            "orientation": self.orientation,
            "usable": self.usable,
            "reason": self.reason,
            "needs_volume_index": self.needs_volume_index,
            "needs_split_choice": self.needs_split_choice,
            "split_rule": self.split_rule,
            "split_value": self.split_value,
            "notes": list(self.notes),
            "files": [str(inst.path) for inst in self.instances],
        }


@dataclass(frozen=True)
class StudyInfo:
    study_instance_uid: str
    patient_id: str
    study_date: str
    series: tuple[SeriesInfo, ...]


@dataclass(frozen=True)
class FolderIndex:
    """The result of :func:`scan_folder`.

    Attributes
    ----------
    root : pathlib.Path
    studies : tuple of StudyInfo
    skipped : tuple of (path, reason)
        Files that are not part of any series, and why.
    orphans : tuple of (path, reason)
        Of the skipped files, DICOM files (preamble and file meta) that
        could not be read far enough to know their series: any series of
        the folder may be missing them.
    """

    root: Path
    studies: tuple[StudyInfo, ...]
    skipped: tuple[tuple[Path, str], ...] = field(default_factory=tuple)
    orphans: tuple[tuple[Path, str], ...] = field(default_factory=tuple)

    @property
    def series(self) -> tuple[SeriesInfo, ...]:
        return tuple(s for study in self.studies for s in study.series)

    @property
    def usable_series(self) -> tuple[SeriesInfo, ...]:
        return tuple(s for s in self.series if s.usable)

    def to_dict(self, *, show_phi: bool = False) -> dict:
        return {
            "root": str(self.root),
            "studies": [
                {
                    "study_instance_uid": st.study_instance_uid,
                    "patient_id": st.patient_id if show_phi else mask_identifier(st.patient_id),
                    "study_date": st.study_date,
                    "series": [s.to_dict(show_phi=show_phi) for s in st.series],
                }
                for st in self.studies
            ],
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
        }


def skipped_files(index: FolderIndex, shown: int = 3, *, verb: str = "skipped") -> str:
    """'N file(s) <verb>: path: reason, ...' naming the first *shown* skipped files, or ''."""
    if not index.skipped:
        return ""
    listed = ", ".join(f"{path}: {reason}" for path, reason in index.skipped[:shown])
    more = f", and {len(index.skipped) - shown} more" if len(index.skipped) > shown else ""
    return f"{len(index.skipped)} file(s) {verb}: {listed}{more}"


def skipped_note(index: FolderIndex, shown: int = 3) -> str:
    """' (N file(s) skipped: path: reason, ...)' naming the first *shown* skipped files, or ''."""
    listing = skipped_files(index, shown)
    return f" ({listing})" if listing else ""


def orphans_problem(index: FolderIndex) -> str:
    """Why no series of *index* may be read as complete: DICOM files whose series is unknown ('' when none)."""
    if not index.orphans:
        return ""
    path, reason = index.orphans[0]
    more = f" (+{len(index.orphans) - 1} more)" if len(index.orphans) > 1 else ""
    return (f"{len(index.orphans)} DICOM file(s) cannot be read, and a series read without them could miss "
            f"slices: {path}: {reason}{more}; fix or remove them")


def mask_identifier(value: str) -> str:
    """Mask a patient identifier for display: keep the last 2 characters."""
    if not value:
        return ""
    keep = value[-2:] if len(value) > 4 else ""
    return "*" * max(3, len(value) - len(keep)) + keep
