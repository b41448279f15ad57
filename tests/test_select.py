"""select_series on the PET/CT patient folder and on folders built to be ambiguous."""

from __future__ import annotations

import os

import pydicom
import pytest
from pydicom.uid import generate_uid

from medfuse.errors import SelectionError
from medfuse.io.dicom.index import scan_folder
from medfuse.io.select import find_series, select_series


@pytest.fixture(scope="module")
def pet_ct(shared_data):
    return scan_folder(shared_data / "volumes/tcia_CCTH-A01_pet_ct")


def test_default_is_anatomical_fixed_and_functional_moving(pet_ct):
    selection = select_series(pet_ct, None)
    assert (selection.fixed.modality, selection.moving.modality) == ("CT", "PT")
    assert selection.fixed.series_number == 3 and selection.moving.series_number == 7
    record = selection.to_dict()
    assert record["fixed"]["how"].startswith("largest axial series matching {'modality': 'CT'}")


def test_rules_by_modality_description_and_orientation(pet_ct):
    rules = {"fixed": {"modality": "pt", "description": r"fdg.*osem", "orientation": "axial"},
             "moving": "CT"}
    selection = select_series(pet_ct, rules)
    assert selection.fixed.series_number == 7 and selection.moving.series_number == 3
    with pytest.raises(SelectionError, match="no usable series for fixed"):
        select_series(pet_ct, {"fixed": {"modality": "CT", "orientation": "coronal"}, "moving": "PT"})


def test_overrides_by_number_and_uid(pet_ct):
    ct = find_series(pet_ct, 3)
    selection = select_series(pet_ct, None, fixed="7", moving=ct.series_instance_uid)
    assert selection.fixed.modality == "PT" and selection.moving is ct
    assert selection.how["moving"] == f"given by moving={ct.series_instance_uid}"


def test_override_naming_an_unusable_series_is_refused(pet_ct):
    with pytest.raises(SelectionError, match=r"not usable: non-image SOP class \(Real World Value"):
        select_series(pet_ct, None, fixed=1000, moving=7)
    with pytest.raises(SelectionError, match="no series with number or UID '42'"):
        select_series(pet_ct, None, fixed=42, moving=7)


@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_requested_unusable_series_gives_the_scans_reason_even_when_nothing_is_usable(shared_data, role):
    index = scan_folder(shared_data / "dicom/d2n_ct_siemens_gantrytilt")
    (tilted,) = index.series
    for key in (4, tilted.series_instance_uid):
        with pytest.raises(SelectionError) as excinfo:
            select_series(index, None, **{role: key})
        assert str(excinfo.value) == (f"{role} series {str(key)!r} ({tilted.label}) is not usable: "
                                      f"gantry tilt 14.0° (tilted stacks are not resampled yet)")


