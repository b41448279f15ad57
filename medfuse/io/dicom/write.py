"""Write a fused volume as a derived DICOM series that PACS and viewers accept.

The series follows the derived-series checklist of
``shared/reference/dicom-workflow-notes.md`` section 2:

* **Same patient, same study** as the anatomical reference (the first CT or MR
  source): Patient and General Study attributes are copied, StudyInstanceUID
  is reused; the series and every instance get new UIDs.
* **UIDs** come from :func:`pydicom.uid.generate_uid` under pydicom's root
  ``1.2.826.0.1.3680043.8.498.`` (:data:`UID_ROOT`). By default they are
  random; with ``uid_entropy`` they are derived from that string, so a job can
  make re-runs idempotent (same inputs + version + options -> same UIDs).
* **SOP class** of the anatomical reference: CT Image Storage or MR Image
  Storage, single-frame (never PET: fused values are not activity).
* **Geometry**: the fixed grid's FrameOfReferenceUID, per-slice
  ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
  SliceLocation; instances numbered in slice order (index z of the grid).
* **Pixels**: 16-bit allocated, 12 bits stored, MONOCHROME2, unsigned;
  stored value = round(4095 * clip(fused, 0, 1)) (:data:`STORED_MAX`), the same
  mapping for every slice. The fused image has no physical unit, so CT
  instances carry RescaleSlope 1, RescaleIntercept 0, RescaleType ``US``
  (unspecified); MR instances carry no rescale at all (the MR IOD has no
  Modality LUT module). WindowCenter/Width come from the 1st-99th percentile
  of the non-zero fused voxels of the whole volume, one window per series.
* **Provenance**: ImageType ``DERIVED\\SECONDARY\\AXIAL`` (CT) or ``...\\OTHER`` (MR); DerivationDescription;
  DerivationCodeSequence with the CID 7203 codes (113085, DCM, "Spatial
  resampling") and (113042, DCM, "Pixel by pixel addition") -- the fused
  image is a per-pixel weighted sum of the resampled sources' layers, and CID
  7203 has no "image fusion" code; SourceImageSequence (purpose 121322, DCM,
  "Source image for image processing operation") and ReferencedSeriesSequence
  (Common Instance Reference module) to the source instances each slice was
  derived from (``slice_sources``; default every instance of every DICOM source);
  ContributingEquipmentSequence naming medfuse (109102, DCM, "Processing
  Equipment") and each source's acquisition equipment (109101, DCM,
  "Acquisition Equipment"); SoftwareVersions; a condensed provenance text in
  ImageComments (the full record is the JSON sidecar written by the pipeline).
* **Colour** (:func:`write_colour_series`): an RGB Secondary Capture series with
  the same patient, study, references, UID rules and the Image Plane and Frame
  of Reference modules of the grey series (see its docstring).
* **Atomic**: files are written into a hidden temporary folder beside
  ``out_dir`` and renamed to ``out_dir`` only when every instance is written.
* **Encoding**: each file is byte for byte what ``pydicom.dcmwrite`` writes
  for the instance's dataset; :mod:`medfuse.io.dicom.instances` encodes what
  the instances share once per series and per slice only what differs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medfuse import __version__
from medfuse.errors import WriteError, os_error_reason
from medfuse.io.dicom.instances import SeriesEncoder, coded, ds_string, slice_parts
from medfuse.volume.model import SeriesReference

#: Root of every UID medfuse writes (pydicom's registered root for generated UIDs).
UID_ROOT = PYDICOM_ROOT_UID
#: Largest stored pixel value: fused 1.0 is written as 4095 (12 bits stored).
STORED_MAX = 4095
#: Fused series number = this offset + the anatomical reference's series number.
SERIES_NUMBER_OFFSET = 1000
#: Colour series number = this offset + the anatomical reference's series number.
COLOUR_SERIES_NUMBER_OFFSET = 2000
#: Longest ImageComments value (LT).
MAX_COMMENT_CHARS = 10240

_SOP_CLASS_BY_MODALITY = {"CT": CTImageStorage, "MR": MRImageStorage}
_PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "PatientWeight", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)
_TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName",
)
_EQUIPMENT_KEYWORDS = ("Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName",
                       "DeviceSerialNumber", "SoftwareVersions")


@dataclass(frozen=True)
class WrittenSeries:
    """What :func:`write_fused_series` wrote.

    Attributes
    ----------
    directory : Path
        Folder holding one file per slice, ``IM00001.dcm``... in slice order.
    study_instance_uid, series_instance_uid, frame_of_reference_uid, sop_class_uid : str
    sop_instance_uids : tuple of str
        In slice order.
    series_number : int
    series_description : str
    window : tuple of float or None
        (WindowCenter, WindowWidth) in stored values; None for a colour series.
    """

    directory: Path
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    series_number: int
    series_description: str
    window: tuple[float, float] | None


def anatomical_reference(sources: Sequence[SeriesReference | None]) -> SeriesReference:
    """The first CT or MR DICOM source: the series whose patient, study and SOP class the output takes.

    Raises
    ------
    WriteError
        When no source is a DICOM CT or MR series (e.g. NIfTI-only input).
    """
    for reference in sources:
        if reference is not None and reference.modality in _SOP_CLASS_BY_MODALITY:
            return reference
    raise WriteError("DICOM output needs a DICOM CT or MR source series to take patient, study and "
                     "SOP class from; none of the inputs is one (write --format nifti instead)")


def series_description(modalities: Sequence[str], *, colour: bool = False) -> str:
    """``FUSED CT+MR (medfuse 0.1.0)`` (``FUSED COLOUR CT+PT ...``) from the source modalities, in input order."""
    names = "+".join(m or "NIFTI" for m in modalities)
    return f"FUSED {'COLOUR ' if colour else ''}{names} (medfuse {__version__})"[:64]


def patient_orientation(geometry: sitk.Image) -> list[str]:
    """PatientOrientation (row, column directions) from the grid's direction, e.g. ``["L", "P"]`` for axial LPS.

    Each value lists the letters of the direction's non-negligible components,
    largest first (PS3.3 C.7.6.1.1.1): L/R for x, P/A for y, H/F for z.
    """
    direction = np.array(geometry.GetDirection()).reshape(3, 3)
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    values = []
    for column in (0, 1):
        cosines = direction[:, column]
        order = [axis for axis in np.argsort(-np.abs(cosines), kind="stable") if abs(cosines[axis]) > 1e-3]
        values.append("".join(letters[axis][0 if cosines[axis] > 0 else 1] for axis in order))
    return values


def stored_histogram(stored: np.ndarray) -> np.ndarray:
    """How many of *stored*'s values (any shape, uint16) are 0, 1, ... :data:`STORED_MAX`: int64 (STORED_MAX + 1,)."""
    return np.bincount(stored.ravel(), minlength=STORED_MAX + 1)


