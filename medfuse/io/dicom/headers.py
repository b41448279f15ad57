"""Header-only parsing of DICOM files into plain, typed records.

A DICOM file is read once with ``stop_before_pixels`` and turned into one
:class:`InstanceHeader` (the file) holding one :class:`FrameHeader` per
frame: a classic single-frame image has one frame; an enhanced multi-frame
object has one per item of its Per-frame Functional Groups Sequence, with
the Shared Functional Groups as the fallback for every attribute. Everything
above this module (indexing, geometry checks, reading) works on these
records, never on pydicom datasets, so the rules are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from medfuse.io.dicom.source import NotDicomError

#: SOP Class UIDs of the storage classes this reader turns into volumes.
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
}

#: Largest number of frames in one file, and of pixels along an image side, that a header may declare.
MAX_FRAMES = 100_000
MAX_IMAGE_SIDE = 16_384

#: The DICOMDIR media storage directory SOP class (an index file, not an image).
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: Patient and General Study module keywords copied into SeriesReference.patient_study.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
)

#: General Equipment module keywords copied into SeriesReference.equipment.
EQUIPMENT_KEYWORDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StationName",
    "DeviceSerialNumber",
    "SoftwareVersions",
)

#: Other facts later stages need (SUV, positioning), copied into SeriesReference.extra.
EXTRA_KEYWORDS = (
    "BodyPartExamined",
    "PatientPosition",
    "PatientWeight",
    "PatientSize",
    "Units",
    "DecayCorrection",
    "CorrectedImage",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "ProtocolName",
    "ImageType",
    "SliceThickness",
)


@dataclass(frozen=True)
class FrameHeader:
    """Geometry and value mapping of one 2-D frame.

    Attributes
    ----------
    frame_index : int or None
        0-based frame number inside a multi-frame object; None for a
        single-frame image.
    position : ndarray (3,) float64 or None
        ImagePositionPatient (LPS, mm) of the first transmitted pixel.
    orientation : ndarray (6,) float64 or None
        ImageOrientationPatient: row direction cosines then column ones.
    pixel_spacing : ndarray (2,) float64 or None
        PixelSpacing as stored: (between rows, between columns) in mm.
    slope, intercept : float
        Rescale Slope and Intercept (1 and 0 when absent).
    echo : str
        Echo number or effective echo time ("" when absent).
    temporal : str
        The first of TemporalPositionIndex, TemporalPositionIdentifier,
        TriggerTime that is present ("" when none).
    """

    frame_index: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    slope: float = 1.0
    intercept: float = 0.0
    echo: str = ""
    temporal: str = ""


@dataclass(frozen=True)
class InstanceHeader:
    """What the indexer and reader need from one DICOM file (no pixels).

    ``rows``/``columns`` are 0 for non-image objects. ``frames`` holds one
    :class:`FrameHeader` per frame (empty for non-image objects).
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    transfer_syntax_uid: str
    modality: str
    patient_id: str
    patient_name: str
    study_date: str
    series_number: int | None
    series_description: str
    instance_number: int | None
    acquisition_number: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    bits_allocated: int
    samples_per_pixel: int
    has_pixel_data: bool
    gantry_tilt: float | None
    frames: tuple[FrameHeader, ...] = field(default_factory=tuple)
    bits_stored: int = 0
    pixel_representation: int = 0
    #: Byte offset of the Pixel Data element in the file (-1 when unknown).
    pixel_offset: int = -1
    #: True for enhanced multi-frame objects (per-frame functional groups).
    functional_groups: bool = False
    photometric: str = ""
    has_palette_lut: bool = False
    #: NumberOfFrames as the header states it (0 when absent).
    declared_frames: int = 0
    #: Why this file cannot be part of a volume although its header parsed ("" when none).
    problem: str = ""

    @property
    def is_multiframe(self) -> bool:
        return bool(self.frames) and self.frames[0].frame_index is not None

    @property
    def sop_class_name(self) -> str:
        return IMAGE_SOP_CLASSES.get(self.sop_class_uid) or _uid_name(self.sop_class_uid)


def _uid_name(uid: str) -> str:
    name = pydicom.uid.UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "no SOP class")


