"""scan_folder: a verdict with the right reason for every shared series, and messy folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medfuse.errors import ScanError
from medfuse.io.dicom.index import scan_folder
from medfuse.io.dicom.series import mask_identifier
from medfuse.io.select import find_series

PET_CT = "volumes/tcia_CCTH-A01_pet_ct"


@pytest.fixture(scope="module")
def dicom_index(shared_data):
    return scan_folder(shared_data / "dicom")


def _series_in(index, folder: str):
    found = [s for s in index.series if any(folder in str(i.path) for i in s.instances)]
    assert found, folder
    return found


@pytest.mark.parametrize(
    "folder,dims",
    [
        ("d2n_mr_ge_anat/001", (256, 256, 4)),
        ("d2n_mr_siemens_anat/001", (256, 256, 4)),
        ("d2n_mr_philips_enhanced/001", (256, 256, 8)),
        ("d2n_mr_siemens_multiframe/001", (256, 256, 8)),
        ("ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22", (256, 256, 130)),
    ],
)
def test_clean_series_are_usable(dicom_index, folder, dims):
    (series,) = _series_in(dicom_index, folder)
    assert series.usable, series.reason
    assert series.dimensions == dims
    assert series.reason == ""


def test_gantry_tilt_is_refused_with_its_angle(dicom_index, shared_data):
    (series,) = _series_in(dicom_index, "d2n_ct_siemens_gantrytilt")
    # Independent estimate: the table moves along z while the image plane is
    # tilted, so the tilt is the angle between the plane normal and z.
    ds = pydicom.dcmread(series.instances[0].path, stop_before_pixels=True)
    iop = np.array(ds.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    expected = np.degrees(np.arccos(abs(normal[2]) / np.linalg.norm(normal)))
    assert expected == pytest.approx(14.0, abs=0.05)  # dcm2niix also reports 14 degrees
    assert not series.usable
    assert series.reason.startswith(f"gantry tilt {expected:.1f}°")
    assert series.tilt_deg == pytest.approx(expected, abs=0.05)


def test_inconsistent_slice_increment_is_refused_as_missing_slices(dicom_index):
    (series,) = _series_in(dicom_index, "d2n_ct_ge_sliceincrement")
    z = sorted(float(pydicom.dcmread(i.path, stop_before_pixels=True).ImagePositionPatient[2])
               for i in series.instances)
    gaps = np.diff(z)
    ratio = gaps.max() / np.median(gaps)
    assert ratio > 1.5  # the header really skips a slice
    assert not series.usable
    assert series.reason.startswith(f"missing slices: gap of {ratio:.1f} × spacing")


@pytest.mark.parametrize("folder", ["axasc35", "corasc35", "sagasc35"])
def test_siemens_mosaic_is_refused(dicom_index, folder):
    (series,) = _series_in(dicom_index, f"qa_siemens_orientation/{folder}")
    assert "MOSAIC" in series.instances[0].image_type
    assert series.reason.startswith("Siemens mosaic")


def test_orientation_labels(dicom_index):
    labels = {folder: _series_in(dicom_index, f"qa_siemens_orientation/{folder}")[0].orientation
              for folder in ("axasc35", "corasc35", "sagasc35")}
    assert labels == {"axasc35": "axial", "corasc35": "coronal", "sagasc35": "sagittal"}


def test_enhanced_fmri_is_4d(dicom_index):
    (series,) = _series_in(dicom_index, "enh_siemens_xa10_fmri")
    assert series.n_instances == 4 and series.n_frames == 24
    assert series.n_volumes == 4 and series.dimensions == (64, 64, 6)
    assert series.reason.startswith("4-D series: 4 volumes")


def test_every_shared_series_gets_a_verdict(dicom_index):
    folders = {p.parent for p in Path(dicom_index.root).rglob("*") if p.is_file()}
    covered = {i.path.parent for s in dicom_index.series for i in s.instances}
    assert folders == covered
    assert not dicom_index.skipped
    for series in dicom_index.series:
        assert series.usable or series.reason


@pytest.fixture(scope="module")
def pet_ct_index(shared_data):
    return scan_folder(shared_data / PET_CT)


def test_pet_ct_folder(pet_ct_index):
    by_modality = {s.modality: s for s in pet_ct_index.series}
    assert set(by_modality) == {"CT", "PT", "RWV", "RTSTRUCT"}
    assert by_modality["CT"].usable and by_modality["CT"].dimensions == (512, 512, 101)
    assert by_modality["PT"].usable and by_modality["PT"].dimensions == (128, 128, 234)
    assert by_modality["PT"].spacing[2] == pytest.approx(3.27, abs=1e-3)
    assert by_modality["RWV"].reason == "non-image SOP class (Real World Value Mapping Storage)"
    assert by_modality["RTSTRUCT"].reason == "non-image SOP class (RT Structure Set Storage)"


# --- synthetic messy folders, built from shared files ----------------------


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def _edited_copy(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


@pytest.fixture(scope="module")
def messy(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    patient_a = sorted((shared_data / "dicom/d2n_mr_siemens_anat/001").iterdir())
    patient_b = sorted((shared_data / "dicom/d2n_mr_ge_anat/001").iterdir())
    for path in patient_a:
        _edited_copy(path, root / "a" / path.name, PatientID="PAT-A-0001")
    for path in patient_b:
        _edited_copy(path, root / "b" / "deeper" / path.name, PatientID="PAT-B-0002")
    # A localizer: same series UID as patient A's, other orientation.
    _edited_copy(patient_a[0], root / "a" / "scout.dcm", PatientID="PAT-A-0001",
                 SOPInstanceUID=generate_uid(), ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    # A duplicate copy of a file under another name.
    (root / "a" / "copy.dcm").write_bytes((root / "a" / patient_a[1].name).read_bytes())
    # A truncated file (cut in its pixel data) and a text file.
    raw = sorted((shared_data / PET_CT / "CT_images").iterdir())[0].read_bytes()
    (root / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    (root / "notes.txt").write_text("scanned on Tuesday\n")
    # A DICOMDIR (media index).
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir = Dataset()
    dicomdir.file_meta = meta
    dicomdir.FileSetID = "MESSY"
    dicomdir.DirectoryRecordSequence = []
    dicomdir.save_as(root / "DICOMDIR", enforce_file_format=True)
    return root


def test_messy_folder_names_every_problem(messy):
    index = scan_folder(messy)
    skipped = {path.name: reason for path, reason in index.skipped}
    assert skipped["notes.txt"].startswith("not a DICOM file")
    assert skipped["truncated.dcm"].startswith("truncated DICOM: pixel data has")
    assert skipped["DICOMDIR"].startswith("DICOMDIR")
    duplicate = [name for name, reason in skipped.items() if reason.startswith("duplicate of")]
    assert len(duplicate) == 1
    assert len(index.studies) == 2
    assert {s.patient_id for s in index.studies} == {"PAT-A-0001", "PAT-B-0002"}
    a_series = [s for s in index.series if s.patient_id == "PAT-A-0001"]
    main = [s for s in a_series if s.usable]
    scout = [s for s in a_series if not s.usable]
    assert len(main) == 1 and main[0].dimensions == (256, 256, 4)
    assert main[0].notes == ("1 duplicate file(s) ignored",)
    assert main[0].split_rule == "orientation" and main[0].split_value == "sagittal"
    assert len(scout) == 1 and scout[0].reason == "localizer: orientation differs between slices"
    (b_series,) = [s for s in index.series if s.patient_id == "PAT-B-0002"]
    assert b_series.usable


def test_index_json_masks_patient_ids(messy):
    index = scan_folder(messy)
    text = json.dumps(index.to_dict())
    assert "PAT-A-0001" not in text and "********01" in text
    assert "PAT-A-0001" in json.dumps(index.to_dict(show_phi=True))


def test_mask_identifier():
    assert mask_identifier("PAT-A-0001") == "********01"
    assert mask_identifier("1234") == "****"
    assert mask_identifier("") == ""


def test_echoes_are_split_into_their_own_series(shared_data, tmp_path):
    for echo in (1, 2):
        for path in sorted((shared_data / "dicom/d2n_mr_siemens_anat/001").iterdir()):
            _edited_copy(path, tmp_path / f"e{echo}_{path.name}", SOPInstanceUID=generate_uid(),
                         EchoNumbers=echo)
    index = scan_folder(tmp_path)
    assert len({s.series_instance_uid for s in index.series}) == 1
    # Neither echo is taken silently: each part says what the series holds and how to pick it.
    assert [(s.split_rule, s.split_value, s.usable, s.needs_split_choice, s.dimensions[2])
            for s in index.series] == [("echo", "1", False, True, 4), ("echo", "2", False, True, 4)]
    assert index.series[0].reason == ("series split by echo into 2 parts: 1 (4 slices), 2 (4 slices); none is "
                                      "taken without a choice: read this one with --series '4:1'")
    chosen = find_series(index, "4:2")
    assert chosen.usable and chosen.split_value == "2" and chosen.dimensions[2] == 4


def test_missing_middle_slice_is_reported(shared_data, tmp_path):
    files = sorted((shared_data / "dicom/ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22").iterdir())
    kept = files[:60] + files[61:]
    for path in kept:
        _link(path, tmp_path / path.name)
    (series,) = scan_folder(tmp_path).series
    # Which file is in the middle of the stack depends on positions, not names.
    if series.usable:
        pytest.fail("a slice was removed but the series is still usable")
    assert series.reason.startswith("missing slices: gap of 2.0 × spacing")


def test_duplicate_positions_without_temporal_index_are_refused(shared_data, tmp_path):
    src = sorted((shared_data / "dicom/d2n_mr_siemens_anat/001").iterdir())
    for path in src:
        _link(path, tmp_path / path.name)
    _edited_copy(src[2], tmp_path / "again.dcm", SOPInstanceUID=generate_uid())
    (series,) = scan_folder(tmp_path).series
    assert series.reason.startswith("duplicate positions: 1 slice(s) share a position")


def test_missing_folder_is_a_scan_error(tmp_path):
    with pytest.raises(ScanError, match="no such file or folder"):
        scan_folder(tmp_path / "nope")


def test_multiframe_without_functional_groups_is_refused(shared_data, tmp_path):
    # Shaped like a classic NM multi-frame: frames share one top-level plane.
    ds = pydicom.dcmread(sorted((shared_data / "dicom/d2n_mr_siemens_anat/001").iterdir())[0])
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    ds.Modality = "NM"
    ds.save_as(tmp_path / "nm.dcm")
    (series,) = scan_folder(tmp_path).series
    assert series.reason == ("multi-frame Nuclear Medicine Image Storage without per-frame functional "
                             "groups is not supported")


@pytest.mark.parametrize("cut", [1, 2, 4096])
def test_file_cut_short_by_a_few_bytes_is_skipped(shared_data, tmp_path, cut):
    raw = sorted((shared_data / "dicom/d2n_mr_siemens_anat/001").iterdir())[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:-cut])
    index = scan_folder(tmp_path)
    assert not index.series
    ((path, reason),) = index.skipped
    assert reason == f"truncated DICOM: pixel data has {131072 - cut} of 131072 bytes"