def display_window(histogram: np.ndarray) -> tuple[float, float]:
    """(center, width) covering the 1st-99th percentile of the non-zero stored values.

    Parameters
    ----------
    histogram : ndarray (N,) int64
        :func:`stored_histogram` of the series' stored values (summed over a
        strided subsample of its slices is enough).
    """
    if not histogram[1:].any():
        return (STORED_MAX / 2, float(STORED_MAX))
    # The non-zero values in sorted order, rebuilt from the histogram: np.percentile only reads
    # order statistics, so this is the window of the voxels themselves without sorting them.
    values = np.repeat(np.arange(len(histogram), dtype=np.uint16)[1:], histogram[1:])
    low, high = np.percentile(values, [1, 99])
    width = max(float(high - low), 1.0)
    return (float(low) + width / 2, width)


def to_stored(fused: np.ndarray) -> np.ndarray:
    """Fused float values in [0, 1] -> stored uint16 in [0, :data:`STORED_MAX`] (same shape)."""
    return np.rint(np.clip(fused, 0.0, 1.0) * STORED_MAX).astype(np.uint16)


def write_fused_series(
    fused: np.ndarray,
    geometry: sitk.Image,
    sources: Sequence[SeriesReference | None],
    out_dir: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    derivation_description: str = "",
    provenance_comment: str = "",
    content_datetime: datetime | None = None,
    uid_entropy: str | None = None,
    slice_sources: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> WrittenSeries:
    """Write *fused* as a new single-frame CT or MR series in the sources' study.

    Parameters
    ----------
    fused : ndarray (Z, Y, X) float32, or a sequence of Z (Y, X) arrays
        Fused intensities in [0, 1] on *geometry*'s grid (values outside are
        clipped). Slices are read one at a time (``fused[z]``), so a memory
        map or a sequence that reads each slice from a file is enough.
    geometry : SimpleITK.Image
        The fixed grid (origin, spacing, direction in LPS); size (X, Y, Z).
    sources : sequence of SeriesReference or None
        Every source series in input order (None for a NIfTI source, which
        cannot be cited). The first CT/MR one is the anatomical reference.
    out_dir : path
        Folder to create; it must not exist yet.
    modalities : sequence of str, optional
        Source modalities for SeriesDescription (default: from *sources*).
    derivation_description : str
        Free text (ST, at most 1024 characters) saying how the image was made.
    provenance_comment : str
        Condensed provenance stored in ImageComments (at most 10240 characters).
    content_datetime : datetime, optional
        Series/content date and time (default: now). Recorded by the caller.
    uid_entropy : str, optional
        When given, every UID is derived from it (deterministic re-runs), see
        :func:`derived_uid`.
    slice_sources : sequence of Z sequences of (source index, instance index), optional
        The source instances each fused slice was derived from (cited in that
        instance's SourceImageSequence and ReferencedSeriesSequence). Default:
        every instance of every DICOM source, in every slice (fine for small
        series; the pipeline passes the instances that overlap each slice).

    Returns
    -------
    WrittenSeries

    Raises
    ------
    WriteError
        Bad shapes, no CT/MR reference, an existing *out_dir*, or an I/O failure
        (then nothing is left behind).
    """
    out_dir = Path(out_dir)
    size_xyz = geometry.GetSize()
    shape = (len(fused), *np.shape(fused[0])) if len(fused) else (0,)
    if shape != (size_xyz[2], size_xyz[1], size_xyz[0]):
        raise WriteError(f"fused array shape {shape} does not match the fixed grid (z, y, x) = "
                         f"{(size_xyz[2], size_xyz[1], size_xyz[0])}")
    _check_common(out_dir, shape[0], derivation_description, provenance_comment, slice_sources)
    reference = anatomical_reference(sources)
    modalities = list(modalities) if modalities is not None else [s.modality if s else "" for s in sources]
    when = content_datetime or datetime.now()
    uid = _uid_maker(uid_entropy)
    series_uid = uid("series")
    stride = max(1, shape[0] // 64)
    window = display_window(sum(stored_histogram(to_stored(fused[z])) for z in range(0, shape[0], stride)))
    modality = reference.modality
    template = _series_template(
        reference, sources, geometry, series_uid, when, derivation_description or (
            f"Zero-learning two-scale fusion (Lahoud & Susstrunk) of {'+'.join(modalities)} "
            f"resampled onto the first series' grid, medfuse {__version__}"), provenance_comment,
        sop_class=_SOP_CLASS_BY_MODALITY[modality], modality=modality,
        series_number=SERIES_NUMBER_OFFSET + (reference.series_number or 0),
        description=series_description(modalities),
        # Value 3: CT's defined term for a cross-sectional image; MR defines none that fits.
        image_type=["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"],
    )
    _add_grey_attributes(template, modality, window)
    sop_uids = _write_instances(out_dir, template, geometry, sources, reference, slice_sources, uid,
                                lambda z: np.ascontiguousarray(to_stored(fused[z]), dtype="<u2").tobytes())
    return WrittenSeries(
        directory=out_dir,
        study_instance_uid=reference.study_instance_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=template.FrameOfReferenceUID,
        sop_class_uid=template.SOPClassUID,
        sop_instance_uids=tuple(sop_uids),
        series_number=int(template.SeriesNumber),
        series_description=template.SeriesDescription,
        window=window,
    )


def write_colour_series(
    rgb_slice: Callable[[int], np.ndarray],
    geometry: sitk.Image,
    sources: Sequence[SeriesReference | None],
    out_dir: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    derivation_description: str = "",
    provenance_comment: str = "",
    content_datetime: datetime | None = None,
    uid_entropy: str | None = None,
    slice_sources: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> WrittenSeries:
    """Write a colour fused volume as an RGB Secondary Capture series that keeps its 3-D geometry.

    One single-frame Secondary Capture Image Storage instance per slice, with the
    Image Plane and Frame of Reference modules (allowed, "U", in the SC Image
    IOD, PS3.3 A.8.1): the fixed grid's FrameOfReferenceUID and per-slice
    ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
    so viewers that read SC plane information place it like the grey series.
    Patient, study, references, contributing equipment and the UID rules are
    those of :func:`write_fused_series`; Modality ``OT``, ConversionType ``WSD``
    (workstation), ImageType ``DERIVED\\SECONDARY``, 8-bit RGB, PlanarConfiguration 0,
    SeriesNumber = :data:`COLOUR_SERIES_NUMBER_OFFSET` + the reference's.

    Parameters
    ----------
    rgb_slice : callable
        ``rgb_slice(z)`` returns slice z as an ndarray (Y, X, 3) uint8 (called
        once per slice, in order, so the volume need never be held in RGB).
    geometry : SimpleITK.Image
        The fixed grid (size X, Y, Z).
    sources, out_dir, modalities, provenance_comment, content_datetime, uid_entropy, slice_sources
        As for :func:`write_fused_series` (with ``uid_entropy`` the UIDs differ
        from the grey series' derived from the same string).
    derivation_description : str
        How the colours were made (at most 1024 characters).

    Returns
    -------
    WrittenSeries
        ``window`` is None.

    Raises
    ------
    WriteError
        A slice of the wrong shape or type, no CT/MR reference, an existing
        *out_dir*, or an I/O failure (then nothing is left behind).
    """
    out_dir = Path(out_dir)
    size_xyz = geometry.GetSize()
    _check_common(out_dir, size_xyz[2], derivation_description, provenance_comment, slice_sources)
    reference = anatomical_reference(sources)
    modalities = list(modalities) if modalities is not None else [s.modality if s else "" for s in sources]
    when = content_datetime or datetime.now()
    base_uid = _uid_maker(uid_entropy)

    def uid(*parts: str) -> str:
        return base_uid("colour", *parts)

    series_uid = uid("series")
    template = _series_template(
        reference, sources, geometry, series_uid, when, derivation_description or (
            f"Zero-learning fusion (Lahoud & Susstrunk) on luma of {'+'.join(modalities)}, functional "
            f"volume through a colour palette, resampled onto the first series' grid, medfuse {__version__}"),
        provenance_comment, sop_class=SecondaryCaptureImageStorage, modality="OT",
        series_number=COLOUR_SERIES_NUMBER_OFFSET + (reference.series_number or 0),
        description=series_description(modalities, colour=True), image_type=["DERIVED", "SECONDARY"],
    )
    template.ConversionType = "WSD"
    # Type 2C in General Image when the IOD does not require the Image Plane module (SC does not).
    template.PatientOrientation = patient_orientation(geometry)
    template.BurnedInAnnotation = "NO"
    template.SamplesPerPixel = 3
    template.PhotometricInterpretation = "RGB"
    template.PlanarConfiguration = 0
    template.BitsAllocated = 8
    template.BitsStored = 8
    template.HighBit = 7
    template.PixelRepresentation = 0
    shape = (size_xyz[1], size_xyz[0], 3)

    def pixel_bytes(z: int) -> bytes:
        rgb = np.asarray(rgb_slice(z))
        if rgb.shape != shape or rgb.dtype != np.uint8:
            raise WriteError(f"colour slice {z} is {rgb.dtype} {rgb.shape}, expected uint8 {shape}")
        data = np.ascontiguousarray(rgb).tobytes()
        return data + b"\0" if len(data) % 2 else data  # OB values have even length

    sop_uids = _write_instances(out_dir, template, geometry, sources, reference, slice_sources, uid, pixel_bytes)
    return WrittenSeries(
        directory=out_dir,
        study_instance_uid=reference.study_instance_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=template.FrameOfReferenceUID,
        sop_class_uid=template.SOPClassUID,
        sop_instance_uids=tuple(sop_uids),
        series_number=int(template.SeriesNumber),
        series_description=template.SeriesDescription,
        window=None,
    )


def _check_common(out_dir: Path, n_slices: int, derivation_description: str, provenance_comment: str,
                  slice_sources) -> None:
    if len(derivation_description) > 1024:
        raise WriteError("DerivationDescription longer than 1024 characters")
    if len(provenance_comment) > MAX_COMMENT_CHARS:
        raise WriteError(f"provenance comment longer than {MAX_COMMENT_CHARS} characters")
    if out_dir.exists():
        raise WriteError(f"output folder {out_dir} already exists; refusing to overwrite it")
    if slice_sources is not None and len(slice_sources) != n_slices:
        raise WriteError(f"slice_sources has {len(slice_sources)} entries for {n_slices} slices")


def derived_uid(uid_entropy: str, *parts: str) -> str:
    """The UID the writers derive from *uid_entropy* for one role (documented so callers can predict it).

    ``derived_uid(e, "series")`` is the grey series' SeriesInstanceUID,
    ``derived_uid(e, "instance", str(z))`` its instance of slice z (0-based);
    the colour series uses ``derived_uid(e, "colour", "series")`` and
    ``derived_uid(e, "colour", "instance", str(z))``. Each is
    :func:`pydicom.uid.generate_uid` under :data:`UID_ROOT` with the entropy
    source ``"|".join((uid_entropy, *parts))``.
    """
    return generate_uid(UID_ROOT, entropy_srcs=["|".join((uid_entropy, *parts))])


def _uid_maker(uid_entropy: str | None) -> Callable[..., str]:
    """``uid(*parts)``: random UIDs, or :func:`derived_uid` of *uid_entropy* and the parts."""
    def uid(*parts: str) -> str:
        if uid_entropy is None:
            return generate_uid(UID_ROOT)
        return derived_uid(uid_entropy, *parts)
    return uid


def _write_instances(out_dir: Path, template: Dataset, geometry: sitk.Image, sources, reference,
                     slice_sources, uid: Callable[..., str], pixel_bytes: Callable[[int], bytes]) -> list[str]:
    """Write one instance per slice into a staging folder, then rename it to *out_dir* (atomic)."""
    implementation_uid = generate_uid(UID_ROOT, entropy_srcs=[f"medfuse-implementation-{__version__}"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    every_instance = [(k, i) for k, s in enumerate(sources) if s is not None for i in range(len(s.instances))]
    encoder = SeriesEncoder(template, reference, sources)
    sop_uids = []
    try:
        for z in range(geometry.GetSize()[2]):
            sop_uid = uid("instance", str(z))
            cited = every_instance if slice_sources is None else slice_sources[z]
            parts = slice_parts(template, geometry, z, sop_uid, pixel_bytes(z), implementation_uid, cited)
            (staging / f"IM{z + 1:05d}.dcm").write_bytes(encoder.file_bytes(parts))
            sop_uids.append(sop_uid)
        os.replace(staging, out_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise WriteError(f"could not write the fused series to {out_dir}: {os_error_reason(exc)}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sop_uids


def _series_template(reference, sources, geometry, series_uid, when, derivation_description,
                     provenance_comment, *, sop_class, modality, series_number, description, image_type) -> Dataset:
    """Attributes shared by every instance of a series (dcentvfy checks they agree), any SOP class."""
    ds = Dataset()
    for keyword in _TYPE2_KEYWORDS:
        setattr(ds, keyword, "")
    for keyword in _PATIENT_STUDY_KEYWORDS:
        value = reference.patient_study.get(keyword)
        if value not in (None, ""):
            setattr(ds, keyword, value)
    if "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = reference.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
    for keyword in ("BodyPartExamined", "PatientPosition"):
        value = reference.extra.get(keyword)
        if value:
            setattr(ds, keyword, value)
    # Laterality is Type 2C (paired body parts): copied when the source has it;
    # present but empty when the body part is unknown (it may be paired).
    if reference.extra.get("Laterality"):
        ds.Laterality = reference.extra["Laterality"]
    elif not reference.extra.get("BodyPartExamined"):
        ds.Laterality = ""
    ds.FrameOfReferenceUID = reference.frame_of_reference_uid or generate_uid(
        UID_ROOT, entropy_srcs=[f"medfuse-frame-of-reference|{reference.series_instance_uid}"])
    ds.PositionReferenceIndicator = reference.extra.get("PositionReferenceIndicator", "")
    ds.Manufacturer = "medfuse"
    ds.ManufacturerModelName = "medfuse"
    ds.SoftwareVersions = __version__
    ds.ImageType = image_type
    ds.DerivationDescription = derivation_description
    ds.DerivationCodeSequence = [coded(codes.DCM.SpatialResampling), coded(codes.DCM.PixelByPixelAddition)]
    if provenance_comment:
        ds.ImageComments = provenance_comment
    direction = np.array(geometry.GetDirection()).reshape(3, 3)
    ds.ImageOrientationPatient = [ds_string(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [ds_string(geometry.GetSpacing()[1]), ds_string(geometry.GetSpacing()[0])]
    ds.SliceThickness = ds_string(geometry.GetSpacing()[2])
    ds.Rows, ds.Columns = geometry.GetSize()[1], geometry.GetSize()[0]
    cited = [s for s in sources if s is not None]
    ds.ContributingEquipmentSequence = [_medfuse_equipment(when)] + [
        _acquisition_equipment(s) for s in cited if s.equipment]
    return ds


def _add_grey_attributes(ds: Dataset, modality: str, window: tuple[float, float]) -> None:
    """The CT or MR image module's attributes and the 12-bit MONOCHROME2 pixel description."""
    ds.AcquisitionNumber = None
    if modality == "CT":
        ds.KVP = None
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    else:
        # A fused image was not acquired by any MR sequence: "RM" (research mode)
        # is the Type 1 value that claims the least.
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = None
        ds.MRAcquisitionType = None
        ds.EchoTime = None
        ds.EchoTrainLength = None
        ds.RepetitionTime = None
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ds_string(window[0])
    ds.WindowWidth = ds_string(window[1])
    ds.VOILUTFunction = "LINEAR"


def _medfuse_equipment(when: datetime) -> Dataset:
    item = Dataset()
    item.Manufacturer = "medfuse"
    item.ManufacturerModelName = "medfuse"
    item.SoftwareVersions = __version__
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = "Registration, resampling and zero-learning image fusion"
    item.PurposeOfReferenceCodeSequence = [coded(codes.DCM.ProcessingEquipment)]
    return item


def _acquisition_equipment(series: SeriesReference) -> Dataset:
    item = Dataset()
    for keyword in _EQUIPMENT_KEYWORDS:
        value = series.equipment.get(keyword)
        if value not in (None, ""):
            setattr(item, keyword, value)
    if "Manufacturer" not in item:
        item.Manufacturer = ""
    item.PurposeOfReferenceCodeSequence = [coded(codes.DCM.AcquisitionEquipment)]
    return item
