"""``workflow run --scheduler``: a workflow's studies as Dask tasks against a real Orthanc (issue 15).

Orthanc, the dask scheduler and the two dask workers are real processes on
127.0.0.1 (``tests/orthanc_support.py``, :class:`test_cohort.LoopbackCluster`);
the workers have the PACS password in their environment, as a site's workers
would. Every study is a copy of the sample study with new UIDs.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest
from orthanc_support import PASSWORD
from test_cohort import LoopbackCluster, _free_port
from test_workflow_orthanc import (  # noqa: F401 - fixtures
    FIXED_SLICES,
    MEDFUSE,
    PASSWORD_ENV,
    cli,
    dicomweb_source,
    fused_series,
    json_lines,
    orthanc,
    upload_copies,
    workflow_file,
)

from medfuse.io.dicom.write import derived_uid

pytestmark = pytest.mark.orthanc


def ledger(db) -> tuple[list[tuple], list[str]]:
    """The ledger's jobs (study, state, output series, key) and event states; empty while it is being created."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            jobs = con.execute("SELECT study_uid, state, output_series_uid, key FROM jobs").fetchall()
            events = [state for (state,) in con.execute("SELECT state FROM events ORDER BY id")]
    except sqlite3.OperationalError:
        return [], []
    return jobs, events


def assert_each_fused_once(server, db, studies) -> None:
    jobs, _ = ledger(db)
    assert sorted(j[0] for j in jobs) == sorted(studies)
    for study, state, series_uid, key in jobs:
        assert state == "done" and series_uid == derived_uid(key, "series")
        fused = fused_series(server, study)
        assert [f["SeriesInstanceUID"] for f in fused] == [series_uid]
        assert fused[0]["instances"] == FIXED_SLICES  # complete, no instance stored twice


def dask_workflow(folder, name, server):
    """The workflow tests' workflow file (sample study's two MR series, stored back into the PACS)."""
    return workflow_file(folder, name, dicomweb_source(server))


def start_run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*MEDFUSE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, PASSWORD_ENV: PASSWORD})


@pytest.mark.slow
def test_six_studies_on_two_workers_one_killed_mid_study_each_fused_series_stored_once(orthanc, tmp_path, cli):
    studies = upload_copies(orthanc, tmp_path, range(40, 46))
    wf = dask_workflow(tmp_path / "wf", "on-dask", orthanc)
    db = tmp_path / "wf" / "state" / "ledger.sqlite"
    cluster = LoopbackCluster(tmp_path / "dask", env={PASSWORD_ENV: PASSWORD})
    try:
        run = start_run("workflow", "run", str(wf), "--json", "--scheduler", cluster.address)
        # Two jobs fusing at once means each worker (one thread each) is in the middle of one: kill worker 0.
        deadline = time.monotonic() + 240
        while sum(state == "fusing" for _, state, _, _ in ledger(db)[0]) < 2:
            assert run.poll() is None and time.monotonic() < deadline, "two jobs never fused at once"
            time.sleep(0.05)
        cluster.workers[0].kill()
        cluster.workers[0].wait()
        stdout, stderr = run.communicate(timeout=300)
        # The killed worker's job went to the other worker: this pass fused all six.
        assert run.returncode == 0, stderr + stdout
        assert json_lines(stdout)[-1]["done"] == 6, stdout
        assert "MEDFUSE-TEST" not in stdout + stderr and "Test^Patient" not in stdout + stderr  # no PHI
        jobs, events = ledger(db)
        assert events.count("interrupted") >= 1  # the killed attempt is on record

        rerun = cli("workflow", "run", str(wf), "--json", "--scheduler", cluster.address)
        assert rerun.returncode == 0, rerun.stderr
        assert json_lines(rerun.stdout)[-1]["skipped_done"] == 6
        assert_each_fused_once(orthanc, db, studies)
    finally:
        cluster.stop()


@pytest.mark.slow
def test_a_lost_scheduler_stops_the_pass_with_the_ledger_consistent_and_the_next_pass_completes(orthanc, tmp_path,
                                                                                                cli):
    studies = upload_copies(orthanc, tmp_path, range(50, 53))
    wf = dask_workflow(tmp_path / "wf", "lost-scheduler", orthanc)
    db = tmp_path / "wf" / "state" / "ledger.sqlite"
    cluster = LoopbackCluster(tmp_path / "dask", env={PASSWORD_ENV: PASSWORD})
    try:
        run = start_run("workflow", "run", str(wf), "--json", "--scheduler", cluster.address)
        deadline = time.monotonic() + 180
        while "fusing" not in ledger(db)[1]:
            assert run.poll() is None and time.monotonic() < deadline, "no job reached fusing"
            time.sleep(0.05)
        cluster.scheduler.kill()
        stdout, stderr = run.communicate(timeout=120)
    finally:
        cluster.stop()  # the workers too, before the next pass
    assert run.returncode == 8
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medfuse: error: lost the connection to the Dask scheduler"), stderr
    jobs, events = ledger(db)
    assert {state for _, state, _, _ in jobs} <= {"pending", "failed", "done"}  # nothing left "in progress"
    assert "interrupted (Dask scheduler lost)" in {j[1] for j in jobs} | {
        r for (r,) in sqlite3.connect(db).execute("SELECT reason FROM jobs")}

    final = cli("workflow", "run", str(wf), "--json")  # the next pass, here in one process
    assert final.returncode == 0, final.stderr + final.stdout
    assert_each_fused_once(orthanc, db, studies)


def test_an_unreachable_scheduler_is_one_line_and_starts_no_job(orthanc, tmp_path, cli):
    upload_copies(orthanc, tmp_path, [60])
    wf = dask_workflow(tmp_path / "wf", "no-scheduler", orthanc)
    address = f"tcp://127.0.0.1:{_free_port()}"
    result = cli("workflow", "run", str(wf), "--scheduler", address)
    assert result.returncode == 8
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert f"cannot reach the Dask scheduler {address}" in result.stderr
    jobs, _ = ledger(tmp_path / "wf" / "state" / "ledger.sqlite")
    assert [j[1] for j in jobs] == ["pending"]  # known, not started: no attempt spent
