"""The fuse-study / fuse-volumes pipeline end to end on the bundled sample study."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medfuse.cli.app import main
from medfuse.errors import InputError, SelectionError, WriteError
from medfuse.io.dicom.index import scan_folder
from medfuse.study.pipeline import StudyOptions, choose_series, fuse_study, fuse_volumes

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_studies" / "mr-phantom-two-contrasts"

pytestmark = pytest.mark.slow  # each module fixture runs the whole pipeline (5-15 s on 2 shared cores)


def _read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _pixels(folder: Path) -> np.ndarray:
    return np.stack([pydicom.dcmread(f).pixel_array for f in sorted(folder.glob("*.dcm"))])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    return fuse_study(SAMPLE, out, StudyOptions(workers=1, report=True))


def test_outputs_are_complete_and_documented(run):
    assert sorted(p.name for p in run.out_dir.iterdir()) == [
        "dicom", "fused.nii.gz", "provenance.json", "report.html", "transforms"]
    assert [p.name for p in run.out_dir.parent.iterdir()] == ["out"]  # scratch and staging folders are gone
    provenance = json.loads(run.provenance_path.read_text())
    assert provenance["model"]["sha256"] and len(provenance["model"]["sha256"]) == 64
    assert [i["role"] for i in provenance["inputs"]] == ["fixed", "moving"]
    assert provenance["registration"][0]["optimised"] is True
    assert len(provenance["intensity_mappings"]) == 2
    assert set(provenance["timings_s"]) >= {"scan", "select", "read", "register", "map", "fuse"}
    first = pydicom.dcmread(next(run.dicom_dir.glob("*.dcm")))
    condensed = json.loads(first.ImageComments)
    assert condensed["sidecar"] == "provenance.json" and condensed["model"] == provenance["model"]["name"]
    assert first.StudyInstanceUID == run.study_instance_uid == provenance["inputs"][0]["study_instance_uid"]


def test_fused_series_has_the_fixed_geometry_and_cites_real_inputs(run):
    fixed = _read(SAMPLE / "series1_t1")
    fused = _read(run.dicom_dir)
    assert fused.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(fused.GetOrigin(), fixed.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(fused.GetSpacing(), fixed.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(fused.GetDirection(), fixed.GetDirection(), atol=1e-4)
    nifti = sitk.ReadImage(str(run.nifti_path))
    np.testing.assert_allclose(nifti.GetOrigin(), fixed.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(nifti.GetDirection(), fixed.GetDirection(), atol=1e-4)
    inputs = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in SAMPLE.rglob("*.dcm")}
    cited = set()
    for path in run.dicom_dir.glob("*.dcm"):
        cited |= {item.ReferencedSOPInstanceUID for item in pydicom.dcmread(path, stop_before_pixels=True).SourceImageSequence}
    assert cited <= inputs
    assert len(cited) > 0.9 * len(inputs)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_pipeline_series_passes_dciodvfy_and_dcentvfy(run):
    files = sorted(run.dicom_dir.glob("*.dcm"))
    for path in (files[0], files[len(files) // 2], files[-1]):
        out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
        assert not [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")]
    out = subprocess.run(["dcentvfy", *map(str, files)], capture_output=True, text=True)
    assert not (out.stdout + out.stderr).strip()


def test_registration_recovers_the_sample_offset(run, shared_data):
    """The synthetic series was moved by a known rigid T; registration must find T^-1 (see the sample README)."""
    spec = importlib.util.spec_from_file_location("make_sample_study", REPO / "tools" / "make_sample_study.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    source, _ = maker.read_source(shared_data / "dicom" / "ge_mr_t1_mprage" / "05_3D_Ax_T1_MP_RAGE_R22")
    truth = maker.rigid_offset_transform(source).GetInverse()
    found = sitk.ReadTransform(str(run.out_dir / "transforms" / "moving1_to_fixed.tfm"))
    fixed = _read(SAMPLE / "series1_t1")
    size = fixed.GetSize()
    points = [fixed.TransformIndexToPhysicalPoint((x, y, z)) for x in (20, size[0] - 20)
              for y in (20, size[1] - 20) for z in (10, size[2] - 10)]
    errors = [np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p))) for p in points]
    assert max(errors) < 2.0, errors  # mm, within about one voxel (1.875 mm in-plane)


def test_rerun_gives_identical_pixels_and_new_uids(run, tmp_path):
    again = fuse_study(SAMPLE, tmp_path / "again", StudyOptions(workers=1, formats=("dicom",)))
    np.testing.assert_array_equal(_pixels(again.dicom_dir), _pixels(run.dicom_dir))
    assert again.series_instance_uid != run.series_instance_uid
    assert again.study_instance_uid == run.study_instance_uid


def test_two_local_workers_give_the_pixels_of_one(run, tmp_path):
    """The pipeline's own path: workers started with the map stage, staged files, blocks on 2 workers."""
    two = fuse_study(SAMPLE, tmp_path / "two", StudyOptions(workers=2, formats=("dicom", "nifti")))
    np.testing.assert_array_equal(_pixels(two.dicom_dir), _pixels(run.dicom_dir))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(two.nifti_path))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(run.nifti_path))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # no scratch folder left


