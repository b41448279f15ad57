"""Why does a fusion configuration lose on QG/QY/QC? Measure its internals.

    python bench/fusion_diagnostics.py [--task ct-mri] [--preset paper] [--set key=value ...]

For every pair of a task (default CT-MRI), with the chosen configuration:

* detail weights after the guided filter: share of head pixels (either
  source > 0) where a weight leaves [0, 1] by more than 0.01, and the most
  extreme values (the paper does not clip them);
* softmax saturation: share of head pixels whose unrefined CNN softmax gives
  one source more than 0.99 (the paper's softmax has no temperature, and the
  activities are L1 norms over many channels, so it acts as a hard max);
* layer split: share of each source's variance inside the head that the box
  decomposition puts into the detail layer (a large box pushes anatomy,
  not just edges, into the detail layer);
* the share of head pixels where the fused image is darker than the brighter
  source by more than 10 grey levels (contrast the fusion gives up, which
  pixel-max keeps).

Prints one line per pair and the means. Run by hand; uses 1 CPU thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medfuse.api import default_extractor, fuse
from medfuse.cli.evaluate import _parse_value, find_pairs
from medfuse.core.config import FusionConfig
from medfuse.core.decomposition import decompose
from medfuse.core.weights import softmax_weights, upsample_nearest
from medfuse.io.images import read_image
from medfuse.metrics import to_gray255

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs2d"


def diagnose(luma: np.ndarray, config: FusionConfig) -> dict[str, float]:
    head = luma.max(axis=0) > 0
    result = fuse(list(luma), config=config)
    dw = result.detail_weights.reshape(luma.shape)
    outside = ((dw < -0.01) | (dw > 1.01)).any(axis=0) & head
    extractor = default_extractor(config.model, config.depth)
    activity = extractor.activity(luma.astype(np.float32))
    soft = upsample_nearest(softmax_weights(activity), luma.shape[1:], extractor.stride)
    saturated = (soft.max(axis=0) > 0.99) & head
    _, detail = decompose(luma.astype(np.float32), config.decomposition, config.decomposition_size, config.decomposition_eps)
    detail_share = np.mean([detail[k][head].var() / max(luma[k][head].var(), 1e-12) for k in range(len(luma))])
    lost = (luma.max(axis=0) - result.fused > 10 / 255) & head
    return {
        "w_outside": outside.sum() / head.sum(),
        "w_min": float(dw.min()),
        "w_max": float(dw.max()),
        "soft_sat": saturated.sum() / head.sum(),
        "detail_var": float(detail_share),
        "darker": lost.sum() / head.sum(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ct-mri")
    parser.add_argument("--preset", choices=("paper", "default"), default="paper")
    parser.add_argument("--set", action="append", default=[], help="FusionConfig override key=value")
    args = parser.parse_args()
    config = FusionConfig.paper() if args.preset == "paper" else FusionConfig()
    overrides = dict(item.split("=", 1) for item in args.set)
    if overrides:
        config = config.replace(**{k: _parse_value(v) for k, v in overrides.items()})
    rows = []
    for task, pair, paths in find_pairs(DATA / args.task):
        luma = np.stack([to_gray255(read_image(p)) / 255.0 for p in paths])
        row = diagnose(luma, config)
        rows.append(row)
        print(f"{pair:12s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()))
    print(f"{'mean':12s} " + " ".join(f"{k}={np.mean([r[k] for r in rows]):.3f}" for k in rows[0]))


if __name__ == "__main__":
    main()
