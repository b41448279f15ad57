"""The derived-series writer: valid DICOM, right geometry, right references."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medfuse.errors import WriteError
from medfuse.io.dicom.instances import SeriesEncoder
from medfuse.io.dicom.write import (
    STORED_MAX,
    display_window,
    stored_histogram,
    to_stored,
    write_colour_series,
    write_fused_series,
)
from medfuse.volume.model import InstanceReference, SeriesReference

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
WHEN = datetime(2026, 1, 2, 3, 4, 5)


def _reference(folder: Path) -> SeriesReference:
    """A SeriesReference from the headers (independent of medfuse's reader)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("*.dcm"))]
    first = headers[0]
    return SeriesReference(
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
        frame_of_reference_uid=first.FrameOfReferenceUID,
        modality=first.Modality,
        sop_class_uid=first.SOPClassUID,
        instances=tuple(InstanceReference(h.SOPClassUID, h.SOPInstanceUID) for h in headers),
        patient_study={k: str(first.get(k)) for k in ("PatientName", "PatientID", "StudyDate", "StudyTime",
                                                      "StudyID", "SpecificCharacterSet") if k in first},
        equipment={k: str(first.get(k)) for k in ("Manufacturer", "ManufacturerModelName")},
        series_number=int(first.SeriesNumber),
        series_description=str(first.SeriesDescription),
        extra={"PatientPosition": first.PatientPosition, "BodyPartExamined": first.BodyPartExamined},
    )


def _read_sitk(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def sources():
    return _reference(SAMPLE / "series1_t1"), _reference(SAMPLE / "series2_synthetic_contrast")


@pytest.fixture(scope="module")
def fixed_image():
    return _read_sitk(SAMPLE / "series1_t1")


@pytest.fixture(scope="module")
def unit_array(fixed_image):
    array = sitk.GetArrayFromImage(fixed_image).astype(np.float32)
    return np.clip(array / np.percentile(array, 99.5), 0, 1)


@pytest.fixture(scope="module")
def written(tmp_path_factory, unit_array, fixed_image, sources):
    out = tmp_path_factory.mktemp("write") / "fused"
    return write_fused_series(unit_array, fixed_image, sources, out, content_datetime=WHEN,
                              provenance_comment='{"medfuse": "test"}')


def test_series_attributes_follow_the_checklist(written, sources):
    t1, synthetic = sources
    files = sorted(written.directory.glob("*.dcm"))
    assert len(files) == len(t1.instances)
    first = pydicom.dcmread(files[0])
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    assert first.StudyInstanceUID == t1.study_instance_uid
    assert first.PatientID == t1.patient_study["PatientID"]
    assert first.SeriesInstanceUID not in (t1.series_instance_uid, synthetic.series_instance_uid)
    assert first.FrameOfReferenceUID == t1.frame_of_reference_uid
    assert list(first.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription == "FUSED MR+MR (medfuse 0.1.0)"
    assert first.SeriesNumber == 1000 + t1.series_number
    assert "RescaleSlope" not in first  # MR has no Modality LUT module
    assert first.BitsAllocated == 16 and first.PhotometricInterpretation == "MONOCHROME2"
    assert {c.CodeValue for c in first.DerivationCodeSequence} == {"113085", "113042"}
    assert first.ContributingEquipmentSequence[0].Manufacturer == "medfuse"
    cited = {item.ReferencedSOPInstanceUID for item in first.SourceImageSequence}
    inputs = {i.sop_instance_uid for s in sources for i in s.instances}
    assert cited == inputs
    referenced_series = {item.SeriesInstanceUID for item in first.ReferencedSeriesSequence}
    assert referenced_series == {t1.series_instance_uid, synthetic.series_instance_uid}
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}) == len(files)


def test_pixels_round_trip_with_one_mapping(written, unit_array):
    stored = np.stack([pydicom.dcmread(f).pixel_array for f in sorted(written.directory.glob("*.dcm"))])
    assert stored.max() <= STORED_MAX
    np.testing.assert_allclose(stored / STORED_MAX, unit_array, atol=0.5 / STORED_MAX + 1e-6)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy, dcentvfy) not installed")
