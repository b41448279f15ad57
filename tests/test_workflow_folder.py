"""A watched-folder workflow to NIfTI: outputs, a poisoned study, bounded retries, status."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from orthanc_support import copy_study

from medfuse.cli.app import main
from medfuse.io.dicom.write import derived_uid

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
SLICES = {"series1_t1": slice(20, 41), "series2_synthetic_contrast": slice(14, 28)}


@pytest.fixture(scope="module")
def incoming(tmp_path_factory):
    """A watched folder with a good study and a poisoned one (moving series' pixel data cut short)."""
    pytest.importorskip("medfuse.study.pipeline", reason="fuse-study is not available")
    if not SAMPLE.is_dir():
        pytest.skip(f"sample study missing at {SAMPLE}")
    root = tmp_path_factory.mktemp("incoming")
    good = copy_study(SAMPLE, root / "good", 20, slices=SLICES)
    poisoned = copy_study(SAMPLE, root / "poisoned", 21, slices=SLICES)
    for f in (root / "poisoned" / "series2_synthetic_contrast").iterdir():
        ds = pydicom.dcmread(f)
        ds.PixelData = ds.PixelData[:1000]  # a transfer that broke off
        ds.save_as(f)
    return root, good, poisoned


def run(*args: str, capsys) -> tuple[int, list[dict]]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _folder_workflow(tmp_path: Path, name: str, folder: Path) -> Path:
    """A watched-folder workflow (T1 fixed, synthetic contrast moving) to NIfTI + DICOM under *tmp_path*."""
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""\
version: 1
name: {name}
schedule: "@hourly"
state_dir: {tmp_path / 'state'}
source:
  folder: {{path: {folder}, stable_after_s: 0}}
select:
  fixed: {{modality: MR, description: '(?i)t1', orientation: axial}}
  moving: {{modality: MR, description: '(?i)synthetic'}}
fusion: {{workers: 1}}
outputs: {{folder: {tmp_path / 'out'}, nifti: true, deliver_doubtful_registration: true}}
retries: {{max_attempts: 2}}
""")
    return wf


@pytest.mark.slow
def test_folder_workflow_writes_nifti_and_isolates_a_poisoned_study(incoming, tmp_path, capsys):
    root, good, poisoned = incoming
    wf = _folder_workflow(tmp_path, "folder-nifti", root)
    code, lines = run("workflow", "run", str(wf), "--json", capsys=capsys)
    outcomes = {r["study_uid"]: r for r in lines if r["event"] == "study"}
    assert code == 8  # a failed study makes the pass exit non-zero, for monitoring
    assert outcomes[good]["outcome"] == "done"
    assert outcomes[poisoned]["outcome"] == "failed" and outcomes[poisoned]["reason"]

    (delivered,) = (tmp_path / "out" / good).iterdir()
    (nifti,) = delivered.glob("*.nii*")
    assert nib.load(nifti).shape[:3] == (128, 128, 21)  # the fixed T1 grid (x, y, z)
    dicom_files = sorted((delivered / "dicom").iterdir())
    assert len(dicom_files) == 21
    series_uid = pydicom.dcmread(dicom_files[0], stop_before_pixels=True).SeriesInstanceUID
    assert series_uid == outcomes[good]["output_series_uid"]
    assert series_uid in (delivered / "provenance.json").read_text()  # provenance cites the delivered UID
    assert not list((tmp_path / "out").rglob(".*partial"))  # no half-written folder
    assert not (tmp_path / "out" / poisoned).exists()

    code, lines = run("workflow", "run", str(wf), "--json", capsys=capsys)
    assert code == 8 and lines[-1]["skipped_done"] == 1 and lines[-1]["failed"] == 1
    code, lines = run("workflow", "run", str(wf), "--json", capsys=capsys)
    assert code == 0 and lines[-1]["skipped_gave_up"] == 1 and lines[-1]["done"] == 0  # bounded retries

    capsys.readouterr()
    assert main(["workflow", "status", str(wf), "--json"]) == 0
    jobs = {j["study_uid"]: j for j in json.loads(capsys.readouterr().out)}
    assert (jobs[good]["state"], jobs[good]["attempts"]) == ("done", 1)
    # The delivered UIDs are the ones fuse-study derives from the job key (what reruns check the PACS for).
    key = jobs[good]["key"]
    assert jobs[good]["output_series_uid"] == derived_uid(key, "series") == series_uid
    sop_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in dicom_files]
    assert sop_uids == [derived_uid(key, "instance", str(z)) for z in range(21)]
    assert (jobs[poisoned]["state"], jobs[poisoned]["attempts"]) == ("failed", 2)
    assert jobs[poisoned]["reason"] == outcomes[poisoned]["reason"]

    capsys.readouterr()
    assert main(["workflow", "status", str(wf)]) == 0  # the table a person reads
    table = capsys.readouterr().out
    assert "done" in table and "failed" in table and "2/2" in table
    assert not list((tmp_path / "state" / "work").iterdir())  # no retrieved images left, even for the failure
    assert (tmp_path / "state").stat().st_mode & 0o077 == 0


def add_repeat_of_t1(study_dir: Path, keep: slice, number: int) -> str:
    """Add a shorter repeat of the study's T1 series (same description, new UIDs); return its series UID."""
    source = sorted((study_dir / "series1_t1").iterdir())
    datasets = sorted((pydicom.dcmread(f) for f in source), key=lambda d: int(d.InstanceNumber))[keep]
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[str(study_dir), str(number)])
    out = study_dir / f"series{number}_t1_repeat"
    out.mkdir()
    for i, ds in enumerate(datasets):
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, number
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[series_uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"{i}.dcm", enforce_file_format=True)
    return series_uid