def test_split_series_none_usable_gives_each_parts_reason(shared_data, tmp_path):
    # The gantry-tilted CT with half of its slices shrunk to 8x8 under a new
    # UID and number: the scan splits it by image size, and each part is tilted.
    src = sorted(p for p in (shared_data / "dicom/d2n_ct_siemens_gantrytilt").rglob("*") if p.is_file())
    uid = generate_uid()
    picked = [(src[0], None), (src[1], None), (src[2], 8), (src[3], 8)]
    for n, (path, rows) in enumerate(picked):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesNumber = uid, generate_uid(), 77
        if rows:
            ds.Rows, ds.Columns = rows, rows
            ds.PixelData = bytes(rows * rows * ds.BitsAllocated // 8)
        ds.save_as(tmp_path / f"{n}.dcm")
    index = scan_folder(tmp_path)
    parts = [s for s in index.series if s.series_number == 77]
    assert len(parts) == 2 and not any(s.usable for s in parts)
    with pytest.raises(SelectionError) as excinfo:
        select_series(index, None, fixed=77)
    message = str(excinfo.value)
    assert message.startswith("series '77' is not usable: ")
    assert all(f"{s.label}: {s.reason}" in message for s in parts)


def test_missing_series_names_the_files_the_scan_skipped(shared_data, tmp_path):
    src = sorted((shared_data / "dicom/d2n_mr_siemens_anat/001").iterdir())[0]
    data = src.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    index = scan_folder(tmp_path)
    assert not index.series and len(index.skipped) == 1
    reason = index.skipped[0][1]
    with pytest.raises(SelectionError) as excinfo:
        select_series(index, None, fixed=4)
    assert str(excinfo.value) == (f"no series with number or UID '4'; series: (none); "
                                  f"1 file(s) skipped by the scan: {tmp_path / 'cut.dcm'}: {reason}")


def test_bad_rules_are_refused(pet_ct):
    with pytest.raises(SelectionError, match="orientation 'diagonal'"):
        select_series(pet_ct, {"fixed": {"orientation": "diagonal"}})
    with pytest.raises(SelectionError, match="unknown series rule key"):
        select_series(pet_ct, {"fixed": {"modaliti": "CT"}})


def _copy_as_new_series(src_dir, dst_dir, number):
    series_uid = generate_uid()
    dst_dir.mkdir()
    for path in sorted(src_dir.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesNumber = number
        ds.save_as(dst_dir / path.name)
    return series_uid


def test_two_equally_large_series_of_one_modality_pair_by_series_number(shared_data, tmp_path):
    src = shared_data / "dicom/d2n_mr_siemens_anat/001"
    os.symlink(src, tmp_path / "original")
    copy_uid = _copy_as_new_series(src, tmp_path / "copy", 99)
    index = scan_folder(tmp_path)
    for rules in (None, {"fixed": "MR", "moving": "MR"}):
        selection = select_series(index, rules)
        assert (selection.fixed.series_number, selection.moving.series_number) == (4, 99)
        assert selection.moving.series_instance_uid == copy_uid
        assert "lower series number" in selection.how["fixed"]
    selection = select_series(index, None, fixed=99)
    assert (selection.fixed.series_number, selection.moving.series_number) == (99, 4)


def test_more_than_two_series_for_one_rule_are_listed_not_guessed(shared_data, tmp_path):
    src = shared_data / "dicom/d2n_mr_siemens_anat/001"
    os.symlink(src, tmp_path / "original")
    uids = [_copy_as_new_series(src, tmp_path / f"copy{n}", n) for n in (98, 99)]
    index = scan_folder(tmp_path)
    for rules in (None, {"fixed": "MR", "moving": "MR"}):
        with pytest.raises(SelectionError) as excinfo:
            select_series(index, rules)
        message = str(excinfo.value)
        assert "ambiguous: 3 usable series match {'modality': 'MR'} for both fixed and moving" in message
        assert all(uid in message for uid in uids) and "#4 " in message
    # A given role leaves one series per size: the free role is the largest other one, ties still refused.
    with pytest.raises(SelectionError, match="ambiguous moving series: 2 equally large"):
        select_series(index, None, fixed=4)
    selection = select_series(index, None, fixed=4, moving=99)
    assert selection.moving.series_instance_uid == uids[1]


def test_sample_study_two_mr_contrasts_larger_series_is_fixed(repo_root):
    index = scan_folder(repo_root / "sample_studies/mr-phantom-two-contrasts")
    assert {s.modality for s in index.usable_series} == {"MR"}
    selection = select_series(index, None)
    # Series 1 is 128x128x65, series 2 128x128x43; both axial.
    assert (selection.fixed.series_number, selection.moving.series_number) == (1, 2)
    assert selection.how == {"fixed": "of the two usable series matching {'modality': 'MR'}, the larger one",
                             "moving": "the other usable series matching {'modality': 'MR'}"}
    assert select_series(index, {"fixed": "MR", "moving": "MR"}).fixed.series_number == 1
    # Distinct rules per role still work, and name the roles the other way round if asked.
    swapped = select_series(index, {"fixed": {"description": "synthetic"}, "moving": {"description": "MP-RAGE"}})
    assert (swapped.fixed.series_number, swapped.moving.series_number) == (2, 1)


def test_one_rule_needs_two_candidates(pet_ct):
    with pytest.raises(SelectionError, match="only 1 usable series"):
        select_series(pet_ct, {"fixed": "PT", "moving": "PT"})


def test_two_patients_are_never_paired(shared_data, tmp_path):
    os.symlink(shared_data / "dicom/d2n_mr_siemens_anat/001", tmp_path / "mr")
    os.symlink(shared_data / "volumes/tcia_CCTH-A01_pet_ct/PET_images", tmp_path / "pet")
    index = scan_folder(tmp_path)
    with pytest.raises(SelectionError, match="folder holds 2 patients"):
        select_series(index, None)
    with pytest.raises(SelectionError, match="different patients"):
        select_series(index, {"fixed": "MR", "moving": "PT"})


def test_one_override_picks_the_other_role_among_other_modalities(pet_ct):
    selection = select_series(pet_ct, None, moving=7)
    assert selection.fixed.modality == "CT" and selection.moving.modality == "PT"
    selection = select_series(pet_ct, None, fixed=7)
    assert selection.moving.modality == "CT"
