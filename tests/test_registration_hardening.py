"""Registration inputs that used to crash, and doubtful results on the command line (issue 16).

* ``--transform-in`` files with NaN/inf parameters (SimpleITK segfaulted), a
  non-rigid or unknown transform, or an unreadable file: one line, exit 2,
  nothing written;
* small volumes (96 x 96 x 12) no longer break the registration pyramid with
  ITK's "less than 4 pixels" message, in ``register`` and in ``fuse-volumes``;
* a doubtful registration (a left-right mirrored T2 against its T1) is said
  on the terminal and recorded; under ``--strict`` nothing is written and the
  exit code is 9; two patients' series forced together with ``--fixed`` /
  ``--moving`` in ``fuse-study`` likewise.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from medfuse.cli.app import main
from medfuse.errors import DoubtfulRegistrationError

TCGA = "volumes/tcia_TCGA-FG-6692_t1_t1c_t2_flair"
T1 = f"{TCGA}/T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz"
T2 = f"{TCGA}/MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz"
MPRAGE = "dicom/ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22"


def run(capsys, *argv: str):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "ITK ERROR" not in err
    return lines[0]


EULER = "#Insight Transform File V1.0\n#Transform 0\nTransform: Euler3DTransform_double_3_3\n"


@pytest.mark.parametrize("name, text, reason", [
    ("nan.tfm", EULER + "Parameters: 0 nan 0 1 2 3\nFixedParameters: 0 0 0 0\n", "finite numbers"),
    ("inf.tfm", EULER + "Parameters: 0 0 0 inf 2 3\nFixedParameters: 0 0 0 0\n", "finite numbers"),
    ("overflow.tfm", EULER + "Parameters: 0 0 0 1e999 2 3\nFixedParameters: 0 0 0 0\n", "finite numbers"),
    ("short.tfm", EULER + "Parameters: 0 0 0 1 2\nFixedParameters: 0 0 0 0\n", "finite numbers"),
    ("bspline.tfm", "#Insight Transform File V1.0\n#Transform 0\nTransform: BSplineTransform_double_3_3\n"
                    "Parameters: 0 0 0\nFixedParameters: 0 0 0\n", "not supported"),
    ("binary.tfm", "\x00\x01\x02 not a transform", "not an ITK text transform"),
    ("singular.tfm", "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
                     "Parameters: 0 0 0 0 0 0 0 0 0 0 0 0\nFixedParameters: 0 0 0\n", "singular"),
])
def test_bad_transform_in_is_refused_in_one_line(name, text, reason, capsys, tmp_path, shared_data):
    bad = tmp_path / name
    bad.write_text(text, encoding="latin-1")
    out = tmp_path / "moved.nii.gz"
    code, _, err = run(capsys, "register", shared_data / T1, shared_data / T2, "-o", out, "--transform-in", bad)
    line = one_line_error(err)
    assert code == 2 and reason in line and name in line, line
    assert list(tmp_path.iterdir()) == [bad]


def small_pair(shared_data, folder, size=(96, 96, 12), spacing=(2.4, 2.4, 2.4)):
    """T1 and T2 of one patient resampled onto a small grid (same centre, own orientation)."""
    paths = []
    for name, relative in (("t1", T1), ("t2", T2)):
        image = sitk.ReadImage(str(shared_data / relative), sitk.sitkFloat32)
        centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        origin = centre - direction @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing))
        small = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                              image.GetDirection(), 0.0, sitk.sitkFloat32)
        paths.append(folder / f"{name}_small.nii.gz")
        sitk.WriteImage(small, str(paths[-1]))
    return paths


def test_small_volumes_register_without_an_itk_pyramid_error(capsys, tmp_path, shared_data):
    fixed, moving = small_pair(shared_data, tmp_path)
    code, out, err = run(capsys, "register", fixed, moving, "-o", tmp_path / "moved.nii.gz", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["optimised"] and len(report["levels"]) == 3
    assert sitk.ReadImage(str(tmp_path / "moved.nii.gz")).GetSize() == (96, 96, 12)


@pytest.mark.slow
def test_small_volumes_fuse_in_fuse_volumes(capsys, tmp_path, shared_data):
    fixed, moving = small_pair(shared_data, tmp_path)
    code, _, err = run(capsys, "fuse-volumes", fixed, moving, "-o", tmp_path / "out", "--workers", "1",
                       "--format", "nifti", "--quiet")
    assert code == 0, err
    assert "ITK ERROR" not in err
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["registration"][0]["optimised"] is True


@pytest.fixture
def mirrored_t2(shared_data, tmp_path):
    image = sitk.ReadImage(str(shared_data / T2))
    axis = int(np.argmax(np.abs(np.asarray(image.GetDirection()).reshape(3, 3)[0])))
    flipped = sitk.Flip(image, [a == axis for a in range(3)])
    flipped.CopyInformation(image)
    path = tmp_path / "t2_mirrored.nii.gz"
    sitk.WriteImage(flipped, str(path))
    return path


def test_strict_refuses_a_doubtful_registration_and_writes_nothing(capsys, tmp_path, shared_data, mirrored_t2):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "fuse-volumes", shared_data / T1, mirrored_t2, "-o", out, "--workers", "1",
                            "--format", "nifti", "--strict", "--quiet")
    line = one_line_error(err)
    assert code == DoubtfulRegistrationError.exit_code == 9
    assert "doubtful registration" in line and "mirrored left-right fits better" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["t2_mirrored.nii.gz"]


@pytest.mark.slow
def test_without_strict_a_doubtful_registration_is_written_said_and_recorded(capsys, tmp_path, shared_data,
                                                                           mirrored_t2):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "fuse-volumes", shared_data / T1, mirrored_t2, "-o", out, "--workers", "1",
                            "--format", "nifti", "--quiet", "--report")
    assert code == 0, err
    assert "DOUBTFUL REGISTRATION" in err and "mirrored left-right fits better" in err
    provenance = json.loads((out / "provenance.json").read_text())
    (check,) = provenance["alignment_check"]
    assert check["doubtful"] is True and check["mirrored"] > check["agreement"]
    report = (out / "report.html").read_text()
    assert "DOUBTFUL REGISTRATION" in report and "mirrored left-right fits better" in report


def test_two_patients_forced_together_in_fuse_study_are_refused(capsys, tmp_path, shared_data, repo_root):
    # A real GE MP-RAGE series (patient "dicom") and the bundled sample's synthetic contrast
    # (patient MEDFUSE-SAMPLE-01), chosen by series number as a user would force them. The series
    # selection refuses them first (exit 3); the alignment check's patient test (exit 9 under
    # --strict) is the second line of defence, e.g. for fuse-volumes on DICOM folders.
    folder = tmp_path / "mixed"
    shutil.copytree(shared_data / MPRAGE, folder / "mprage")
    shutil.copytree(repo_root / "sample_studies/mr-phantom-two-contrasts/series2_synthetic_contrast", folder / "other")
    out = tmp_path / "out"
    code, _, err = run(capsys, "fuse-study", folder, "-o", out, "--fixed", "5", "--moving", "2", "--workers", "1",
                       "--strict", "--quiet")
    line = one_line_error(err)
    assert code in (3, 9) and "different patients" in line, line
    assert not out.exists()


def test_two_patients_given_to_fuse_volumes_are_refused_under_strict(capsys, tmp_path, shared_data, repo_root):
    out = tmp_path / "out"
    code, _, err = run(capsys, "fuse-volumes", shared_data / MPRAGE,
                       repo_root / "sample_studies/mr-phantom-two-contrasts/series2_synthetic_contrast", "-o", out,
                       "--workers", "1", "--strict", "--quiet")
    line = one_line_error(err)
    assert code == 9 and "different patients" in line, line
    assert "MEDFUSE-SAMPLE" not in err and not out.exists()
