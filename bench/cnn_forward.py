#!/usr/bin/env python3
"""Forward-pass time of the CNN activity extractor (issue 3's speed target).

    python bench/cnn_forward.py [--threads 2] [--runs 20] [--model NAME --depth D ...]

For every shipped depth (or the given ones) it times ``extractor.activity``
on two 256x256 and two 512x512 sources -- the whole run-time path: grey to
3 channels, normalisation, padding, onnxruntime, crop, channel L1 norm --
and reports the median of ``--runs`` runs after one warm-up.  Targets: two
256x256 <= 10 ms, two 512x512 <= 40 ms on 2 cores.

Because the machine may be shared, each size also times a baseline in the
same run -- one 3x3 convolution of the same two images with
``scipy.ndimage.convolve``, interleaved run by run with the CNN so that both
see the same load -- and prints the ratio, which is comparable across
machines and loads where the absolute times are not.  It also reports the
median CPU time of the process per call: with ``--threads 1`` onnxruntime
computes in the calling thread, so CPU time is what the call costs on an idle
core however loaded the machine is (with more threads it sums the threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from scipy import ndimage

from medfuse.features import load_extractor
from medfuse.features.manifest import load_registry

TARGET_MS = {256: 10.0, 512: 40.0}


def _interleaved(func, baseline, runs: int) -> tuple[float, float, float]:
    """Median wall ms of *func*, median wall ms of *baseline*, median CPU ms of *func*."""
    func(), baseline()  # warm-up: session initialisation, memory arenas
    wall, base, cpu = [], [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        func()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        start = time.perf_counter()
        baseline()
        base.append(time.perf_counter() - start)
    return tuple(1e3 * statistics.median(v) for v in (wall, base, cpu))


def _baseline(images: np.ndarray):
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16
    return lambda: [ndimage.convolve(image, kernel, mode="reflect") for image in images]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per case, median reported (>= 10)")
    parser.add_argument("--model", action="append", help="model name (default: every shipped model)")
    parser.add_argument("--depth", type=int, action="append", help="depth(s) (default: every exported depth)")
    args = parser.parse_args(argv)
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    shipped, user = load_registry()
    models = {**(user.models if user else {}), **shipped.models}
    names = args.model or sorted(shipped.models)
    rng = np.random.default_rng(0)
    inputs = {size: rng.random((2, size, size), dtype=np.float32) for size in TARGET_MS}
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, onnxruntime threads {args.threads}, "
          f"median of {args.runs} runs; baseline = one 3x3 scipy convolution of the same two images")
    print(f"{'model':20} {'depth':>5} {'stride':>6} | {'sources':>9} {'wall ms':>8} {'baseline':>8} {'x base':>7} "
          f"{'CPU ms':>7} {'target':>7}")
    for name in names:
        entry = models[name]
        for depth in args.depth or sorted(entry.depths):
            extractor = load_extractor(name, depth, threads=args.threads)
            for size, images in inputs.items():
                wall, base, cpu = _interleaved(lambda: extractor.activity(images), _baseline(images), args.runs)
                verdict = "ok" if wall <= TARGET_MS[size] else "MISS"
                print(f"{name:20} {depth:5d} {extractor.stride:6d} | {'2x' + str(size) + '^2':>9} {wall:8.2f} "
                      f"{base:8.2f} {wall / base:7.1f} {cpu:7.2f} {TARGET_MS[size]:5.0f} {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
