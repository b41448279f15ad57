"""Atomic file output: a file appears complete under its name, or not at all.

Every writer in medfuse (images, NIfTI, transforms, tables) goes through
:func:`atomic_output`, so an interrupted or failed write never leaves a
half-written file under the final name and never clobbers the previous one.
Importable from any layer, like :mod:`medfuse.errors`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from medfuse.errors import WriteError


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
