"""Shared fixtures: where the shared test data lives, and skips when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDFUSE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data (2-D pairs, DICOM series, volumes).

    Tests that use it are skipped, with the reason, where it is absent.
    """
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set MEDFUSE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