def test_cli_main_command_prints_where_outputs_are(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fuse-study", str(SAMPLE), "-o", str(out), "--quiet", "--format", "dicom",
                 "--deterministic-uids"]) == 0
    printed = capsys.readouterr().out
    assert f"fused outputs in {out}/" in printed and str(out / "dicom") in printed
    assert main(["fuse-study", str(SAMPLE), "-o", str(out), "--quiet"]) == InputError.exit_code
    assert "not empty" in capsys.readouterr().err


def test_fuse_volumes_three_nifti_inputs(tmp_path):
    fixed = _read(SAMPLE / "series1_t1")[:, :, 20:44]
    moving = _read(SAMPLE / "series2_synthetic_contrast")
    paths = [tmp_path / "t1.nii.gz", tmp_path / "synthetic.nii.gz", tmp_path / "t1_gamma.nii.gz"]
    sitk.WriteImage(fixed, str(paths[0]))
    sitk.WriteImage(moving, str(paths[1]))
    sitk.WriteImage(sitk.Sqrt(sitk.Cast(fixed, sitk.sitkFloat32)), str(paths[2]))
    result = fuse_volumes(paths, tmp_path / "out", StudyOptions(workers=1, formats=("nifti",)))
    fused = sitk.ReadImage(str(result.nifti_path))
    assert fused.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(fused.GetOrigin(), fixed.GetOrigin(), atol=1e-3)
    values = sitk.GetArrayFromImage(fused)
    assert 0 <= values.min() and values.max() <= 1 and values.std() > 0.01
    provenance = json.loads(result.provenance_path.read_text())
    assert len(provenance["inputs"]) == 3 and len(provenance["registration"]) == 2