def test_dciodvfy_and_dcentvfy_are_clean(written):
    files = sorted(written.directory.glob("*.dcm"))
    for path in (files[0], files[len(files) // 2], files[-1]):
        result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors
    result = subprocess.run(["dcentvfy", *map(str, files)], capture_output=True, text=True)
    assert not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_simpleitk_reads_back_the_fixed_geometry(written, fixed_image):
    image = _read_sitk(written.directory)
    assert image.GetSize() == fixed_image.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), fixed_image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing(), fixed_image.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), fixed_image.GetDirection(), atol=1e-4)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
def test_dcm2niix_reads_back_the_fixed_geometry(written, fixed_image, tmp_path):
    subprocess.run(["dcm2niix", "-z", "n", "-o", str(tmp_path), "-f", "fused", str(written.directory)],
                   check=True, capture_output=True)
    affine_ras = nib.load(tmp_path / "fused.nii").affine
    # The fixed grid's voxel-to-LPS affine, then LPS -> RAS (negate x and y).
    direction = np.array(fixed_image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(fixed_image.GetSpacing())
    lps[:3, 3] = fixed_image.GetOrigin()
    expected = np.diag([-1, -1, 1, 1]) @ lps
    # dcm2niix may flip the row axis (NIfTI convention); compare world positions of the corners.
    shape = fixed_image.GetSize()
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float)
    got = {tuple(np.round((affine_ras @ c)[:3], 2)) for c in corners}
    want = {tuple(np.round((expected @ c)[:3], 2)) for c in corners}
    assert max(min(np.abs(np.subtract(g, w)).max() for w in want) for g in got) < 1e-2
    assert np.allclose(sorted(np.linalg.norm(affine_ras[:3, :3], axis=0)), sorted(fixed_image.GetSpacing()), atol=1e-3)


def test_ct_reference_gets_ct_class_and_one_rescale(tmp_path, unit_array, fixed_image, sources):
    ct = dataclasses.replace(sources[0], modality="CT", sop_class_uid=pydicom.uid.CTImageStorage)
    written = write_fused_series(unit_array[:3], _first_slices(fixed_image, 3), [ct, sources[1]],
                                 tmp_path / "ct", content_datetime=WHEN)
    datasets = [pydicom.dcmread(f) for f in sorted(written.directory.glob("*.dcm"))]
    assert {d.SOPClassUID for d in datasets} == {pydicom.uid.CTImageStorage}
    assert {(d.RescaleSlope, d.RescaleIntercept, d.RescaleType) for d in datasets} == {(1, 0, "US")}
    assert written.series_description == "FUSED CT+MR (medfuse 0.1.0)"


