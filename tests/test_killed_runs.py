"""A run killed with SIGKILL leaves its scratch behind; the next run for the same output removes it (issue 16).

The kills land at exact points: ``MEDFUSE_TEST_PAUSE_AT`` makes the run stop at
a named :func:`medfuse.atomic.crash_point` (each stage's start, after each
progress step, inside the write stage) and say so on stderr; the test then
sends SIGKILL. No sleeping and hoping.
"""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medfuse.atomic import PAUSE_ENV, RUN_LOCK_NAME, claim_run_folder, sweep_stale_run_folders
from medfuse.cli.app import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_studies" / "mr-phantom-two-contrasts"

# (crash point, local workers): spread over read, register, map, fuse and write. The sample has 65
# slices, fused in chunks of 16 (progress 16, 32, 48, 64, 65 in-process; 16, 32, 48, 49, 65 with workers).
KILL_POINTS = [
    ("read", 1),            # before any volume is read
    ("register", 1),        # volumes read, registration not started
    ("register:1", 1),      # registered, no scratch folder yet
    ("map", 1),             # scratch folder claimed, nothing staged
    ("map", 2),             # the same with two local Dask workers booting
    ("fuse", 1),            # sources staged, nothing fused
    ("fuse:16", 1),         # one chunk of the output written
    ("fuse:32", 2),         # half fused by two local workers
    ("write:dicom", 1),     # the DICOM series written into the scratch folder's output
    ("write:rename", 1),    # every output complete, one rename from OUT
]

# Imports medfuse, then waits for a line on stdin before running the CLI: the next kill's process is
# started while the current rerun works, so its 2-3 s of imports do not add up over ten kills.
_LAUNCHER = ("import sys; from medfuse.cli.app import main; import medfuse.study.pipeline; "
             "sys.stdin.readline(); sys.exit(main(sys.argv[1:]))")


def _arguments(out: Path, workers: int) -> list[str]:
    return ["fuse-study", str(SAMPLE), "-o", str(out), "--workers", str(workers), "--quiet"]


class _Launcher:
    """Processes for the kill points, each started (imports done) one point ahead of its use."""

    def __init__(self, root: Path):
        self.root = root
        self.started: dict[int, tuple[subprocess.Popen, Path]] = {}

    def take(self, index: int) -> tuple[subprocess.Popen, Path]:
        if index not in self.started:
            self._start(index)
        if index + 1 < len(KILL_POINTS):
            self._start(index + 1)
        return self.started.pop(index)

    def _start(self, index: int) -> None:
        point, workers = KILL_POINTS[index]
        out = self.root / f"kill{index}" / "out"
        out.parent.mkdir()
        env = {**os.environ, PAUSE_ENV: point}
        process = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *_arguments(out, workers)], env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.started[index] = (process, out)

    def close(self) -> None:
        for process, _ in self.started.values():
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    launcher = _Launcher(tmp_path_factory.mktemp("killed"))
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Pixels of a run that nobody stopped: (DICOM stored values, NIfTI voxels)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert main(_arguments(out, 1)) == 0
    return _pixels(out)


def _pixels(out: Path) -> tuple[np.ndarray, np.ndarray]:
    dicom = np.stack([pydicom.dcmread(f).pixel_array for f in sorted((out / "dicom").glob("*.dcm"))])
    return dicom, sitk.GetArrayFromImage(sitk.ReadImage(str(out / "fused.nii.gz")))


