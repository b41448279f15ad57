"""Workflows against a real Orthanc (DICOMweb and DIMSE), crash safety, and the watched folder.

Orthanc runs from the Debian package on free loopback ports (see
``tests/orthanc_support.py``); nothing here is mocked. Every study is a copy
of the sample study (16 slices of each series, for speed) with new UIDs and
patient ID. ``medfuse workflow run`` runs as a subprocess, exactly as cron
or the Orthanc trigger runs it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from orthanc_support import (
    MEDFUSE_AET,
    PASSWORD,
    USER,
    OrthancServer,
    copy_study,
    orthanc_missing_reason,
)

from medfuse.cli.app import main
from medfuse.io.dicom.write import derived_uid

pytestmark = pytest.mark.orthanc

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
#: Slices kept of each sample series: the same ~50 mm of the phantom (2.4 mm and 3.6 mm spacing).
SLICES = {"series1_t1": slice(20, 41), "series2_synthetic_contrast": slice(14, 28)}
FIXED_SLICES = 21
DELIVER_TO_PACS = {"pacs": "true", "deliver_doubtful_registration": "true"}
PASSWORD_ENV = "MEDFUSE_TEST_PACS_PASSWORD"


def _fuse_study_missing() -> str | None:
    try:
        importlib.import_module("medfuse.study.pipeline")
    except ImportError as exc:
        return f"fuse-study (medfuse.study.pipeline) is not available: {exc}"
    return None


@pytest.fixture
def orthanc(tmp_path_factory):
    """A fresh Orthanc per test (start-up takes under a second), so tests see only their own studies."""
    reason = orthanc_missing_reason() or _fuse_study_missing()
    if reason:
        pytest.skip(reason)
    if not SAMPLE.is_dir():
        pytest.skip(f"sample study missing at {SAMPLE}")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


def workflow_file(folder: Path, name: str, source: str, **extra) -> Path:
    """A workflow YAML for the sample study's two MR series."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "version: 1",
        f"name: {name}",
        "schedule: on-stable",
        f"state_dir: {folder / 'state'}",
        "source:",
        *["  " + line for line in source.splitlines()],
        "select:",
        "  fixed: {modality: MR, description: '(?i)t1'}",
        "  moving: {modality: MR, description: '(?i)synthetic'}",
        "fusion: {workers: 1}",  # in-process: no Dask cluster start-up per study
        "outputs:",
        # The 16-slice subsets of the rod phantom do not constrain the registration along the rods (it
        # ends ~9 mm off, and the alignment check rightly doubts it): these tests are about delivery.
        *[f"  {k}: {v}" for k, v in extra.get("outputs", DELIVER_TO_PACS).items()],
        f"retries: {{max_attempts: {extra.get('max_attempts', 5)}}}",
    ]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def dicomweb_source(server: OrthancServer) -> str:
    return (f"dicomweb:\n  url: {server.dicomweb_url}\n  auth: {{username: {USER}, password_env: {PASSWORD_ENV}}}\n"
            "  timeout_s: 60\n  retries: 2\n  backoff_s: 0.5")


def dimse_source(server: OrthancServer) -> str:
    return (f"dimse:\n  host: 127.0.0.1\n  port: {server.dicom_port}\n  called_aet: {server.aet}\n"
            f"  calling_aet: {MEDFUSE_AET}\n  timeout_s: 60\n  retries: 2\n  backoff_s: 0.5")