def test_failed_stage_leaves_nothing_and_says_which(tmp_path, monkeypatch):
    image = _read(SAMPLE / "series1_t1")[:, :, 24:40]
    paths = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    for path in paths:
        sitk.WriteImage(image, str(path))

    def disk_full(*args, **kwargs):  # the write stage fails half-way (provenance and transforms not yet written)
        raise WriteError("fused.nii.gz: No space left on device")

    monkeypatch.setattr("medfuse.study.pipeline.write_nifti", disk_full)
    with pytest.raises(WriteError, match="No space left") as caught:
        fuse_volumes(paths, tmp_path / "out", StudyOptions(workers=1, formats=("nifti",)))
    assert caught.value.exit_code == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_selection_picks_the_larger_of_two_same_modality_series_and_refuses_to_guess():
    index = scan_folder(SAMPLE)
    fixed, moving, how = choose_series(index)
    assert fixed.series_number == 1 and [m.series_number for m in moving] == [2]
    assert set(how) == {"fixed", "moving"}
    with pytest.raises(SelectionError, match="no series"):
        choose_series(index, "7")
    with pytest.raises(SelectionError, match="same series"):
        choose_series(index, "1", ("1",))
    fixed, moving, _ = choose_series(index, "2", ("1",))
    assert (fixed.series_number, moving[0].series_number) == (2, 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_fusion_cleans_up_and_exits_143(tmp_path, workers):
    """A scheduler stopping the job (SIGTERM) mid-fusion: no output, no scratch or partial folder, no worker left."""
    import psutil

    out = tmp_path / "out"
    command = [sys.executable, "-c", "from medfuse.cli.app import main; main()", "fuse-study", str(SAMPLE),
               "-o", str(out), "--workers", str(workers), "--json-log"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fusing = False
    for line in process.stderr:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "start" and record.get("stage") == "fuse":
            fusing = True
            break
    assert fusing, "the run ended before its fuse stage"
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= (2 if workers == 2 else 0)  # the local Dask workers exist at this point
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 143
    assert "medfuse: terminated (SIGTERM)" in rest
    assert list(tmp_path.iterdir()) == []  # neither OUT_DIR nor .out.partial-* nor .out.fusion-*
    _, alive = psutil.wait_procs(children, timeout=20)
    assert alive == []


def test_an_output_path_through_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the folder was scanned although the output cannot be written")

    monkeypatch.setattr("medfuse.study.pipeline.scan_folder", no_work)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    code = main(["fuse-study", str(SAMPLE), "-o", str(blocker / "fused" / "out"), "--workers", "1", "--quiet"])
    assert code == 6  # WriteError, not an internal error
    assert f"{blocker} is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


UNGUARDED_SCRIPT = """
import sys
from medfuse.study.pipeline import StudyOptions, fuse_study
fuse_study(sys.argv[1], sys.argv[2], StudyOptions(workers=2, formats=("nifti",)))
"""


def test_a_script_without_main_guard_gets_a_clear_error_not_a_job_per_worker(tmp_path):
    """A script that calls fuse_study at import time: each spawned worker re-imports it; the workers refuse to
    run the job again, so the caller is told why at once (not after the 120 s start-up timeout) and nothing is
    left behind."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(script), str(SAMPLE), str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=100, check=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("medfuse.errors.FusionError: could not start 2 local Dask workers") and \
        'if __name__ == "__main__":' in last, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unguarded.py"]


def test_a_worker_being_started_refuses_to_run_a_job(tmp_path, monkeypatch):
    import multiprocessing

    from medfuse.errors import FusionError

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(FusionError, match="while a worker process was starting"):
        fuse_study(SAMPLE, tmp_path / "out", StudyOptions(workers=1))
    assert not (tmp_path / "out").exists()


def test_too_little_disk_for_the_scratch_files_is_a_write_error_before_fusing(tmp_path, capsys, monkeypatch):
    """The staging check sees 1 MB free (the sample needs about 16 MB): exit 6 with both figures, nothing left."""
    real = shutil.disk_usage
    monkeypatch.setattr("medfuse.volume.staging.shutil.disk_usage",
                        lambda path: real(path)._replace(free=2**20))
    code = main(["fuse-study", str(SAMPLE), "-o", str(tmp_path / "out"), "--workers", "1", "--quiet"])
    assert code == 6
    err = capsys.readouterr().err.strip()
    assert "not enough disk space" in err and "MB needed, 1 MB free" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB file system (tmpfs): room for the sample's scratch files, not for them and the outputs."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_a_disk_that_fills_up_while_writing_gives_exit_6_and_leaves_nothing(small_disk, capsys):
    code = main(["fuse-study", str(SAMPLE), "-o", str(small_disk / "out"), "--workers", "1", "--quiet", "--report"])
    assert code == 6
    err = capsys.readouterr().err.strip()
    assert err.endswith("No space left on device") and len(err.splitlines()) == 1, err
    assert list(small_disk.iterdir()) == []
