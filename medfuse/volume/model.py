"""The one volume type every layer above the core exchanges.

A :class:`Volume` is a SimpleITK image in LPS physical space (origin,
spacing, direction as DICOM and ITK define them) plus the DICOM references
the writer needs later to produce a correct derived series. NIfTI inputs have
no DICOM references; their ``references`` is ``None``.

Array convention: ``sitk.GetArrayFromImage(volume.image)`` is (z, y, x),
i.e. (slices, rows, columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk


@dataclass(frozen=True)
class InstanceReference:
    """One source SOP instance (a slice or a multi-frame object)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class SeriesReference:
    """What a derived series must cite and copy from one source series.

    Attributes
    ----------
    study_instance_uid, series_instance_uid, frame_of_reference_uid : str
        UIDs of the source. ``frame_of_reference_uid`` may be "" when absent.
    modality : str
        DICOM Modality of the source series (CT, MR, PT, NM, ...).
    sop_class_uid : str
        SOP Class of the source instances.
    instances : tuple of InstanceReference
        Every instance that contributed to the volume, in slice order.
    patient_study : dict
        Patient and General Study module attributes to copy into a derived
        series, keyed by DICOM keyword (PatientName, PatientID, StudyDate,
        AccessionNumber, SpecificCharacterSet, ...). Values are as pydicom
        returns them, converted to str.
    equipment : dict
        Source General Equipment (Manufacturer, ManufacturerModelName,
        SoftwareVersions, ...), keyed by keyword.
    series_number : int or None
    series_description : str
    extra : dict
        Anything else later stages need (e.g. RadiopharmaceuticalInformation
        facts for SUV, BodyPartExamined, PatientPosition), keyed by keyword.
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    instances: tuple[InstanceReference, ...]
    patient_study: dict = field(default_factory=dict)
    equipment: dict = field(default_factory=dict)
    series_number: int | None = None
    series_description: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Volume:
    """A 3-D scalar volume in LPS space with its provenance.

    Attributes
    ----------
    image : SimpleITK.Image
        3-D, scalar, pixel type float32 (rescale already applied: HU for CT,
        scanner units for MR, the stored units for PET such as Bq/ml).
    modality : str
        CT, MR, PT, NM, ... ("" when unknown, e.g. a bare NIfTI file).
    references : SeriesReference or None
        DICOM references (None for NIfTI input).
    source : pathlib.Path or None
        The folder or file the volume was read from.
    label : str
        Short human-readable name used in logs and reports
        (e.g. "CT 2.5MM STD (series 3)").
    """

    image: sitk.Image
    modality: str = ""
    references: SeriesReference | None = None
    source: Path | None = None
    label: str = ""

    @property
    def frame_of_reference_uid(self) -> str:
        return self.references.frame_of_reference_uid if self.references else ""

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.image.GetSize()
        return (z, y, x)


def as_float32(image: sitk.Image) -> sitk.Image:
    """*image* itself when its pixel type is float32, else a float32 copy.

    ``sitk.Cast`` copies even when the type already matches; a 512 x 512 x 200
    volume is 200 MB per needless copy.
    """
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
