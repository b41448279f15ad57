"""One run at a time per workflow: an ``fcntl`` lock on ``<state_dir>/run.lock``.

The kernel drops the lock when the process dies, even by SIGKILL, so a
crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from medfuse.errors import WorkflowError


@contextmanager
def workflow_lock(state_dir: Path, name: str, *, wait_s: float = 0.0):
    """Hold the workflow's run lock for the ``with`` block.

    Parameters
    ----------
    state_dir : Path
        The workflow's state folder (created when missing).
    name : str
        Workflow name, for the message.
    wait_s : float
        How long to wait for a running pass to finish before giving up.

    Raises
    ------
    WorkflowError
        When another run of the same workflow holds the lock past *wait_s*.
    """
    # Owner-only: the state folder holds retrieved patient images while a job runs.
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkflowError(
                        f"another run of workflow '{name}' is in progress (lock {path}); not starting a second one"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