MEDFUSE = [sys.executable, "-c", "from medfuse.cli.app import main; main()"]  # what the `medfuse` script runs


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """``medfuse ARGS`` in-process (as a user types it), with the PACS password in the environment only."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)

    def call(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return call


def start_cli(*args: str) -> subprocess.Popen:
    """``medfuse ARGS`` as a separate process, which the crash test kills."""
    return subprocess.Popen([*MEDFUSE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, PASSWORD_ENV: PASSWORD})


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def fused_series(server: OrthancServer, study_uid: str) -> list[dict]:
    return [s for s in server.series_of_study(study_uid) if "medfuse" in s.get("SeriesDescription", "").lower()]


def dciodvfy_errors(files: list[Path]) -> list[str]:
    errors = []
    for f in files:
        out = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors += [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    return errors


def upload_copies(server: OrthancServer, tmp: Path, indices) -> list[str]:
    uids = []
    for i in indices:
        uids.append(copy_study(SAMPLE, tmp / f"study{i}", i, slices=SLICES))
        server.upload(tmp / f"study{i}")
    return uids


# --------------------------------------------------------------------------- DICOMweb round trip


@pytest.mark.slow
def test_dicomweb_workflow_stores_fused_series_into_the_same_study_once(orthanc, tmp_path, cli):
    (study,) = upload_copies(orthanc, tmp_path, [0])
    wf = workflow_file(tmp_path / "wf", "web-roundtrip", dicomweb_source(orthanc))
    assert cli("workflow", "validate", str(wf)).returncode == 0

    dry = cli("workflow", "run", str(wf), "--dry-run", "--json", "--study", study)
    assert dry.returncode == 0, dry.stderr
    assert [r["outcome"] for r in json_lines(dry.stdout) if r["event"] == "study"] == ["would-fuse"]
    assert fused_series(orthanc, study) == [] and not (tmp_path / "wf" / "state" / "ledger.sqlite").exists()

    first = cli("workflow", "run", str(wf), "--json", "--study", study)
    assert first.returncode == 0, first.stderr + first.stdout
    (line,) = [r for r in json_lines(first.stdout) if r["event"] == "study"]
    assert line["outcome"] == "done" and line["study_uid"] == study and line["duration_s"] > 0
    assert "MEDFUSE-TEST" not in first.stdout and "Test^Patient" not in first.stdout  # no PHI by default

    (fused,) = fused_series(orthanc, study)
    assert fused["SeriesInstanceUID"] == line["output_series_uid"]
    files = orthanc.download_series(fused["id"], tmp_path / "fused")
    assert len(files) == fused["instances"] > 0
    ds = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID == study and "DERIVED" in ds.ImageType
    assert dciodvfy_errors(files) == []

    second = cli("workflow", "run", str(wf), "--json")
    assert second.returncode == 0, second.stderr
    assert json_lines(second.stdout)[-1]["skipped_done"] == 1
    assert len(fused_series(orthanc, study)) == 1 and len(orthanc.series_of_study(study)) == 3

    status = cli("workflow", "status", str(wf), "--json")
    (job,) = json.loads(status.stdout)
    assert (job["study_uid"], job["state"], job["attempts"]) == (study, "done", 1)
    assert job["output_series_uid"] == derived_uid(job["key"], "series") == fused["SeriesInstanceUID"]


# --------------------------------------------------------------------------- DIMSE round trip


@pytest.mark.slow
def test_dimse_workflow_finds_gets_and_stores(orthanc, tmp_path, cli):
    (study,) = upload_copies(orthanc, tmp_path, [1])
    wf = workflow_file(tmp_path / "wf", "dimse-roundtrip", dimse_source(orthanc))
    first = cli("workflow", "run", str(wf), "--json", "--log-phi", "--study", study)
    assert first.returncode == 0, first.stderr + first.stdout
    (line,) = [r for r in json_lines(first.stdout) if r["event"] == "study"]
    assert line["outcome"] == "done" and line["patient_id"] == "MEDFUSE-TEST-01"  # PHI only with --log-phi
    (fused,) = fused_series(orthanc, study)
    assert fused["SeriesInstanceUID"] == line["output_series_uid"]
    second = cli("workflow", "run", str(wf), "--json", "--study", study)
    assert second.returncode == 0 and json_lines(second.stdout)[-1]["skipped_done"] == 1
    assert len(fused_series(orthanc, study)) == 1


# --------------------------------------------------------------------------- crash safety


def ledger_events(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT key, state FROM events ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []


def kill_when(proc: subprocess.Popen, db: Path, condition, timeout_s: float = 240) -> bool:
    """SIGKILL *proc* once ``condition(states)`` holds for the ledger states this run added.

    Returns False when the run finished before the condition was met.
    """
    before = len(ledger_events(db))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition([state for _, state in ledger_events(db)[before:]]):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError("kill point never reached")


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_fuses_each_study_exactly_once(orthanc, tmp_path, cli):
    studies = upload_copies(orthanc, tmp_path, range(10, 15))
    wf = workflow_file(tmp_path / "wf", "crash", dicomweb_source(orthanc), max_attempts=5)
    db = tmp_path / "wf" / "state" / "ledger.sqlite"

    # Each kill point is a ledger state reached by the run being killed; the
    # first study is hit in fetching, fusing and right after the intent to
    # deliver was recorded (its push may be partly done), then between studies
    # and in the middle of a later study's delivery.
    kill_points = {
        "while fetching": lambda states: "fetching" in states,
        "while fusing": lambda states: "fusing" in states,
        "right after the intent to deliver": lambda states: "delivering" in states,
        "between two studies": lambda states: "done" in states,
        "while delivering a second study": lambda states: states.count("delivering") >= 2,
    }
    killed = [label for label, condition in kill_points.items()
              if kill_when(start_cli("workflow", "run", str(wf), "--json"), db, condition)]
    assert killed == list(kill_points)

    final = cli("workflow", "run", str(wf), "--json")
    assert final.returncode == 0, final.stderr + final.stdout

    con = sqlite3.connect(db)
    jobs = con.execute("SELECT study_uid, state, output_series_uid, key FROM jobs").fetchall()
    interrupted = con.execute("SELECT COUNT(*) FROM events WHERE state = 'interrupted'").fetchone()[0]
    con.close()
    assert sorted(j[0] for j in jobs) == sorted(studies)
    assert all(state == "done" for _, state, _, _ in jobs)
    assert interrupted >= 4
    for study, _, series_uid, key in jobs:
        assert series_uid == derived_uid(key, "series")  # fuse-study's UID for uid_entropy=key
        fused = fused_series(orthanc, study)
        assert [f["SeriesInstanceUID"] for f in fused] == [series_uid]
        assert fused[0]["instances"] == FIXED_SLICES  # complete, and no instance stored twice


# --------------------------------------------------------------------------- Orthanc trigger


@pytest.mark.slow
def test_orthanc_lua_trigger_fuses_a_stable_study_once_and_ignores_its_own_output(tmp_path, repo_root):
    reason = orthanc_missing_reason() or _fuse_study_missing() or (None if shutil.which("medfuse") else
                                                                   "the medfuse script is not on PATH")
    if reason:
        pytest.skip(reason)
    trigger_log = tmp_path / "trigger.log"
    server = OrthancServer(tmp_path / "orthanc", lua_scripts=[repo_root / "workflows" / "orthanc" / "medfuse-trigger.lua"])
    wf = workflow_file(tmp_path / "wf", "triggered", dicomweb_source(server))
    server.env = {"MEDFUSE_WORKFLOW": str(wf), "MEDFUSE_BIN": shutil.which("medfuse"),
                  "MEDFUSE_TRIGGER_LOG": str(trigger_log), PASSWORD_ENV: PASSWORD}
    server.start()
    try:
        (study,) = upload_copies(server, tmp_path, [30])
        deadline = time.monotonic() + 180
        while not fused_series(server, study) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert fused_series(server, study), f"no fused series; trigger log:\n{trigger_log.read_text()}"
        # The push makes the study stable again: the trigger must not start another pass.
        while "loop guard" not in server.log_tail(200) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "loop guard" in server.log_tail(200)
        time.sleep(1.5)  # let the ledger's last write finish
        studies = [r for r in json_lines(trigger_log.read_text()) if r["event"] == "study"]
        assert [(r["study_uid"], r["outcome"]) for r in studies] == [(study, "done")]
        assert len(fused_series(server, study)) == 1
    finally:
        server.stop()


def test_wrong_password_is_reported_at_once_without_leaking_it(orthanc, tmp_path, cli, monkeypatch):
    wf = workflow_file(tmp_path / "wf", "bad-auth", dicomweb_source(orthanc))
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    result = cli("workflow", "run", str(wf))
    assert result.returncode == 8
    assert "refused (HTTP 401): check the workflow's auth" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout
