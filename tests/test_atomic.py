"""Atomic output: complete under its name or absent; the mode open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from medfuse.atomic import atomic_open, atomic_output, check_folder_creatable
from medfuse.errors import WriteError


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_mode_follows_the_umask_like_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_open(tmp_path / "out.txt", "w") as stream:
            stream.write("ok")
        with open(tmp_path / "plain.txt", "w") as stream:
            stream.write("ok")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "out.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_a_failing_writer_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("previous")
    with pytest.raises(ZeroDivisionError):
        with atomic_open(target, "w") as stream:
            stream.write("half")
            1 / 0
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_the_temporary_keeps_the_final_extension(tmp_path):
    with atomic_output(tmp_path / "moved.nii.gz") as temporary:
        assert temporary.name.endswith("moved.nii.gz") and temporary.name.startswith(".")
        temporary.write_bytes(b"x")
    assert (tmp_path / "moved.nii.gz").read_bytes() == b"x"


def test_missing_folder_and_directory_target_are_write_errors(tmp_path):
    with pytest.raises(WriteError, match="does not exist"):
        with atomic_output(tmp_path / "absent" / "f.png"):
            pass
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(WriteError, match="is not a folder"):
        with atomic_output(tmp_path / "plain-file" / "f.png"):
            pass
    (tmp_path / "folder").mkdir()
    with pytest.raises(WriteError, match="is a directory"):
        with atomic_output(tmp_path / "folder"):
            pass


def test_a_folder_to_create_needs_a_writable_folder_above_it_not_its_parents(tmp_path):
    check_folder_creatable(tmp_path / "not" / "yet" / "there")  # missing folders are created when writing
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    with pytest.raises(WriteError, match="notes.txt is not a folder"):
        check_folder_creatable(blocker / "out")
    with pytest.raises(WriteError, match="notes.txt is not a folder"):
        check_folder_creatable(blocker / "deeper" / "out")
