"""``medfuse register``: outputs, re-applying a saved transform, and clear errors (issue 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medfuse.cli.app import main

TCGA = "volumes/tcia_TCGA-FG-6692_t1_t1c_t2_flair"
T1 = f"{TCGA}/T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz"
T2 = f"{TCGA}/MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz"


@pytest.fixture(scope="module")
def registered(shared_data, tmp_path_factory):
    """One real registration T1 <- T2 (oblique grid), with every output."""
    out = tmp_path_factory.mktemp("register")
    argv = [
        "register", str(shared_data / T1), str(shared_data / T2), "-o", str(out / "t2_on_t1.nii.gz"),
        "--transform", str(out / "t2_to_t1.tfm"), "--overlay", str(out / "overlay.png"),
        "--coverage", str(out / "coverage.nii.gz"), "--json",
    ]
    return out, argv


def test_register_writes_every_output_and_a_json_report(registered, capsys, shared_data):
    out, argv = registered
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["optimised"] is True
    assert report["metric_after"] < report["metric_before"]
    assert report["transform"]["type"] == "Euler3DTransform"
    assert len(report["levels"]) == 3 and all(level["seconds"] > 0 for level in report["levels"])
    assert set(report["outputs"]) == {"moved", "transform", "coverage", "overlay"}

    fixed = sitk.ReadImage(str(shared_data / T1))
    moved = sitk.ReadImage(str(out / "t2_on_t1.nii.gz"))
    assert moved.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(moved.GetOrigin(), fixed.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(moved.GetDirection(), fixed.GetDirection(), atol=1e-5)
    coverage = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "coverage.nii.gz")))
    assert set(np.unique(coverage)) <= {0, 1} and 0.3 < coverage.mean() < 1.0
    overlay = sitk.ReadImage(str(out / "overlay.png"))
    assert overlay.GetNumberOfComponentsPerPixel() == 3
    assert "Euler3DTransform" in (out / "t2_to_t1.tfm").read_text()


def test_transform_in_reapplies_the_saved_transform(registered, capsys, shared_data):
    out, argv = registered
    if not (out / "t2_to_t1.tfm").exists():
        assert main(argv) == 0
        capsys.readouterr()
    again = out / "again.nii.gz"
    code = main([
        "register", str(shared_data / T1), str(shared_data / T2), "-o", str(again),
        "--transform-in", str(out / "t2_to_t1.tfm"),
    ])
    text = capsys.readouterr().out
    assert code == 0
    assert "no optimisation: transform given" in text
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "t2_on_t1.nii.gz")))
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(again)))
    # The .tfm text keeps every parameter to full precision: the same voxels.
    np.testing.assert_array_equal(first, second)


def test_existing_output_is_refused_before_any_work(registered, capsys, shared_data, tmp_path):
    target = tmp_path / "exists.nii.gz"
    target.write_bytes(b"keep me")
    code = main(["register", str(shared_data / T1), str(shared_data / T2), "-o", str(target)])
    assert code == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"


def _write(tmp_path, name: str, image: sitk.Image) -> str:
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return str(path)


def test_bad_inputs_give_one_line_errors(capsys, shared_data, tmp_path):
    t1 = sitk.ReadImage(str(shared_data / T1))
    flat = sitk.Image(t1.GetSize(), sitk.sitkInt16)
    flat.CopyInformation(t1)
    cases = [
        (_write(tmp_path, "flat.nii.gz", flat), 2, "moving volume is constant"),
        (_write(tmp_path, "slice.nii.gz", t1[:, :, 12:13]), 2, "not a 3-D volume"),
        (str(tmp_path / "missing.nii.gz"), 2, "no such file"),
    ]
    for moving, exit_code, message in cases:
        code = main(["register", str(shared_data / T1), moving, "-o", str(tmp_path / "out.nii.gz")])
        err = capsys.readouterr().err
        assert code == exit_code, err
        assert message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out.nii.gz").exists()


def test_no_overlap_is_a_registration_error(capsys, shared_data, tmp_path):
    t1 = sitk.ReadImage(str(shared_data / T1))
    far = sitk.Image(t1)
    far.SetOrigin([c + 2000.0 for c in t1.GetOrigin()])
    code = main([
        "register", str(shared_data / T1), _write(tmp_path, "far.nii.gz", far), "-o", str(tmp_path / "out.nii.gz"),
        "--init", "none",
    ])
    err = capsys.readouterr().err
    assert code == 4
    assert "no overlap after initialisation" in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_bad_option_values_are_input_errors(capsys, shared_data, tmp_path):
    code = main([
        "register", str(shared_data / T1), str(shared_data / T2), "-o", str(tmp_path / "out.nii.gz"),
        "--interpolation", "cubic",
    ])
    assert code == 2
    assert "interpolation must be one of" in capsys.readouterr().err
    code = main(["register", str(shared_data / T1), str(shared_data / T2), "-o", str(tmp_path / "out.png")])
    assert code == 2
    assert "must end in .nii or .nii.gz" in capsys.readouterr().err
