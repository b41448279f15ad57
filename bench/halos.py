"""Halo figures: how often fused pixels are lit where every source is black (run by hand).

    python bench/halos.py [--data ../shared/data/pairs2d]

For every shared medical pair (CT-MRI, PET-MRI, SPECT-MRI, MR T1-T2) and
configuration, the pixels where every source's 8-bit luma is 0, and the
share of them whose fused 8-bit luma is above 1. Prints, per configuration,
how many pairs exceed 0.1 % (the criterion of docs/metrics.md), the worst
share and the brightest such pixel. Fusion is on the sources as read (colour
PET/SPECT through medfuse.fuse's luma path), the output rounded to 8 bits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medfuse.api import fuse, to_unit_float
from medfuse.core.colour import rgb_to_ycbcr
from medfuse.core.config import FusionConfig
from medfuse.io.images import read_image

MEDICAL = ("ct-mri", "pet-mri", "spect-mri", "t1-t2")
CONFIGS = {
    "paper": FusionConfig.paper(),
    "previous default": FusionConfig.photo().replace(envelope_clip=False),
    "photo": FusionConfig.photo(),
    "default": FusionConfig(),
}


def luma255(unit: np.ndarray) -> np.ndarray:
    unit = np.rint(np.clip(unit, 0, 1) * 255.0) / 255.0
    return np.rint((rgb_to_ycbcr(unit)[..., 0] if unit.ndim == 3 else unit) * 255.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pairs2d")
    args = parser.parse_args()
    pairs = [p for task in MEDICAL for p in sorted((args.data / task).iterdir()) if p.is_dir()]
    print(f"{len(pairs)} medical pairs")
    print(f"{'configuration':18s} {'pairs > 0.1 %':>14s} {'worst share':>12s} {'brightest':>10s}")
    for name, config in CONFIGS.items():
        over, worst, brightest = 0, 0.0, 0
        for pair in pairs:
            images = [to_unit_float(read_image(p)) for p in sorted(pair.glob("[abc].*"))]
            black = np.all([luma255(im) == 0 for im in images], axis=0)
            if not black.any():
                continue
            fused = luma255(fuse(images, config=config).fused)[black]
            share = float(np.mean(fused > 1))
            over += share > 0.001
            worst = max(worst, share)
            brightest = max(brightest, int(fused.max()))
        print(f"{name:18s} {over:>6d} of {len(pairs):<5d} {worst:>11.2%} {brightest:>10d}")


if __name__ == "__main__":
    main()
