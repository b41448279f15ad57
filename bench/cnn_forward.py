#!/usr/bin/env python3
"""Forward-pass time of the CNN activity extractor (issue 3's speed target).

    python bench/cnn_forward.py [--threads 2] [--runs 20] [--model NAME --depth D ...] [--reduction 2]
    python bench/cnn_forward.py --session-options [--threads 1]
    python bench/cnn_forward.py --quality

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
``--reduction 2`` times the extractor on images halved first (2 x 2 block
means; :class:`Reduced`, a bench-only wrapper: measured below, not adopted).

``--session-options`` times the default model on two 512x512 images with
onnxruntime session variants (graph optimisation level, CPU memory arena,
memory pattern, thread spinning), interleaved call by call, against the
session options the registry uses.

``--quality`` fuses every shared medical pair (256x256) with the default
configuration twice, with the CNN on the full images and on images reduced
by 2 (:class:`Reduced`), scores both with the eight metrics of :mod:`medfuse.metrics`, and
prints per task the two means and the mean paired difference with twice its
standard error (a difference inside that band is not distinguishable from
pair-to-pair noise).
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

MEDICAL_TASKS = ("ct-mri", "pet-mri", "spect-mri", "t1-t2")


class Reduced:
    """An activity extractor that runs *extractor* on images reduced by *factor* (f x f block means).

    Images are mirror-padded bottom/right to a multiple of f first; the activity cells are then f times
    coarser (stride f·s), which the fusion's nearest upsampling and guided filter refine. About f² less
    CNN work. Bench-only: the quality measurement (``--quality``) did not keep it (docs/bench-fuse2d.md).
    """

    def __init__(self, extractor, factor: int = 2):
        self.extractor = extractor
        self.factor = factor
        self.stride = extractor.stride * factor
        self.name = f"{extractor.name}/{factor}"

    def activity(self, images: np.ndarray) -> np.ndarray:
        n, height, width = images.shape
        f = self.factor
        padded = np.pad(images, ((0, 0), (0, -height % f), (0, -width % f)), mode="symmetric")
        blocks = padded.reshape(n, padded.shape[1] // f, f, padded.shape[2] // f, f)
        return self.extractor.activity(blocks.mean(axis=(2, 4), dtype=np.float32))

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
    parser.add_argument("--reduction", type=int, default=1, help="reduce the images by this factor first (default 1)")
    parser.add_argument("--session-options", action="store_true", help="time onnxruntime session variants instead")
    parser.add_argument("--quality", action="store_true", help="metrics with full vs 2x reduced CNN input instead")
    args = parser.parse_args(argv)
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    if args.quality:
        return _quality()
    if args.session_options:
        return _session_options(args.threads, args.runs)
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
            if args.reduction > 1:
                extractor = Reduced(extractor, args.reduction)
            for size, images in inputs.items():
                wall, base, cpu = _interleaved(lambda: extractor.activity(images), _baseline(images), args.runs)
                verdict = "ok" if wall <= TARGET_MS[size] else "MISS"
                print(f"{name:20} {depth:5d} {extractor.stride:6d} | {'2x' + str(size) + '^2':>9} {wall:8.2f} "
                      f"{base:8.2f} {wall / base:7.1f} {cpu:7.2f} {TARGET_MS[size]:5.0f} {verdict}")
    return 0


def _session_options(threads: int, runs: int) -> int:
    import onnxruntime

    from medfuse.features.extractor import OnnxActivityExtractor
    from medfuse.features.registry import _models, _read_verified

    models, shipped = _models()
    entry = models[shipped.default]
    depth = entry.default_depth
    data = _read_verified(entry, depth)
    row = entry.depths[depth]
    level = onnxruntime.GraphOptimizationLevel

    def session(graph=level.ORT_ENABLE_ALL, arena=True, pattern=True, spinning=True):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = graph
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.enable_cpu_mem_arena = arena
        options.enable_mem_pattern = pattern
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        made = onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        return OnnxActivityExtractor(made, model=entry.name, depth=depth, stride=row.stride, channels=row.channels,
                                     normalisation=entry.normalisation, threads=threads, sha256=row.sha256,
                                     reload=load_extractor)

    variants = {
        "registry's options (ENABLE_ALL, arena, pattern, spinning)": session(),
        "ENABLE_EXTENDED": session(graph=level.ORT_ENABLE_EXTENDED),
        "ENABLE_BASIC": session(graph=level.ORT_ENABLE_BASIC),
        "no CPU memory arena": session(arena=False),
        "no memory pattern": session(pattern=False),
        "no thread spinning": session(spinning=False),
    }
    images = np.random.default_rng(0).random((2, 512, 512), dtype=np.float32)
    reference = next(iter(variants.values())).activity(images)
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for extractor in variants.values():
        extractor.activity(images)
    for _ in range(runs):
        for name, extractor in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            out = extractor.activity(images)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    base = statistics.median(wall[next(iter(variants))])
    print(f"two 512x512 images, onnxruntime {onnxruntime.__version__}, intra-op threads {threads}, load average "
          f"{os.getloadavg()[0]:.1f}; median of {runs} interleaved calls")
    print("| session | wall ms | CPU ms | x registry's | max |activity − registry's| |")
    print("|---|---|---|---|---|")
    for name, extractor in variants.items():
        difference = float(np.abs(extractor.activity(images) - reference).max())
        print(f"| {name} | {1e3 * statistics.median(wall[name]):.2f} | {1e3 * statistics.median(cpu[name]):.2f} "
              f"| {statistics.median(wall[name]) / base:.2f} | {difference:.1e} |", flush=True)
    del out
    return 0


def _quality() -> int:
    from pathlib import Path

    import medfuse
    from medfuse.io.images import read_image
    from medfuse.metrics import METRIC_NAMES, compute_all

    shared = Path(os.environ.get("MEDFUSE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    full = load_extractor()
    reduced = Reduced(full, 2)
    print(f"default configuration; CNN {full.name} on the full images vs {reduced.name}; paired differences "
          "(reduced − full) with ± 2 standard errors over the pairs")
    print("| task (pairs) | metric | full | reduced | difference | ± 2 SE | within noise |")
    print("|---|---|---|---|---|---|---|")
    everything: dict[str, list[tuple[float, float]]] = {m: [] for m in METRIC_NAMES}
    for task in MEDICAL_TASKS:
        scores: dict[str, list[tuple[float, float]]] = {m: [] for m in METRIC_NAMES}
        for folder in sorted((shared / "pairs2d" / task).iterdir()):
            images = [read_image(p) for p in sorted(folder.iterdir()) if p.is_file()]
            one = compute_all(images, medfuse.fuse(images, extractor=full).fused)
            two = compute_all(images, medfuse.fuse(images, extractor=reduced).fused)
            for metric in METRIC_NAMES:
                scores[metric].append((one[metric], two[metric]))
                everything[metric].append((one[metric], two[metric]))
        for label, table in ((task, scores), *((("all", everything),) if task == MEDICAL_TASKS[-1] else ())):
            for metric in METRIC_NAMES:
                pairs = np.asarray(table[metric])
                diff = pairs[:, 1] - pairs[:, 0]
                band = 2 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
                print(f"| {label} ({len(diff)}) | {metric} | {pairs[:, 0].mean():.4f} | {pairs[:, 1].mean():.4f} "
                      f"| {diff.mean():+.4f} | {band:.4f} | {'yes' if abs(diff.mean()) <= band else 'no'} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
