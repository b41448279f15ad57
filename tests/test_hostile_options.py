"""Options that make no sense are refused before any input is read (issue 16).

``--window C,W`` is checked up front by fuse-study and fuse-volumes even
when no CT is fused (the window would be ignored, so a typo would pass
unseen): a zero, negative or non-finite width, or a non-finite centre, is
exit 2 with one line, and nothing is created at the output path.
"""

from __future__ import annotations

import time

import pytest
from hostile_support import assert_refused, run_cli

PET_CT = "volumes/tcia_CCTH-A01_pet_ct"
NIFTI = ("volumes/niivue_chris_t1/chris_t1.nii.gz", "volumes/niivue_chris_PD/chris_PD.nii.gz")

WINDOWS = {
    "40,-80": "width must be positive",
    "40,0": "width must be positive",
    "nan,80": "centre and width must be finite numbers",
    "40,inf": "centre and width must be finite numbers",
    "1e999,80": "centre and width must be finite numbers",
    "40": "use one of",
    "forty,eighty": "centre and width must be numbers",
}


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_fuse_study_refuses_a_senseless_window_before_reading(shared_data, tmp_path, capsys, window):
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_cli(capsys, ["fuse-study", shared_data / PET_CT, "-o", out, "--window", window])
    assert_refused(result, 2, "window", WINDOWS[window], output=out)
    assert time.monotonic() - started < 5  # refused before the folder is scanned and read


def test_fuse_volumes_refuses_a_senseless_window_before_reading(shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli(capsys, ["fuse-volumes", *(shared_data / p for p in NIFTI), "-o", out, "--window", "40,-1"])
    assert_refused(result, 2, "window centre 40, width -1: width must be positive", output=out)
