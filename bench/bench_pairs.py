"""The shared 2-D pairs the 2-D benchmarks time (imported by bench/fuse2d.py and bench/guided_filter.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medfuse.api import to_unit_float  # noqa: E402
from medfuse.io.images import read_image  # noqa: E402

SHARED = Path(os.environ.get("MEDFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))
#: A real 256x256 CT/MR pair and a real 512x512 IR/visible pair, by image size.
PAIRS = {
    256: ("ct-mri/ivrl_1/a.png", "ct-mri/ivrl_1/b.png"),
    512: ("ir-vis/ifcnn_Navi/a.png", "ir-vis/ifcnn_Navi/b.png"),
}


def load_image(name: str) -> np.ndarray:
    """One image of the shared pairs (path under pairs2d/) as float in [0, 1]."""
    return to_unit_float(read_image(SHARED / "pairs2d" / name))


def load_pair(size: int) -> np.ndarray:
    """The (2, size, size) float pair of that size."""
    stack = np.stack([load_image(name) for name in PAIRS[size]])
    assert stack.shape == (2, size, size), stack.shape
    return stack