def test_same_entropy_gives_byte_identical_files(tmp_path, unit_array, fixed_image, sources):
    grid = _first_slices(fixed_image, 4)
    runs = [write_fused_series(unit_array[:4], grid, sources, tmp_path / name, content_datetime=WHEN,
                               uid_entropy="inputs+options") for name in ("a", "b")]
    for left, right in zip(*(sorted(r.directory.glob("*.dcm")) for r in runs)):
        assert left.read_bytes() == right.read_bytes()


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("every_instance", [False, True])
def test_encoded_files_equal_dcmwrite_of_the_full_datasets(tmp_path, monkeypatch, unit_array, fixed_image, sources,
                                                           colour, every_instance):
    """The shared-parts encoder writes, byte for byte, what pydicom's dcmwrite writes for each whole dataset."""
    grid = _first_slices(fixed_image, 4)
    # Another study's source exercises StudiesContainingOtherReferencedInstancesSequence; slice 1 cites what
    # slice 0 does (encoded citations reused), slice 2 nothing. By default every slice cites every instance.
    other_study_uid = pydicom.uid.generate_uid(entropy_srcs=["other study"])
    other_study = dataclasses.replace(sources[1], study_instance_uid=other_study_uid)
    cited = None if every_instance else [[(0, 0), (1, 0), (1, 1)], [(0, 0), (1, 0), (1, 1)], [],
                                         [(1, 3), (0, 3), (0, 2)]]

    def write(out: Path) -> list[Path]:
        options = dict(content_datetime=WHEN, uid_entropy="encoder", slice_sources=cited,
                       provenance_comment='{"medfuse": "t\u00e9st \u00e9"}')
        if colour:
            rgb = (np.stack([unit_array[:4]] * 3, axis=-1) * 255).astype(np.uint8)
            written = write_colour_series(lambda z: rgb[z], grid, [sources[0], other_study], out, **options)
        else:
            written = write_fused_series(unit_array[:4], grid, [sources[0], other_study], out, **options)
        return sorted(written.directory.glob("*.dcm"))

    encoded = write(tmp_path / "encoded")

    def dcmwrite_bytes(encoder: SeriesEncoder, parts) -> bytes:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, encoder.dataset(parts), enforce_file_format=True)
        return buffer.getvalue()

    monkeypatch.setattr(SeriesEncoder, "file_bytes", dcmwrite_bytes)
    reference = write(tmp_path / "reference")
    names = [f"IM0000{z}.dcm" for z in range(1, 5)]
    assert [p.name for p in encoded] == [p.name for p in reference] == names
    for left, right in zip(encoded, reference):
        assert left.read_bytes() == right.read_bytes(), left.name
    if every_instance:
        return
    third = pydicom.dcmread(encoded[2])
    assert len(third.SourceImageSequence) == 0 and "ReferencedSeriesSequence" not in third
    last = pydicom.dcmread(encoded[3])
    assert [i.ReferencedSOPInstanceUID for i in last.SourceImageSequence] == [
        sources[1].instances[3].sop_instance_uid, sources[0].instances[3].sop_instance_uid,
        sources[0].instances[2].sop_instance_uid]
    assert len(last.StudiesContainingOtherReferencedInstancesSequence) == 1


@pytest.mark.parametrize("kind", ["uniform", "sparse", "cubed", "constant", "zeros"])
def test_window_from_the_histogram_equals_percentiles_of_the_voxels(kind):
    rng = np.random.default_rng(7)
    fused = {"uniform": rng.random((3, 64, 64)), "sparse": np.where(rng.random((3, 64, 64)) > 0.95, 0.2, 0.0),
             "cubed": rng.random((3, 64, 64)) ** 3, "constant": np.full((3, 64, 64), 0.5),
             "zeros": np.zeros((3, 64, 64))}[kind]
    stored = to_stored(fused.astype(np.float32))
    values = stored[stored > 0]
    if values.size:
        low, high = np.percentile(values, [1, 99])
        width = max(float(high - low), 1.0)
        expected = (float(low) + width / 2, width)
    else:
        expected = (STORED_MAX / 2, float(STORED_MAX))
    assert display_window(stored_histogram(stored)) == expected


def test_bad_input_raises_and_leaves_nothing(tmp_path, unit_array, fixed_image, sources):
    with pytest.raises(WriteError, match="does not match the fixed grid"):
        write_fused_series(unit_array[:, :10], fixed_image, sources, tmp_path / "bad")
    with pytest.raises(WriteError, match="CT or MR"):
        write_fused_series(unit_array, fixed_image, [None, None], tmp_path / "bad")
    (tmp_path / "exists").mkdir()
    with pytest.raises(WriteError, match="already exists"):
        write_fused_series(unit_array, fixed_image, sources, tmp_path / "exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def _first_slices(image: sitk.Image, count: int) -> sitk.Image:
    return image[:, :, :count]
