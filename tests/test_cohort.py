"""fuse-cohort: many studies at once on a real Dask scheduler and workers (issue 15).

The cluster is real: ``dask scheduler`` and two ``dask worker`` processes
(one thread each, no nanny, so that a SIGKILL takes the worker down for
good) on 127.0.0.1. The cohort is six copies of the bundled sample study
with new UIDs (:func:`orthanc_support.copy_study`, 21 and 14 slices of its
two series, for speed).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest
from orthanc_support import copy_study

from medfuse.cli.app import main

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
SLICES = {"series1_t1": slice(20, 41), "series2_synthetic_contrast": slice(14, 28)}
STUDIES = [f"patient{i}" for i in range(6)]
MEDFUSE = [sys.executable, "-c", "from medfuse.cli.app import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A ``dask scheduler`` and *workers* ``dask worker`` subprocesses on 127.0.0.1 (also used by the workflow tests)."""

    def __init__(self, logs: Path, workers: int = 2, env: dict | None = None) -> None:
        self.logs, self.env = logs, {**os.environ, **(env or {})}
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.scheduler = self._spawn("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                                   "--port", self.address.rsplit(":", 1)[1], "--no-dashboard"])
        self.workers = [self._spawn(f"worker{i}", ["distributed.cli.dask_worker", self.address, "--nthreads", "1",
                                                   "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"])
                        for i in range(workers)]
        self.wait_for_workers(workers)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "w") as log:
            return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def wait_for_workers(self, n: int, timeout: float = 90.0) -> None:
        from dask.distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout="30s") as client:
            while len(client.scheduler_info()["workers"]) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n} dask workers did not join {self.address} within {timeout} s")
                time.sleep(0.3)

    def kill_worker_mid_study(self, index: int, watched: subprocess.Popen, timeout: float = 180.0) -> int:
        """SIGKILL worker *index* once it runs a study (has a child process); return that child's pid."""
        worker = psutil.Process(self.workers[index].pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = [c for c in worker.children() if "medfuse.study.cohort.child" in " ".join(c.cmdline())]
            if children:
                time.sleep(0.3)  # let the study get under way
                self.workers[index].send_signal(signal.SIGKILL)
                self.workers[index].wait()
                return children[0].pid
            if watched.poll() is not None:
                raise AssertionError("the run ended before the worker took a study")
            time.sleep(0.05)
        raise AssertionError(f"worker {index} never ran a study")

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory) -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"sample study missing at {SAMPLE}")
    root = tmp_path_factory.mktemp("cohort") / "root"
    for i, name in enumerate(STUDIES):
        copy_study(SAMPLE, root / name, 200 + i, slices=SLICES)
    return root


@pytest.fixture(scope="module")
def one_process(cohort_root, tmp_path_factory) -> Path:
    """The cohort fused in this process, one study after another, with fuse-cohort's options: the reference."""
    from medfuse.study.pipeline import StudyOptions, fuse_study

    out = tmp_path_factory.mktemp("reference")
    for name in STUDIES:
        fuse_study(cohort_root / name, out / name, StudyOptions(workers=1, deterministic_uids=True, formats=("dicom",)))
    return out


def pixels(study_out: Path) -> np.ndarray:
    files = sorted((study_out / "dicom").iterdir())
    return np.stack([pydicom.dcmread(f).pixel_array for f in files])


def rows(out: Path) -> dict[str, dict]:
    with open(out / "cohort.csv", newline="") as handle:
        return {row["study"]: row for row in csv.DictReader(handle)}


def assert_exactly_the_cohort(out: Path, reference: Path) -> None:
    """Every study's output once, complete, with the reference's pixels and UIDs; nothing else left under OUT."""
    assert sorted(p.name for p in out.iterdir()) == sorted([*STUDIES, "cohort.csv", "cohort.json", ".cohort.lock"])
    for name in STUDIES:
        provenance = json.loads((out / name / "provenance.json").read_text())
        assert len(list((out / name / "dicom").iterdir())) == provenance["outputs"]["dicom"]["instances"] == 21
        np.testing.assert_array_equal(pixels(out / name), pixels(reference / name))
        assert (provenance["outputs"]["dicom"]["series_instance_uid"]
                == json.loads((reference / name / "provenance.json").read_text())["outputs"]["dicom"]["series_instance_uid"])


@pytest.mark.slow
def test_cohort_on_two_dask_workers_survives_a_killed_worker_and_a_rerun_does_nothing(cohort_root, one_process,
                                                                                     tmp_path):
    """Six studies on a scheduler and two workers; worker 0 is SIGKILLed mid-study; then the same command again."""
    cluster = LoopbackCluster(tmp_path / "dask")
    try:
        out = tmp_path / "out"
        args = ["fuse-cohort", str(cohort_root), "-o", str(out), "--scheduler", cluster.address, "--format", "dicom",
                "--json-log"]
        run = subprocess.Popen([*MEDFUSE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        orphan = cluster.kill_worker_mid_study(0, run)
        stdout, stderr = run.communicate(timeout=300)
        time.sleep(0.2)
        # The study process of the killed worker died with it: nothing fuses on unseen.
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        # Its study went to the other worker: this run finished the whole cohort.
        assert run.returncode == 0, stderr
        events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        assert sorted(e["study"] for e in events) == STUDIES and {e["status"] for e in events} == {"done"}
        assert events[-1]["left"] == 0 and events[-1]["done"] == 6 and events[-1]["per_hour"] > 0
        assert json.loads(stdout)["done"] == 6
        assert {r["status"] for r in rows(out).values()} == {"done"}
        assert_exactly_the_cohort(out, one_process)

        before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "cohort.csv"}
        rerun = subprocess.run([*MEDFUSE, *args], capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        summary = json.loads(rerun.stdout)
        assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 6, 0)
        assert {r["status"] for r in rows(out).values()} == {"skipped"}
        assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "cohort.csv"}
        assert_exactly_the_cohort(out, one_process)
    finally:
        cluster.stop()


@pytest.mark.slow
def test_studies_that_share_a_folder_are_each_fused_from_their_own_files(tmp_path, capsys):
    mixed = tmp_path / "root" / "mixed"
    uids = sorted(copy_study(SAMPLE, mixed, 250 + i, slices=SLICES) for i in range(2))  # same series folders
    out = tmp_path / "out"
    assert main(["fuse-cohort", str(tmp_path / "root"), "-o", str(out), "--jobs", "1", "--format", "dicom", "-q"]) == 0
    assert sorted(rows(out)) == uids and {r["status"] for r in rows(out).values()} == {"done"}
    for uid in uids:
        provenance = json.loads((out / uid / "provenance.json").read_text())
        assert {i["study_instance_uid"] for i in provenance["inputs"]} == {uid}
    assert sorted(p.name for p in out.iterdir()) == sorted([*uids, "cohort.csv", "cohort.json", ".cohort.lock"])