def _wait_until_paused(process: subprocess.Popen, point: str, timeout_s: float = 240.0) -> None:
    """Read the run's stderr until it says it paused at *point*; fail with its output if it ends first."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = process.stderr.readline()
        if not line:
            process.wait()
            pytest.fail(f"the run ended (exit {process.returncode}) before {point}: {''.join(seen)[-2000:]}")
        seen.append(line)
        if line.strip() == f"medfuse: paused at {point}":
            return
    pytest.fail(f"the run did not reach {point} within {timeout_s} s: {''.join(seen)[-2000:]}")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(KILL_POINTS)),
                         ids=[f"{point}-w{workers}" for point, workers in KILL_POINTS])
def test_kill_9_then_rerun_into_the_same_out(index, launcher, uninterrupted):
    import psutil

    point, workers = KILL_POINTS[index]
    process, out = launcher.take(index)
    process.stdin.write("go\n")
    process.stdin.flush()
    _wait_until_paused(process, point)
    children = psutil.Process(process.pid).children(recursive=True)
    process.kill()  # SIGKILL: no handler, no clean-up runs
    process.wait()
    assert process.returncode == -9
    _, alive = psutil.wait_procs(children, timeout=30)  # local Dask workers: they exit as their parent is gone
    for child in alive:  # (within about a second where measured); none may outlive the test
        child.kill()
    left = _hidden(out.parent)
    if point.startswith(("map", "fuse", "write")):  # the scratch folder exists from the map stage on
        assert len(left) == 1 and left[0].startswith(".out.fusion-"), left
        assert (out.parent / left[0] / RUN_LOCK_NAME).is_file()
    else:
        assert left == []
    assert not out.exists()

    assert main(_arguments(out, 1)) == 0  # the rerun, into the same OUT
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no hidden scratch or partial folder
    assert not [p for p in out.rglob(".*")]  # nothing hidden inside OUT either
    dicom, nifti = _pixels(out)
    np.testing.assert_array_equal(dicom, uninterrupted[0])
    np.testing.assert_array_equal(nifti, uninterrupted[1])


@pytest.mark.slow
def test_a_live_runs_scratch_is_never_swept(tmp_path, uninterrupted):
    """A run paused in its fuse stage keeps its scratch while another run sweeps and writes the same OUT."""
    out = tmp_path / "out"
    env = {**os.environ, PAUSE_ENV: "fuse:16"}
    process = subprocess.Popen([sys.executable, "-c", "from medfuse.cli.app import main; main()",
                                *_arguments(out, 1)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        _wait_until_paused(process, "fuse:16")
        (live,) = _hidden(tmp_path)
        before = sorted(p.name for p in (tmp_path / live).iterdir())
        assert main(_arguments(out, 1)) == 0  # sweeps beside OUT, then writes OUT
        assert _hidden(tmp_path) == [live]
        assert sorted(p.name for p in (tmp_path / live).iterdir()) == before
        np.testing.assert_array_equal(_pixels(out)[0], uninterrupted[0])
    finally:
        process.kill()
        process.wait()
    assert sweep_stale_run_folders(out) == [tmp_path / live]  # dead now: swept
    assert _hidden(tmp_path) == []


def test_sweep_removes_only_abandoned_run_folders_of_this_output(tmp_path):
    out = tmp_path / "out"
    live = claim_run_folder(out, "fusion")
    dead = claim_run_folder(out, "fusion")
    (dead.path / "sources.npy").write_bytes(b"x" * 100)
    os.close(dead._lock_fd)  # as when its process died: the kernel drops the lock
    dead._lock_fd = None
    empty = tmp_path / ".out.fusion-abcd1234"  # its owner died between creating and locking it
    empty.mkdir()
    unmarked = tmp_path / ".out.fusion-efgh5678"  # no lock file: not known to be ours (e.g. a person's copy)
    unmarked.mkdir()
    (unmarked / "notes.txt").write_text("keep")
    other_output = claim_run_folder(tmp_path / "other", "fusion")
    os.close(other_output._lock_fd)
    other_output._lock_fd = None
    similar = [tmp_path / ".out.fusion-abc", tmp_path / ".out.partial-abcd1234", tmp_path / "out.fusion-abcd1234"]
    for path in similar:
        path.mkdir()
    link = tmp_path / ".out.fusion-link1234"
    link.symlink_to(dead.path.parent / "target", target_is_directory=True)
    (tmp_path / "target").mkdir()

    removed = sweep_stale_run_folders(out)

    assert sorted(removed) == sorted([dead.path, empty])
    assert live.path.is_dir() and (live.path / RUN_LOCK_NAME).is_file()
    assert (unmarked / "notes.txt").read_text() == "keep"
    assert other_output.path.is_dir() and all(p.is_dir() for p in similar) and link.is_symlink()
    # the live folder's lock is still held by this process: nobody else can take it
    fd = os.open(live.path / RUN_LOCK_NAME, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    live.remove()
    assert not live.path.exists()


def test_sweep_beside_a_missing_folder_removes_nothing(tmp_path):
    assert sweep_stale_run_folders(tmp_path / "missing" / "out") == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_next_workflow_pass_removes_a_killed_jobs_folder(tmp_path, capsys):
    """kill -9 of a workflow pass in a job's fuse stage; the next pass (another study) removes that job's folder."""
    from orthanc_support import copy_study

    slices = {"series1_t1": slice(20, 41), "series2_synthetic_contrast": slice(14, 28)}
    studies = {copy_study(SAMPLE, tmp_path / "incoming" / name, index, slices=slices) for name, index in
               (("a", 30), ("b", 31))}
    wf = tmp_path / "wf.yaml"
    # The alignment check doubts this cropped pair; what is tested here is the clean-up, not the hold.
    wf.write_text(f"""\
version: 1
name: killed-pass
schedule: "@hourly"
state_dir: {tmp_path / 'state'}
source:
  folder: {{path: {tmp_path / 'incoming'}, stable_after_s: 0}}
select:
  fixed: {{modality: MR, description: '(?i)t1', orientation: axial}}
  moving: {{modality: MR, description: '(?i)synthetic'}}
fusion: {{workers: 1}}
outputs: {{folder: {tmp_path / 'out'}, deliver_doubtful_registration: true}}
""")
    command = [sys.executable, "-c", "from medfuse.cli.app import main; main()", "workflow", "run", str(wf), "--json"]
    process = subprocess.Popen(command, env={**os.environ, PAUSE_ENV: "fuse:16"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_paused(process, "fuse:16")
    finally:
        process.kill()
        process.wait()
    work = tmp_path / "state" / "work"
    (job,) = work.iterdir()
    assert len(list(job.glob(".output.fusion-*"))) == 1  # the killed fuse-study's scratch
    killed = pydicom.dcmread(next((job / "input" / "fixed").iterdir()), stop_before_pixels=True).StudyInstanceUID
    (other,) = studies - {killed}

    assert main(["workflow", "run", str(wf), "--study", other, "--json"]) == 0
    assert not job.exists() and list(work.iterdir()) == []  # fetched images and scratch of the killed job: gone
    assert main(["workflow", "run", str(wf), "--json"]) == 0  # the killed study is fused on the next pass
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(studies)
    assert list(work.iterdir()) == []
    assert not list((tmp_path / "out").rglob(".*"))
