"""Time each fusion metric on a 256x256 pair (run by hand, not in CI).

    python bench/metrics_speed.py [--pair ../shared/data/pairs2d/ct-mri/ivrl_1] [--repeats 5]

Prints, per metric, the median wall time over the repeats and its ratio to
the time of a 256x256 float64 FFT round trip measured in the same run (a
machine-speed baseline), so numbers from different machines can be compared.
The issue's target: each metric well under a second on a 256x256 pair.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from medfuse import metrics
from medfuse.io.images import read_image

DEFAULT_PAIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs2d" / "ct-mri" / "ivrl_1"


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, default=DEFAULT_PAIR, help="folder with a.* and b.* (256x256)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sources = [read_image(p) for p in sorted(args.pair.iterdir())[:2]]
    fused = np.maximum(*(np.rint(metrics.to_gray255(s)).astype(np.uint8) for s in sources))
    h, w = fused.shape
    probe = np.random.default_rng(0).random((h, w))
    baseline = _median_seconds(lambda: np.fft.ifft2(np.fft.fft2(probe)), max(args.repeats, 20))
    print(f"pair {args.pair} ({w}x{h}); baseline FFT round trip {baseline * 1e3:.2f} ms")
    print(f"{'metric':6s} {'median ms':>10s} {'x FFT':>8s}")
    total = 0.0
    for name, fn in metrics.METRICS.items():
        seconds = _median_seconds(lambda fn=fn: fn(sources, fused), args.repeats)
        total += seconds
        print(f"{name:6s} {seconds * 1e3:10.1f} {seconds / baseline:8.0f}")
    print(f"{'all':6s} {total * 1e3:10.1f} {total / baseline:8.0f}")


if __name__ == "__main__":
    main()
