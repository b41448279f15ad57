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
``scipy.ndimage.convolve`` -- and prints the ratio, which is comparable
across machines and loads where the absolute times are not.
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


def _median_ms(func, runs: int) -> float:
    func()  # warm-up: session initialisation, memory arenas
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


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
    baseline_ms = {size: _median_ms(_baseline(images), args.runs) for size, images in inputs.items()}
    print(f"cpu count {os.cpu_count()}, onnxruntime threads {args.threads}, median of {args.runs} runs")
    print(f"baseline (one 3x3 scipy convolution of both images): "
          + ", ".join(f"2x{s}^2 {baseline_ms[s]:.2f} ms" for s in TARGET_MS))
    print(f"{'model':20} {'depth':>5} {'stride':>6} | {'2x256^2 ms':>10} {'x base':>7} {'target':>6} | "
          f"{'2x512^2 ms':>10} {'x base':>7} {'target':>6}")
    for name in names:
        entry = models[name]
        for depth in args.depth or sorted(entry.depths):
            extractor = load_extractor(name, depth, threads=args.threads)
            cells = []
            for size, images in inputs.items():
                ms = _median_ms(lambda: extractor.activity(images), args.runs)
                verdict = "ok" if ms <= TARGET_MS[size] else "MISS"
                cells.append(f"{ms:10.2f} {ms / baseline_ms[size]:7.1f} {verdict:>6}")
            print(f"{name:20} {depth:5d} {extractor.stride:6d} | {cells[0]} | {cells[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