def header_from_dataset(
    ds: Dataset, path: Path, *, pixel_offset: int = -1, transfer_syntax_uid: str | None = None
) -> InstanceHeader:
    """Build an :class:`InstanceHeader` from a (header-only) pydicom dataset.

    *transfer_syntax_uid* overrides the file meta's (for datasets stored without one).
    """
    meta = getattr(ds, "file_meta", None)
    sop_class = _raw_text(ds, "SOPClassUID") or (str(meta.get("MediaStorageSOPClassUID", "")) if meta else "")
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise NotDicomError("DICOMDIR (a media index, not an image)")
    if not sop_class and "SeriesInstanceUID" not in ds:
        raise NotDicomError("not a DICOM object (no SOP Class or Series Instance UID)")
    rows = int(ds.get("Rows", 0) or 0)
    columns = int(ds.get("Columns", 0) or 0)
    # With stop_before_pixels the pixel element itself is gone; an image is
    # recognised by its Image Pixel module (Rows/Columns).
    has_pixels = rows > 0 and columns > 0
    frames, problem = _frames(ds) if has_pixels else ((), "")
    if max(rows, columns) > MAX_IMAGE_SIDE:
        problem = f"image size {columns}x{rows} is beyond the {MAX_IMAGE_SIDE} pixel limit per side"
    tilt = _raw_values(ds, "GantryDetectorTilt")
    return InstanceHeader(
        path=path,
        sop_class_uid=sop_class,
        sop_instance_uid=_raw_text(ds, "SOPInstanceUID"),
        study_instance_uid=_raw_text(ds, "StudyInstanceUID"),
        series_instance_uid=_raw_text(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=_raw_text(ds, "FrameOfReferenceUID"),
        transfer_syntax_uid=transfer_syntax_uid if transfer_syntax_uid is not None else (
            str(meta.get("TransferSyntaxUID", "")) if meta else ""),
        modality=_raw_text(ds, "Modality"),
        patient_id=_raw_text(ds, "PatientID"),
        patient_name=str(ds.get("PatientName", "")),
        study_date=_raw_text(ds, "StudyDate"),
        series_number=_raw_int(ds, "SeriesNumber"),
        series_description=str(ds.get("SeriesDescription", "")),
        instance_number=_raw_int(ds, "InstanceNumber"),
        acquisition_number=_raw_text(ds, "AcquisitionNumber"),
        image_type=tuple(v.strip().upper() for v in (_raw_values(ds, "ImageType") or ())),
        rows=rows,
        columns=columns,
        bits_allocated=int(ds.get("BitsAllocated", 0) or 0),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        has_pixel_data=has_pixels,
        gantry_tilt=_float(tilt[0], 0.0) if tilt else None,
        frames=frames,
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        pixel_offset=pixel_offset,
        functional_groups="PerFrameFunctionalGroupsSequence" in ds,
        photometric=_raw_text(ds, "PhotometricInterpretation").upper(),
        declared_frames=max(0, _raw_int(ds, "NumberOfFrames") or 0),
        has_palette_lut=any(k in ds for k in ("RedPaletteColorLookupTableData",
                                              "SegmentedRedPaletteColorLookupTableData")),
        problem=problem,
    )


def _frames(ds: Dataset) -> tuple[tuple[FrameHeader, ...], str]:
    """One FrameHeader per frame, and a problem that keeps them out of a volume ("" when none)."""
    n_frames = _raw_int(ds, "NumberOfFrames") or 1
    if not 1 <= n_frames <= MAX_FRAMES:
        raise ValueError(f"NumberOfFrames {n_frames} is outside 1-{MAX_FRAMES}")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        if n_frames > 1:
            # A multi-frame object without functional groups (e.g. NM): the
            # frames' planes are not modelled; the frames are kept so the
            # indexer can say why it refuses the series.
            return tuple(_frame_from(ds, None, i) for i in range(n_frames)), ""
        return (_frame_from(ds, None, None),), ""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    frames = tuple(_frame_from(item, shared, i) for i, item in enumerate(per_frame))
    problem = ""
    if len(frames) != n_frames:
        # Frames without an item have no plane: reading the others would drop them unseen.
        problem = (f"Per-frame Functional Groups Sequence has {len(frames)} item(s) for "
                   f"{n_frames} frame(s) (NumberOfFrames)")
    return frames, problem


def _frame_from(item: Dataset, shared: Dataset | None, index: int | None) -> FrameHeader:
    """One frame's attributes; for functional groups, per-frame then shared."""
    if shared is None:
        src = item
        position = _numbers(src, "ImagePositionPatient", 3)
        orientation = _numbers(src, "ImageOrientationPatient", 6)
        spacing = _numbers(src, "PixelSpacing", 2)
        slope = _number(src, "RescaleSlope", 1.0)
        intercept = _number(src, "RescaleIntercept", 0.0)
        echo = _raw_text(src, "EchoNumbers")
        temporal = _raw_text(src, "TemporalPositionIdentifier") or _raw_text(src, "TriggerTime")
        return FrameHeader(index, position, orientation, spacing, slope, intercept, echo, temporal)

    def group(keyword: str) -> Dataset | None:
        for holder in (item, shared):
            seq = holder.get(keyword)
            if seq:
                return seq[0]
        return None

    plane_pos = group("PlanePositionSequence")
    plane_ori = group("PlaneOrientationSequence")
    measures = group("PixelMeasuresSequence")
    transform = group("PixelValueTransformationSequence")
    content = group("FrameContentSequence")
    echo_group = group("MREchoSequence")
    return FrameHeader(
        frame_index=index,
        position=_numbers(plane_pos, "ImagePositionPatient", 3),
        orientation=_numbers(plane_ori, "ImageOrientationPatient", 6),
        pixel_spacing=_numbers(measures, "PixelSpacing", 2),
        slope=_number(transform, "RescaleSlope", 1.0),
        intercept=_number(transform, "RescaleIntercept", 0.0),
        echo=_raw_text(echo_group, "EffectiveEchoTime") if echo_group else "",
        temporal=_raw_text(content, "TemporalPositionIndex") if content else "",
    )


def reference_dicts(ds: Dataset) -> tuple[dict, dict, dict]:
    """(patient_study, equipment, extra) dicts for a SeriesReference, values as str."""

    def pick(keywords: tuple[str, ...]) -> dict:
        return {k: str(ds.get(k)) for k in keywords if k in ds and ds.get(k) not in (None, "")}

    extra = pick(EXTRA_KEYWORDS)
    radio = ds.get("RadiopharmaceuticalInformationSequence")
    if radio:
        info = radio[0]
        for keyword in ("RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime",
                        "RadionuclideTotalDose", "RadionuclideHalfLife", "Radiopharmaceutical"):
            if keyword in info and info.get(keyword) not in (None, ""):
                extra[keyword] = str(info.get(keyword))
    return pick(PATIENT_STUDY_KEYWORDS), pick(EQUIPMENT_KEYWORDS), extra


def _raw_values(ds: Dataset | None, keyword: str) -> list | None:
    """A numeric (DS/IS) element's values without pydicom's value conversion.

    Header-only indexing parses thousands of files; converting DS strings to
    validated DSfloat objects was a third of the per-file cost, so the raw
    bytes are split and converted here instead.
    """
    if ds is None:
        return None
    try:
        elem = ds.get_item(keyword)
    except KeyError:
        return None
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if _value_representation(elem) not in _TEXT_VRS:
            # Binary numbers (e.g. EffectiveEchoTime, FD): pydicom's conversion, not text.
            return _as_list(ds[keyword].value) or None
        text = value.decode("ascii", "replace").strip(" \x00")
        return text.split("\\") if text else None
    values = _as_list(value)
    return values or None


#: Value representations stored as ASCII text, split on backslashes by _raw_values.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UT"})


def _value_representation(elem) -> str:
    vr = getattr(elem, "VR", None)
    if vr:
        return str(vr)
    try:
        return dictionary_VR(elem.tag)
    except KeyError:
        return ""


def _raw_text(ds: Dataset, keyword: str) -> str:
    """An ASCII-only element (UI, CS, DA, IS) as str, without value conversion."""
    values = _raw_values(ds, keyword)
    return "\\".join(str(v).strip() for v in values) if values else ""


def _numbers(ds: Dataset | None, keyword: str, n: int) -> np.ndarray | None:
    return _vector(_raw_values(ds, keyword), n)


def _number(ds: Dataset | None, keyword: str, default: float) -> float:
    """The element's first value; *default* when absent or empty, NaN when present but not a number."""
    values = _raw_values(ds, keyword)
    return _float(values[0], float("nan")) if values and str(values[0]).strip() else default


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _vector(value, n: int) -> np.ndarray | None:
    values = _as_list(value)
    if len(values) != n:
        return None
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if np.all(np.isfinite(out)) else None


def _float(value, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _raw_int(ds: Dataset, keyword: str) -> int | None:
    values = _raw_values(ds, keyword)
    return _int_or_none(values[0]) if values else None


def _int_or_none(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None
