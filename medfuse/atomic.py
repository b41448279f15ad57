"""Atomic file output: a file appears complete under its name, or not at all.

Every writer in medfuse (images, NIfTI, transforms, tables) goes through
:func:`atomic_output`, so an interrupted or failed write never leaves a
half-written file under the final name and never clobbers the previous one.
Importable from any layer, like :mod:`medfuse.errors`.

A job's hidden working folder beside its output (fuse-study's scratch
folder) comes from :func:`claim_run_folder`: the run holds an ``flock`` on a
lock file inside it for as long as it lives, and the kernel drops that lock
when the process dies, even by ``kill -9``. :func:`sweep_stale_run_folders`,
called by the next run for the same output, removes the run folders whose
lock nobody holds, and only those (see the functions for the exact rules).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from medfuse.errors import WriteError, os_error_reason

#: The lock file inside a run folder, held (``flock``) by the run that owns the folder.
RUN_LOCK_NAME = ".medfuse-run.lock"
#: Kinds of run folders (the word between the output's name and the random part).
RUN_FOLDER_KINDS = ("fusion",)
#: Test hook: the name of a :func:`crash_point` at which the process stops and waits to be killed.
PAUSE_ENV = "MEDFUSE_TEST_PAUSE_AT"


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside *path*; on success it becomes *path*.

    The temporary file is created empty with mode ``0o666 & ~umask`` — the
    mode a plain ``open()`` would give, unlike ``tempfile.mkstemp``'s 0600,
    which the rename would keep. After the body, the file is flushed to disk
    and renamed over *path* (atomic on POSIX). If the body raises, the
    temporary file is removed and *path* is left as it was.

    Raises
    ------
    WriteError
        When the folder is missing or not writable, or the file system
        refuses the write or the rename (one-line message naming *path*).
    """
    path = Path(path)
    temporary = _create_beside(path)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """:func:`atomic_output`, yielding the temporary file opened with *mode* ('w' or 'wb' ...)."""
    with atomic_output(path) as temporary, open(temporary, mode, **kwargs) as handle:
        yield handle


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work is spent, an output *path* that cannot be written.

    Raises
    ------
    WriteError
        The folder is missing, not a folder or not writable, or *path* is a folder.
    """
    path = Path(path)
    _check_folder(path, path.parent)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory")


def check_folder_creatable(folder: str | os.PathLike) -> None:
    """Refuse, before any work is spent, an output *folder* that could not be created.

    Missing folders on the way are fine (the writer creates them); the
    nearest existing one above *folder* must be a writable folder. Whether
    *folder* itself may already exist is the caller's rule.

    Raises
    ------
    WriteError
        A file in the path, or a folder that is not writable.
    """
    folder = Path(folder)
    existing = folder.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _check_folder(folder, existing)


def _check_folder(path: Path, folder: Path) -> None:
    if not folder.exists():
        raise WriteError(f"cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise WriteError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write {path}: folder {folder} is not writable")


def _create_beside(path: Path) -> Path:
    check_writable(path)
    while True:
        # Hidden, and ending in the final name so that writers that choose a
        # format by extension (SimpleITK, nibabel) pick the right one.
        temporary = path.parent / f".part-{secrets.token_hex(6)}-{path.name}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
        os.close(fd)
        return temporary


class RunFolder:
    """A hidden folder beside an output, owned by this process while its lock is held.

    Attributes
    ----------
    path : Path
        ``<parent>/.<output name>.<kind>-<8 random characters>``.
    """

    def __init__(self, path: Path, lock_fd: int):
        self.path = path
        self._lock_fd = lock_fd

    def remove(self) -> None:
        """Delete the folder, then release its lock (idempotent)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None


