"""The metrics stay in their documented ranges on the shared pairs."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse import metrics
from medfuse.core import baselines
from medfuse.io.images import read_image

PAIRS = [
    ("ct-mri", "ivrl_1"),
    ("ct-mri", "cdd_14"),
    ("pet-mri", "ivrl_1"),
    ("pet-mri", "cdd_20"),
    ("spect-mri", "cdd_25"),
    ("t1-t2", "ifcnn_c07"),
    ("ir-vis", "ifcnn_Camp"),
    ("multifocus", "lytro_triple_01"),
]


@pytest.mark.slow
@pytest.mark.parametrize("task, pair", PAIRS)
def test_metric_ranges_on_shared_pairs(shared_data, task, pair):
    folder = shared_data / "pairs2d" / task / pair
    # Crop to at most 256x256 (top-left) to keep the test quick on 2 cores.
    sources = [read_image(p)[:256, :256] for p in sorted(folder.iterdir())]
    luma = np.stack([metrics.to_gray255(s) / 255.0 for s in sources]).astype(np.float32)
    k = len(sources)
    for name in ("average", "max", "gff"):
        fused = np.rint(baselines.BASELINES[name](luma) * 255).astype(np.uint8)
        values = metrics.compute_all(sources, fused)
        for metric in ("VIFF", "QG", "QY", "QC", "QP"):
            assert 0.0 <= values[metric] <= 1.0, (name, metric, values[metric])
        assert 0.0 <= values["QMI"] <= k, (name, values["QMI"])
        assert 0.0 <= values["EN"] <= 8.0
        assert 0.0 <= values["MI"] <= 8.0 * k
