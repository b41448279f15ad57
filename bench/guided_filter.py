"""Benchmark the compiled guided filter against OpenCV's and the NumPy reference.

Run by hand (not a test):  python bench/guided_filter.py [--runs 30]

Needs ``cv2.ximgproc`` (``pip install opencv-contrib-python-headless``, the
``bench`` extra; medfuse itself never imports OpenCV). For a real 256x256
CT/MR pair and a real 512x512 IR/visible pair (guide = first source, input =
second source, float32), r in {7, 45} and eps in {1e-6, 0.1}, prints one
markdown row with the median wall-clock ms of

* ours: :func:`medfuse.core.filters.guided_filter` (numba kernels, float32 result),
* OpenCV: ``cv2.ximgproc.guidedFilter`` on one thread (``cv2.setNumThreads(1)``),
* the NumPy reference it replaced (:mod:`medfuse.core.kernels_reference`),

all timed in this run, interleaved call by call, with the ratios ours /
OpenCV and ours / reference, and the largest differences from the float64
reference: ours over the whole image; OpenCV's over the interior only (at
least 2r+1 pixels from the edge: OpenCV mirrors at the border, we average
over the inside part of each window, so they differ near the edge by design).

Medians of ``--runs`` calls each after two warm-up calls. Timings on a shared
machine vary with its load: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from bench_pairs import PAIRS, load_image  # puts the repository on sys.path
from medfuse.core import kernels_reference  # noqa: E402
from medfuse.core.filters import guided_filter  # noqa: E402


def interleaved_ms(functions: dict, runs: int) -> dict[str, float]:
    """Median wall-clock ms of each function, called in turn (A, B, C, A, B, C, ...) after two warm-ups each."""
    for function in functions.values():
        function()
        function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - started)
    return {name: float(np.median(values) * 1e3) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed calls per filter (median)")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average before: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; numpy {np.__version__}, OpenCV {cv2.__version__} "
          "(1 thread)")
    print("| size | r | eps | ours ms | OpenCV ms | NumPy reference ms | ours / OpenCV | ours / reference "
          "| max \\|ours − float64 ref\\| | max \\|OpenCV − float64 ref\\| (interior) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, names in PAIRS.items():
        guide, src = (load_image(name) for name in names)
        assert guide.shape == (size, size) and guide.dtype == np.float32
        for radius in (7, 45):
            for eps in (1e-6, 0.1):
                times = interleaved_ms({
                    "ours": lambda: guided_filter(guide, src, radius, eps, dtype=np.float32),
                    "opencv": lambda: cv2.ximgproc.guidedFilter(guide, src, radius, eps),
                    "reference": lambda: kernels_reference.guided_filter(guide, src, radius, eps, dtype=np.float32),
                }, args.runs)
                reference = kernels_reference.guided_filter(guide, src, radius, eps)  # float64
                ours = guided_filter(guide, src, radius, eps, dtype=np.float32).astype(np.float64)
                theirs = cv2.ximgproc.guidedFilter(guide, src, radius, eps).astype(np.float64)
                inner = slice(2 * radius + 1, size - 2 * radius - 1)
                ours_err = np.abs(ours - reference).max()
                cv_err = np.abs(theirs - reference)[inner, inner].max()
                print(f"| {size}² | {radius} | {eps:g} | {times['ours']:.2f} | {times['opencv']:.2f} "
                      f"| {times['reference']:.2f} | {times['ours'] / times['opencv']:.2f} "
                      f"| {times['ours'] / times['reference']:.2f} | {ours_err:.1e} | {cv_err:.1e} |", flush=True)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
