"""Time each fusion metric on a 256x256 pair, and the QC report's metrics table (run by hand, not in CI).

    python bench/metrics_speed.py [--pair ../shared/data/pairs2d/ct-mri/ivrl_1] [--repeats 5] [--report]

Prints, per metric, the median wall time over the repeats and its ratio to
the time of a 256x256 float64 FFT round trip measured in the same run (a
machine-speed baseline), so numbers from different machines can be compared.
The issue's target: each metric well under a second on a 256x256 pair.

``--report``: the QC report's metrics table (all eight metrics on three 512x512
slices: the shared TCIA CT windowed to [0, 1], an MR-like curve of it shifted
by a few pixels, and a blend of the two as the fused image), in this process
after one warm-up (compiled kernels loaded, filter bank built): median wall
and CPU time with 1 thread and with 2, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from medfuse import metrics
from medfuse.io.images import read_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_PAIR = SHARED / "pairs2d" / "ct-mri" / "ivrl_1"
CT_DIR = SHARED / "volumes" / "tcia_CCTH-A01_pet_ct" / "CT_images"


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _report_slices() -> tuple[list[np.ndarray], np.ndarray]:
    """Three 512x512 CT slices, an MR-like second source and a fused blend, as (Z, Y, X) float32 in [0, 1]."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT_DIR)))
    hu = sitk.GetArrayFromImage(reader.Execute())[[25, 50, 75]].astype(np.float32)
    ct = np.clip((hu + 160) / 400, 0, 1)
    mr = np.interp(np.roll(hu, (6, -4), (1, 2)), (-1024, -500, -100, 0, 60, 300, 3000),
                   (0, 0, 900, 500, 650, 100, 50)).astype(np.float32) / 900
    return [ct, mr], (0.7 * np.maximum(ct, mr) + 0.3 * np.minimum(ct, mr)).astype(np.float32)


def report_table(repeats: int) -> None:
    """The report's metrics table on three 512² slices, 1 and 2 threads, median wall and CPU seconds."""
    from medfuse.study.report import _metrics_section

    arrays, fused = _report_slices()
    _metrics_section(arrays, fused, threads=1)  # compiled kernels loaded, filter bank built
    for threads in (1, 2):
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            _metrics_section(arrays, fused, threads=threads)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(f"report metrics table, 3 slices of 512x512, {threads} thread(s): wall {statistics.median(walls):.3f} s, "
              f"CPU {statistics.median(cpus):.3f} s (median of {repeats}; load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, default=DEFAULT_PAIR, help="folder with a.* and b.* (256x256)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--report", action="store_true", help="time the QC report's metrics table instead")
    args = parser.parse_args()
    if args.report:
        report_table(args.repeats)
        return
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