def claim_run_folder(beside: str | os.PathLike, kind: str) -> RunFolder:
    """Create a hidden run folder of *kind* beside the output path *beside*, locked by this process.

    The folder is ``.<name>.<kind>-XXXXXXXX`` (:func:`tempfile.mkdtemp`, mode
    0700) in the output's parent folder, which must exist. Inside it,
    ``.medfuse-run.lock`` is held with ``flock(LOCK_EX)`` until
    :meth:`RunFolder.remove` or the process's end, however it ends. Creating
    the folder and taking its lock happen under a shared ``flock`` on the
    parent folder, so a sweep (which holds it exclusively) never sees a
    folder of a live run without its lock.

    Raises
    ------
    WriteError
        The folder or its lock file cannot be created (the OS reason).
    """
    if kind not in RUN_FOLDER_KINDS:
        raise ValueError(f"run folder kind must be one of {RUN_FOLDER_KINDS}, got {kind!r}")
    beside = Path(beside)
    try:
        with _folder_lock(beside.parent, fcntl.LOCK_SH, required=False):
            path = Path(tempfile.mkdtemp(prefix=f".{beside.name}.{kind}-", dir=beside.parent))
            try:
                fd = os.open(path / RUN_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, f"{os.getpid()}\n".encode())  # for a person looking; the lock is what counts
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
    except OSError as exc:
        raise WriteError(f"cannot create a {kind} folder beside {beside}: {os_error_reason(exc)}") from exc
    return RunFolder(path, fd)


def sweep_stale_run_folders(beside: str | os.PathLike) -> list[Path]:
    """Remove the run folders beside *beside* left by runs that are no longer alive; return them.

    A folder is removed only when all of these hold: it is a real folder
    (not a link) in *beside*'s parent named ``.<name>.<kind>-XXXXXXXX``
    exactly as :func:`claim_run_folder` names them for this output, and
    either its lock file exists and nobody holds its lock (the owner died),
    or it is empty (its owner died between creating it and locking it).
    A folder of a live run (lock held), a folder without the lock file that
    holds anything, and every other name are left alone. The sweep holds the
    parent folder's ``flock`` exclusively, so no run is between creating a
    folder and locking it meanwhile. Where the parent cannot be read or
    locked, nothing is removed.
    """
    beside = Path(beside)
    pattern = re.compile(rf"\.{re.escape(beside.name)}\.(?:{'|'.join(RUN_FOLDER_KINDS)})-[a-z0-9_]{{8}}")
    removed: list[Path] = []
    try:
        with _folder_lock(beside.parent, fcntl.LOCK_EX):
            for entry in os.scandir(beside.parent):
                if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False) and _abandoned(Path(entry.path)):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(Path(entry.path))
    except OSError:  # no parent folder, or one this user cannot read or lock: nothing of ours to judge there
        return removed
    return removed


def crash_point(name: str) -> None:
    """Test hook for crash tests: stop here when ``MEDFUSE_TEST_PAUSE_AT`` names this point.

    With the variable unset (always, outside tests) this does nothing. When it
    equals *name*, one line ``medfuse: paused at NAME`` goes to stderr and the
    process waits for a signal forever, so a test can ``kill -9`` it at exactly
    this point (tests/test_killed_runs.py) instead of sleeping and hoping.
    """
    if os.environ.get(PAUSE_ENV) != name:
        return
    print(f"medfuse: paused at {name}", file=sys.stderr, flush=True)
    while True:
        signal.pause()


def with_crash_points(stage: str, advance: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """A progress callback ``advance(units, of)`` followed by :func:`crash_point` ``"<stage>:<units so far>"``."""
    done = [0]

    def step(units: int, of: int) -> None:
        advance(units, of)
        done[0] += units
        crash_point(f"{stage}:{done[0]}")

    return step


def run_folder_in_use(folder: str | os.PathLike) -> bool:
    """True while a live process holds the lock of the run folder *folder* (False: no lock file, or not held)."""
    try:
        fd = os.open(Path(folder) / RUN_LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: a live run holds it
        return True
    finally:
        os.close(fd)  # also releases the lock if this call took it
    return False


def _abandoned(folder: Path) -> bool:
    """True when *folder*'s owner is gone: its lock file is not locked, or it has no lock file and is empty."""
    if (folder / RUN_LOCK_NAME).is_file():
        return not run_folder_in_use(folder)
    try:
        return not (folder / RUN_LOCK_NAME).is_symlink() and not any(folder.iterdir())
    except OSError:
        return False


@contextmanager
def _folder_lock(folder: Path, operation: int, *, required: bool = True) -> Iterator[None]:
    """Hold ``flock(operation)`` on *folder* itself (a directory descriptor) for the ``with`` block.

    With ``required=False`` a folder that cannot be opened or locked (e.g. an
    ``flock`` that a network file system refuses) is not locked, and the
    block runs anyway.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        if required:
            raise
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, operation)
            except OSError:
                if required:
                    raise
        yield
    finally:
        if fd is not None:
            os.close(fd)
