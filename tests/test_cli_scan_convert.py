"""`medfuse scan` and `medfuse convert` as a user runs them: output, exit codes, files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medfuse.cli.app import main

PET_CT = "volumes/tcia_CCTH-A01_pet_ct"


def test_scan_table_masks_patient_id_by_default(shared_data, tmp_path, capsys):
    # Under a neutral name: the shared folder's own name contains the patient ID.
    folder = tmp_path / "study"
    folder.symlink_to(shared_data / PET_CT)
    assert main(["scan", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "******01" in out and "CCTH-A01" not in out
    assert "non-image SOP class" in out and "usable" in out
    assert main(["scan", "--show-phi", str(folder)]) == 0
    assert "CCTH-A01" in capsys.readouterr().out


def test_scan_json(shared_data, capsys):
    assert main(["scan", "--json", str(shared_data / "dicom")]) == 0
    data = json.loads(capsys.readouterr().out)
    series = [s for study in data["studies"] for s in study["series"]]
    assert len(series) == 11
    tilt = [s for s in series if "gantry tilt" in s["reason"]]
    assert len(tilt) == 1 and tilt[0]["usable"] is False
    assert all("*" in s["patient_id"] for s in series if s["patient_id"])


def test_scan_of_a_folder_without_dicom_fails_with_exit_3(tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("hello")
    assert main(["scan", str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert "readme.txt: not a DICOM file" in captured.out
    assert "medfuse: error:" in captured.err and "no DICOM series found" in captured.err
    assert "Traceback" not in captured.err


def test_convert_dicom_series(shared_data, tmp_path, capsys):
    out = tmp_path / "mr.nii.gz"
    assert main(["convert", str(shared_data / "dicom/d2n_mr_siemens_anat/001"), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    img = nib.load(str(out))
    assert img.shape == (256, 256, 4) and img.get_data_dtype() == np.float32
    # An existing output is never replaced silently.
    assert main(["convert", str(shared_data / "dicom/d2n_mr_siemens_anat/001"), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(shared_data / "dicom/d2n_mr_siemens_anat/001"), "-o", str(out),
                 "--overwrite"]) == 0


def test_convert_refuses_tilt_without_writing(shared_data, tmp_path, capsys):
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(shared_data / "dicom/d2n_ct_siemens_gantrytilt/001"), "-o", str(out)]) == 3
    assert "gantry tilt 14.0°" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_convert_4d_needs_volume_index(shared_data, tmp_path, capsys):
    src = str(shared_data / "dicom/enh_siemens_xa10_fmri/XA10")
    assert main(["convert", src, "-o", str(tmp_path / "a.nii")]) == 3
    assert "--volume-index" in capsys.readouterr().err
    assert main(["convert", src, "-o", str(tmp_path / "a.nii"), "--volume-index", "1"]) == 0
    assert nib.load(str(tmp_path / "a.nii")).shape == (64, 64, 6)


@pytest.mark.slow
def test_convert_picks_a_series_from_a_patient_folder(shared_data, tmp_path, capsys):
    out = tmp_path / "pet.nii.gz"
    assert main(["convert", str(shared_data / PET_CT), "-o", str(out)]) == 3
    assert "pick one (--series NUMBER|UID)" in capsys.readouterr().err
    assert main(["convert", str(shared_data / PET_CT), "-o", str(out), "--series", "7"]) == 0
    assert nib.load(str(out)).shape == (128, 128, 234)


def test_convert_nifti_reports_and_replaces_non_finite(tmp_path, capsys):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    src = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(src))
    out = tmp_path / "out.nii"
    assert main(["convert", str(src), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 non-finite voxel(s) replaced: 1 NaN and 0 -Inf -> 1, 1 +Inf -> 1" in err
    assert np.isfinite(nib.load(str(out)).get_fdata()).all()


@pytest.mark.parametrize("output", ["out.mha", "out.nii.gz.tmp"])
def test_convert_refuses_non_nifti_output(shared_data, tmp_path, capsys, output):
    assert main(["convert", str(shared_data / "dicom/d2n_mr_siemens_anat/001"), "-o", str(tmp_path / output)]) == 2
    assert "must end in .nii or .nii.gz" in capsys.readouterr().err