@pytest.mark.slow
def test_several_matching_series_are_chosen_by_fuse_study_selection_never_guessed(tmp_path, capsys):
    pytest.importorskip("medfuse.study.pipeline", reason="fuse-study is not available")
    root = tmp_path / "incoming"
    # A repeat of the T1 with fewer slices: select_series takes the largest T1.
    repeat = copy_study(SAMPLE, root / "repeat", 22, slices=SLICES)
    add_repeat_of_t1(root / "repeat", slice(0, 11), 3)
    # A repeat of the same size: a tie the workflow must report, not settle by query order.
    tie = copy_study(SAMPLE, root / "tie", 23, slices=SLICES)
    tied_uid = add_repeat_of_t1(root / "tie", slice(0, 21), 3)
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""\
version: 1
name: folder-repeats
state_dir: {tmp_path / 'state'}
source:
  folder: {{path: {root}, stable_after_s: 0}}
select:
  fixed: {{modality: MR, description: '(?i)t1'}}
  moving: {{modality: MR, description: '(?i)synthetic'}}
fusion: {{workers: 1}}
outputs: {{folder: {tmp_path / 'out'}, deliver_doubtful_registration: true}}
retries: {{max_attempts: 1}}
""")
    code, lines = run("workflow", "run", str(wf), "--dry-run", "--json", capsys=capsys)
    planned = {r["study_uid"]: r for r in lines if r["event"] == "study"}
    assert code == 0 and planned[repeat]["chosen_by"] == planned[tie]["chosen_by"] == "rules"

    code, lines = run("workflow", "run", str(wf), "--json", capsys=capsys)
    outcomes = {r["study_uid"]: r for r in lines if r["event"] == "study"}
    assert code == 8 and outcomes[repeat]["outcome"] == "done"
    (delivered,) = (tmp_path / "out" / repeat).iterdir()
    selection = json.loads((delivered / "provenance.json").read_text())["invocation"]["selection"]
    assert "largest" in selection["fixed"]["how"]
    assert len(list((delivered / "dicom").iterdir())) == 21  # fused on the 21-slice T1, not the 11-slice repeat
    assert outcomes[tie]["outcome"] == "failed"
    assert "ambiguous fixed series: 2 equally large candidates" in outcomes[tie]["reason"]
    assert tied_uid in outcomes[tie]["reason"]  # the candidates are listed


def test_an_interrupted_job_leaves_no_images_and_is_recorded_for_retry(incoming, tmp_path, monkeypatch, capsys):
    """SIGTERM (raised by the CLI as medfuse.cli.app.Terminated) during a job: work folder gone, attempt failed."""
    from medfuse.cli.app import Terminated
    from medfuse.workflow import runner

    root, good, _ = incoming
    wf = _folder_workflow(tmp_path, "folder-interrupted", root / "good")

    def stopped_mid_job(plan, workflow, ledger, source, work):
        work.mkdir(parents=True)
        (work / "retrieved.dcm").write_bytes(b"patient image")  # what a real job has fetched by then
        raise Terminated()

    monkeypatch.setattr(runner, "_process", stopped_mid_job)
    capsys.readouterr()
    assert main(["workflow", "run", str(wf), "--json"]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert not list((tmp_path / "state" / "work").iterdir())  # the fetched images are gone
    assert main(["workflow", "status", str(wf), "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)
    assert job["study_uid"] == good
    assert (job["state"], job["attempts"], job["reason"]) == ("failed", 1, "interrupted (Terminated)")
