"""fuse-cohort's refusals and failures: one line, the right exit code, nothing half-written under OUT.

These run without Dask (``--jobs 1``: each study in its own process, one
after another) except the unreachable scheduler.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from orthanc_support import copy_study
from test_cohort import MEDFUSE, SAMPLE, SLICES, _free_port

from medfuse.cli.app import main


@pytest.fixture
def run(capsys):
    def call(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medfuse: error: "), stderr
    return lines[0]


def study_copy(root: Path, name: str, index: int, broken: bool = False) -> None:
    if not SAMPLE.is_dir():
        pytest.skip(f"sample study missing at {SAMPLE}")
    copy_study(SAMPLE, root / name, 300 + index, slices=SLICES)
    if broken:  # the moving series' pixel data cut short: fuse-study cannot use it
        for f in (root / name / "series2_synthetic_contrast").iterdir():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def rows(out: Path) -> dict[str, dict]:
    with open(out / "cohort.csv", newline="") as handle:
        return {row["study"]: row for row in csv.DictReader(handle)}


def test_a_root_without_studies_is_refused_before_anything_is_written(tmp_path, run):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "notes.txt").write_text("no DICOM here")
    code, _, err = run("fuse-cohort", tmp_path / "root", "-o", tmp_path / "out", "--jobs", "1")
    assert code == 3 and "no DICOM studies found" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(tmp_path, run):
    study_copy(tmp_path / "root", "a", 0)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    code, _, err = run("fuse-cohort", tmp_path / "root", "-o", tmp_path / "out", "--scheduler", address)
    assert code == 8 and f"cannot reach the Dask scheduler {address}" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, run):
    study_copy(tmp_path / "root", "a", 0)
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = run("fuse-cohort", tmp_path / "root", "-o", tmp_path / "file" / "out", "--jobs", "1")
    assert code == 6 and "is not a folder" in one_line_error(err)
    code, _, err = run("fuse-cohort", tmp_path / "root", "-o", tmp_path / "root" / "out", "--jobs", "1")
    assert code == 2 and "must not be inside the cohort folder" in one_line_error(err)
    assert not (tmp_path / "root" / "out").exists()
    if os.geteuid() != 0:  # root may write into read-only folders
        (tmp_path / "ro").mkdir(mode=0o555)
        code, _, err = run("fuse-cohort", tmp_path / "root", "-o", tmp_path / "ro" / "out", "--jobs", "1")
        assert code == 6 and "not writable" in one_line_error(err)


@pytest.mark.slow
def test_a_failing_study_does_not_stop_the_others_and_is_retried(tmp_path, run):
    study_copy(tmp_path / "root", "good", 0)
    study_copy(tmp_path / "root", "bad", 1, broken=True)
    out = tmp_path / "out"
    code, stdout, err = run("fuse-cohort", tmp_path / "root", "-o", out, "--jobs", "1", "--format", "dicom", "-q")
    assert code == 8 and "1 of 2 studies failed (reasons in" in one_line_error(err)
    table = rows(out)
    assert table["good"]["status"] == "done" and table["bad"]["status"] == "failed"
    assert table["bad"]["reason"] and table["bad"]["code"] == "3", table["bad"]
    assert sorted(p.name for p in out.iterdir()) == [".cohort.lock", "cohort.csv", "cohort.json", "good"]
    assert "bad" in stdout and "failed" in stdout  # the summary table

    code, _, err = run("fuse-cohort", tmp_path / "root", "-o", out, "--jobs", "1", "--format", "dicom", "-q")
    assert code == 8
    table = rows(out)
    assert (table["good"]["status"], table["bad"]["status"]) == ("skipped", "failed")  # tried again, failed again


@pytest.mark.slow
def test_a_study_over_its_time_limit_is_killed_and_failed_with_the_reason(tmp_path, run):
    study_copy(tmp_path / "root", "slow", 0)
    out = tmp_path / "out"
    started = time.monotonic()
    code, _, err = run("fuse-cohort", tmp_path / "root", "-o", out, "--jobs", "1", "--timeout", "1", "-q")
    assert time.monotonic() - started < 30
    assert code == 8
    assert rows(out)["slow"]["reason"] == "timed out after 1 s (the study task's limit); killed"
    assert sorted(p.name for p in out.iterdir()) == [".cohort.lock", "cohort.csv", "cohort.json"]


@pytest.mark.slow
def test_a_killed_pass_is_completed_by_the_next_one(tmp_path):
    for i in range(2):
        study_copy(tmp_path / "root", f"p{i}", i)
    out = tmp_path / "out"
    args = [*MEDFUSE, "fuse-cohort", str(tmp_path / "root"), "-o", str(out), "--jobs", "1", "--format", "dicom",
            "--json-log"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    for line in first.stderr:  # kill the whole pass (coordinator and study process) after its first study
        if json.loads(line).get("status") == "done":
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait()
    done_before = {name for name, row in rows(out).items() if row["status"] == "done"}
    assert len(done_before) >= 1
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    table = rows(out)
    assert {n for n, r in table.items() if r["status"] == "skipped"} == done_before
    assert {n for n, r in table.items() if r["status"] == "done"} == {"p0", "p1"} - done_before
    assert sorted(p.name for p in out.iterdir()) == [".cohort.lock", "cohort.csv", "cohort.json", "p0", "p1"]
    for name in ("p0", "p1"):
        assert len(list((out / name / "dicom").iterdir())) == 21
