"""The instances of a derived series: each slice's dataset, and its file bytes encoded cheaply.

Every instance of a series shares most of its elements (the series template:
patient, study, series, equipment, derivation, plane orientation, pixel
description) and, slice after slice, cites many of the same source instances.
:class:`SeriesEncoder` therefore encodes with pydicom's own element encoder
(:func:`pydicom.filewriter.write_data_element`, Explicit VR Little Endian):

* each template element **once per series**;
* each cited source instance's SourceImageSequence item **once per series**
  (:func:`pydicom.filewriter.write_sequence_item`); a slice's
  SourceImageSequence is then a raw SQ element whose value is the join of its
  items' bytes, which ``write_data_element`` writes with the same header and
  defined length as it writes the sequence of item datasets;
* a slice's citations (SourceImageSequence, Common Instance Reference
  sequences) once for each run of slices citing the same instances (by
  default every slice cites every instance of every source);
* per slice only the slice's own elements (SOP Instance UID, Instance Number,
  Image Position, Slice Location, Pixel Data) and the File Meta Information
  (:func:`pydicom.filewriter.write_file_meta_info`).

The element bytes are joined in tag order after the 128-byte preamble and
``DICM``, which is what :func:`pydicom.filewriter.dcmwrite` with
``enforce_file_format=True`` does with the full dataset
(:meth:`SeriesEncoder.dataset`); ``tests/test_dicom_write.py`` checks that the
two give identical bytes. Timings: docs/fuse-study.md, tenth round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from highdicom.sr import CodedConcept
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    correct_ambiguous_vr_element,
    write_data_element,
    write_file_meta_info,
    write_sequence_item,
)
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from medfuse import __version__
from medfuse.volume.model import SeriesReference

_SOURCE_IMAGE_SEQUENCE = Tag("SourceImageSequence")
#: What :func:`pydicom.filewriter.dcmwrite` writes before the File Meta Information (enforce_file_format).
_PREAMBLE = b"\0" * 128 + b"DICM"


def ds_string(value: float) -> str:
    """*value* as the most precise DS string of at most 16 characters."""
    return format_number_as_ds(float(value))


def coded(code) -> CodedConcept:
    """A pydicom ``codes`` entry as a code sequence item."""
    return CodedConcept(code.value, code.scheme_designator, code.meaning)


@dataclass(frozen=True)
class SliceParts:
    """What one instance adds to its series template.

    Attributes
    ----------
    meta : FileMetaDataset
        File Meta Information (Explicit VR Little Endian).
    own : Dataset
        The slice's elements: SOPInstanceUID, InstanceNumber, ImagePositionPatient,
        SliceLocation, PixelData.
    cited : tuple of (source index, instance index)
        Source instances it was derived from, in citation order (its
        SourceImageSequence and Common Instance Reference sequences).
    """

    meta: FileMetaDataset
    own: Dataset
    cited: tuple[tuple[int, int], ...]


def slice_parts(template: Dataset, geometry: sitk.Image, z: int, sop_uid: str, pixel_data: bytes,
                implementation_uid: str, cited: Sequence[tuple[int, int]]) -> SliceParts:
    """Slice *z*'s File Meta Information, own elements and cited instances.

    Parameters
    ----------
    template : Dataset
        The series template (for the SOP class).
    geometry : SimpleITK.Image
        The fixed grid; slice *z*'s position comes from it.
    pixel_data : bytes
        The slice's encoded pixels (Rows x Columns x samples, little endian).
    cited : sequence of (source index, instance index)
        The source instances slice *z* was derived from.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = template.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = implementation_uid
    meta.ImplementationVersionName = f"MEDFUSE_{__version__}"[:16]
    own = Dataset()
    own.SOPInstanceUID = sop_uid
    own.InstanceNumber = z + 1
    position = geometry.TransformIndexToPhysicalPoint((0, 0, z))
    normal = np.cross(*np.array(geometry.GetDirection()).reshape(3, 3).T[:2])
    own.ImagePositionPatient = [ds_string(v) for v in position]
    own.SliceLocation = ds_string(float(np.dot(normal, position)))
    own.PixelData = pixel_data
    return SliceParts(meta, own, tuple(cited))


class SeriesEncoder:
    """File bytes of a series' instances, the shared parts encoded once.

    Parameters
    ----------
    template : Dataset
        Elements shared by every instance; it must not change while in use.
    reference : SeriesReference
        The anatomical reference (its study decides where a cited series is listed).
    sources : sequence of SeriesReference or None
        The sources that :class:`SliceParts` ``cited`` indexes.
    """

    def __init__(self, template: Dataset, reference: SeriesReference,
                 sources: Sequence[SeriesReference | None]) -> None:
        self._template = template
        self._reference = reference
        self._sources = sources
        # write_dataset encodes a dataset's text with its SpecificCharacterSet, nested items inheriting it.
        self._encodings = template.get("SpecificCharacterSet", "iso8859")
        self._template_bytes = {tag: self._element_bytes(template.get_item(tag)) for tag in template.keys()}
        self._source_item_bytes: dict[tuple[int, int], bytes] = {}
        self._last_citation: tuple[tuple[tuple[int, int], ...], dict[BaseTag, bytes]] | None = None

    def dataset(self, parts: SliceParts) -> Dataset:
        """The instance as one dataset (with ``file_meta``): what :meth:`file_bytes` encodes.

        ``pydicom.dcmwrite(path, dataset, enforce_file_format=True)`` writes the
        same bytes as :meth:`file_bytes` (the tests' reference).
        """
        ds = Dataset()
        ds.update(self._template)
        ds.update(parts.own)
        ds.SourceImageSequence = [_source_item(self._sources[k].instances[i]) for k, i in parts.cited]
        _add_common_instance_references(ds, self._reference, self._sources, parts.cited)
        ds.file_meta = parts.meta
        return ds

    def file_bytes(self, parts: SliceParts) -> bytes:
        """The DICOM file of one instance (preamble, File Meta Information, data set)."""
        meta = DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        write_file_meta_info(meta, parts.meta, enforce_standard=True)
        elements = dict(self._template_bytes)
        elements.update((tag, self._element_bytes(parts.own.get_item(tag))) for tag in parts.own.keys())
        elements.update(self._citation_elements(parts.cited))
        return b"".join([_PREAMBLE, meta.getvalue(), *(elements[tag] for tag in sorted(elements))])

    def _citation_elements(self, cited: tuple[tuple[int, int], ...]) -> dict[BaseTag, bytes]:
        """SourceImageSequence and the Common Instance Reference sequences of *cited*, encoded.

        The previous slice's are reused when it cited the same instances (by
        default every slice cites every instance of every source).
        """
        if self._last_citation is None or self._last_citation[0] != cited:
            items = b"".join(self._source_item(key) for key in cited)
            elements = {_SOURCE_IMAGE_SEQUENCE: self._element_bytes(
                RawDataElement(_SOURCE_IMAGE_SEQUENCE, "SQ", len(items), items, 0, False, True))}
            references = Dataset()
            _add_common_instance_references(references, self._reference, self._sources, cited)
            elements.update((tag, self._element_bytes(references.get_item(tag))) for tag in references.keys())
            self._last_citation = (cited, elements)
        return self._last_citation[1]

    def _source_item(self, key: tuple[int, int]) -> bytes:
        """One SourceImageSequence item (tag, length, item data set), encoded on first use."""
        if key not in self._source_item_bytes:
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, False
            k, i = key
            write_sequence_item(fp, _source_item(self._sources[k].instances[i]), self._encodings)
            self._source_item_bytes[key] = fp.getvalue()
        return self._source_item_bytes[key]

    def _element_bytes(self, element: DataElement | RawDataElement) -> bytes:
        """One top-level element as write_dataset encodes it (ambiguous VRs such as PixelData's resolved)."""
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        # The template holds BitsAllocated etc., which decide an ambiguous VR (PixelData: OW above 8 bits).
        write_data_element(fp, correct_ambiguous_vr_element(element, self._template, True), self._encodings)
        return fp.getvalue()


def _source_item(instance) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = instance.sop_class_uid
    item.ReferencedSOPInstanceUID = instance.sop_instance_uid
    item.PurposeOfReferenceCodeSequence = [coded(codes.DCM.SourceImageForImageProcessingOperation)]
    return item


def _series_item(series: SeriesReference, instance_indices: list[int]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series.series_instance_uid
    instances = []
    for index in instance_indices:
        ref = Dataset()
        ref.ReferencedSOPClassUID = series.instances[index].sop_class_uid
        ref.ReferencedSOPInstanceUID = series.instances[index].sop_instance_uid
        instances.append(ref)
    item.ReferencedInstanceSequence = instances
    return item


def _add_common_instance_references(ds: Dataset, reference: SeriesReference, sources,
                                    cited: Sequence[tuple[int, int]]) -> None:
    """The Common Instance Reference module for the cited instances.

    Instances of the reference's study go in ReferencedSeriesSequence, those of
    other studies in StudiesContainingOtherReferencedInstancesSequence.
    """
    by_series: dict[int, list[int]] = {}
    for source_index, instance_index in cited:
        by_series.setdefault(source_index, []).append(instance_index)
    same_study = [k for k in by_series if sources[k].study_instance_uid == reference.study_instance_uid]
    if same_study:
        ds.ReferencedSeriesSequence = [_series_item(sources[k], by_series[k]) for k in same_study]
    other_studies: dict[str, list[int]] = {}
    for k in by_series:
        if k not in same_study:
            other_studies.setdefault(sources[k].study_instance_uid, []).append(k)
    if other_studies:
        items = []
        for study_uid, series_indices in other_studies.items():
            item = Dataset()
            item.StudyInstanceUID = study_uid
            item.ReferencedSeriesSequence = [_series_item(sources[k], by_series[k]) for k in series_indices]
            items.append(item)
        ds.StudiesContainingOtherReferencedInstancesSequence = items
