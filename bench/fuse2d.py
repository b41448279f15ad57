"""Benchmark the 2-D fusion core: per-stage times, and the JIT cost of its compiled kernels.

Run by hand (not a test):  python bench/fuse2d.py [--runs 15] [--threads N]
                           python bench/fuse2d.py --jit

Prints a markdown table of the per-stage median wall-clock time (ms) of
``fuse_stack`` on a real 256x256 CT/MR pair and a real 512x512 IR/visible
pair: the core without the CNN (detail rule max-abs) in the paper's
configuration and the two-scale rule with box 7 (the default before the
pyramid rule), both with the shipped CNN, ``FusionConfig()`` (whatever the
default rule is) with the CNN, the core without the CNN again with
``--threads`` threads (default 2; the other rows use 1),
``medfuse.fuse`` (the public call: 2 threads, checks, colour handling) with
the default configuration and the CNN, and two baselines measured in the
same run: the same fusions on the NumPy reference filters the compiled
kernels replaced (:mod:`medfuse.core.kernels_reference`, "x reference"),
and a plain pixel-wise average ("x average"). The guided filter alone
against OpenCV: ``bench/guided_filter.py``.

With ``--jit`` it instead measures what compilation costs a new process:
three child processes fuse the 256x256 pair with the CNN (two-scale rule,
box 7: every compiled kernel runs), the first with an
empty kernel cache (the first-ever compilation), the next two with the cache
it left; each reports its import time, its first fusion and a warm fusion
(the CNN session is created and run once before the first fusion is timed,
so only the kernels' start-up is in the difference).

With ``--quality`` it instead scores configuration variants (features on
source vs detail, clipped vs unclipped detail weights, the ablation's rules)
with the eight metrics of :mod:`medfuse.metrics` on every shared medical pair
and prints the means per task, plus the range of the refined detail weights.

Medians of ``--runs`` runs after two warm-up runs. Timings on a shared
machine vary with its load: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bench_pairs import PAIRS, SHARED, load_pair  # puts the repository on sys.path
from medfuse.core.config import FusionConfig  # noqa: E402
from medfuse.core import decomposition, fusion, kernels_reference  # noqa: E402
from medfuse.core.fusion import STAGES, fuse_stack  # noqa: E402
from medfuse.io.images import read_image  # noqa: E402


def median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1e3)


def time_fusion(stack: np.ndarray, config: FusionConfig, extractor, runs: int, threads: int = 1) -> dict[str, float]:
    for _ in range(2):
        fuse_stack(stack, config, extractor, threads=threads)
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = fuse_stack(stack, config, extractor, threads=threads)
        totals.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        for stage in STAGES:
            # The pyramid rule's stages (cnn, decision, blending) are not the two-scale rule's; the total covers both.
            per_stage[stage].append(result.timings.get(stage, 0.0))
    out = {stage: median_ms(values) for stage, values in per_stage.items()}
    out["total"] = median_ms(totals)
    out["cpu"] = median_ms(cpu)
    return out


def time_call(function, runs: int, *, cpu: bool = False) -> float | tuple[float, float]:
    """Median wall-clock ms of ``function()``; with ``cpu``, also the median process CPU ms."""
    for _ in range(2):
        function()
    samples, cpu_samples = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()
        samples.append(time.perf_counter() - started)
        cpu_samples.append(time.process_time() - started_cpu)
    return (median_ms(samples), median_ms(cpu_samples)) if cpu else median_ms(samples)


class reference_filters:
    """Within this block the fusion core runs the NumPy reference filters instead of the compiled kernels."""

    def __enter__(self):
        self.saved = (fusion.GuideWindows, decomposition.box_mean, decomposition.guided_filter,
                      decomposition.gaussian_blur)
        fusion.GuideWindows = kernels_reference.GuideWindows
        decomposition.box_mean = kernels_reference.box_mean
        decomposition.guided_filter = kernels_reference.guided_filter
        decomposition.gaussian_blur = kernels_reference.gaussian_blur

    def __exit__(self, *exc_info):
        (fusion.GuideWindows, decomposition.box_mean, decomposition.guided_filter,
         decomposition.gaussian_blur) = self.saved


def time_api(stack: np.ndarray, runs: int) -> dict[str, float]:
    import medfuse

    images = list(stack)
    for _ in range(2):
        medfuse.fuse(images)
    totals, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        medfuse.fuse(images)
        totals.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return {"total": median_ms(totals), "cpu": median_ms(cpu)}


def stage_table(runs: int, threads: int) -> None:
    from medfuse.features.registry import load_extractor

    extractor = load_extractor()
    rows = []
    for size in PAIRS:
        stack = load_pair(size)
        average = time_call(lambda: stack.mean(axis=0), runs)
        # The two-scale rule spelled out (the paper's, and the previous default's box 7 / r_b 7 / eps_b 1e-3 /
        # clipped detail weights), so the rows mean the same whatever FusionConfig()'s default rule is.
        paper = FusionConfig.paper()
        box7 = paper.replace(decomposition_size=7, r_b=7, eps_b=1e-3, clip_detail_weights=True)
        configurations = [
            ("core without CNN (paper, max-abs)", paper.replace(detail_rule="max-abs"), None, 1),
            ("core without CNN (two-scale box 7, max-abs)", box7.replace(detail_rule="max-abs"), None, 1),
            (f"core without CNN (paper, max-abs), {threads} threads", paper.replace(detail_rule="max-abs"), None,
             threads),
            (f"core without CNN (two-scale box 7, max-abs), {threads} threads", box7.replace(detail_rule="max-abs"),
             None, threads),
            (f"paper, CNN {extractor.name}", paper, extractor, 1),
            (f"two-scale box 7, CNN {extractor.name}", box7, extractor, 1),
            (f"default (FusionConfig()), CNN {extractor.name}", FusionConfig(), extractor, 1),
            (f"default (FusionConfig()), CNN {extractor.name}, {threads} threads", FusionConfig(), extractor,
             threads),
            (f"features on detail, CNN {extractor.name}", paper.replace(features_on="detail"), extractor, 1),
        ]
        for name, config, cnn, count in configurations:
            compiled = time_fusion(stack, config, cnn, runs, count)
            with reference_filters():
                reference = time_fusion(stack, config, cnn, runs, count)
            rows.append((size, name, compiled, reference["total"], average))
        compiled = time_api(stack, runs)
        with reference_filters():
            reference = time_api(stack, runs)
        rows.append((size, f"medfuse.fuse (default, CNN {extractor.name})", compiled, reference["total"], average))
        rows.append((size, "baseline: plain average", {"total": average}, None, average))
    print("Median wall-clock ms per stage; 'CPU ms' is this process's CPU time (all threads) for the whole call; "
          "'reference ms' is the same call on the NumPy reference filters, measured in the same run.")
    print("| size | configuration | " + " | ".join(STAGES) + " | total ms | CPU ms | reference ms | x reference "
          "| x average |")
    print("|---|---|" + "---|" * (len(STAGES) + 5))
    for size, name, times, reference, average in rows:
        cells = " | ".join(f"{times[s]:.2f}" if s in times else "" for s in STAGES)
        cpu = f"{times['cpu']:.2f}" if "cpu" in times else ""
        versus = f"{reference:.2f} | {times['total'] / reference:.2f}" if reference else " | "
        print(f"| {size}² | {name} | {cells} | {times['total']:.2f} | {cpu} | {versus} "
              f"| {times['total'] / average:.0f} |", flush=True)
    # Issue 13's cost bound: the default (pyramid rule) against the previous default (two-scale box 7), both
    # with the CNN, one thread, measured in this run.
    totals = {(size, name): times["total"] for size, name, times, _, _ in rows}
    for size in PAIRS:
        previous = totals[(size, f"two-scale box 7, CNN {extractor.name}")]
        default = totals[(size, f"default (FusionConfig()), CNN {extractor.name}")]
        print(f"{size}²: default {default:.2f} ms / previous default (two-scale box 7) {previous:.2f} ms "
              f"= x{default / previous:.2f}")


_JIT_CHILD = """
import json, sys, time
started = time.perf_counter()
import numpy as np
import medfuse
from medfuse.core import kernels
from medfuse.core.config import FusionConfig
from medfuse.features.registry import load_extractor
imported = time.perf_counter()
# The two-scale rule with box 7 (it runs every compiled kernel), whatever the default rule is.
config = FusionConfig.paper().replace(decomposition_size=7, r_b=7, eps_b=1e-3, clip_detail_weights=True)
pair = np.load(sys.argv[1])
images = list(pair)
# Not JIT cost: the CNN session is created and run once (onnxruntime's own first-run set-up) before the clock starts.
load_extractor().activity(pair)
c0 = time.process_time(); t0 = time.perf_counter(); medfuse.fuse(images, config=config); t1 = time.perf_counter(); c1 = time.process_time()
warm, warm_cpu = [], []
for _ in range(10):
    a, b = time.perf_counter(), time.process_time(); medfuse.fuse(images, config=config)
    warm.append(time.perf_counter() - a); warm_cpu.append(time.process_time() - b)
print(json.dumps({"cache": kernels.CACHE_DIR, "import": imported - started, "first": t1 - t0, "first_cpu": c1 - c0,
                  "warm": float(np.median(warm)), "warm_cpu": float(np.median(warm_cpu))}))
"""


def jit_table() -> None:
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medfuse-jit-bench-") as folder:
        pair = Path(folder) / "pair.npy"
        np.save(pair, load_pair(256))
        env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(folder) / "numba"))
        print("New processes fusing the 256² pair with medfuse.fuse (two-scale box 7, shipped CNN); "
              "seconds; 'first − warm' is what the process's first fusion costs over a warm one.")
        print("| process | kernel cache | import s | first fusion s (CPU s) | warm fusion s (CPU s) "
              "| first − warm s (CPU s) |")
        print("|---|---|---|---|---|---|")
        for run, state in enumerate(("empty (first-ever compilation)", "warm (left by run 1)",
                                     "warm (left by run 1)"), start=1):
            done = subprocess.run([sys.executable, "-c", _JIT_CHILD, str(pair)], env=env, capture_output=True,
                                  text=True, check=True)
            times = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {run} | {state} | {times['import']:.3f} | {times['first']:.3f} ({times['first_cpu']:.3f}) "
                  f"| {times['warm']:.4f} ({times['warm_cpu']:.4f}) | {times['first'] - times['warm']:.3f} "
                  f"({times['first_cpu'] - times['warm_cpu']:.3f}) |", flush=True)


MEDICAL_TASKS = ("ct-mri", "pet-mri", "spect-mri", "t1-t2")
VARIANTS = {
    "paper": {},
    "clip detail weights": {"clip_detail_weights": True},
    "features on detail": {"features_on": "detail"},
    "detail max-abs": {"detail_rule": "max-abs"},
    "base average": {"base_rule": "average"},
}


def quality_table() -> None:
    import medfuse
    from medfuse.metrics import METRIC_NAMES, compute_all

    pairs = []
    for task in MEDICAL_TASKS:
        for folder in sorted((SHARED / "pairs2d" / task).iterdir()):
            files = sorted(p for p in folder.iterdir() if p.is_file())
            pairs.append((task, [read_image(p) for p in files]))
    print(f"{len(pairs)} medical pairs: " + ", ".join(f"{t} {sum(1 for x, _ in pairs if x == t)}" for t in MEDICAL_TASKS))
    print("| variant | task | " + " | ".join(METRIC_NAMES) + " | detail weight range |")
    print("|---|---|" + "---|" * (len(METRIC_NAMES) + 1))
    for name, changes in VARIANTS.items():
        config = FusionConfig.paper().replace(**changes)
        scores: dict[str, list[dict[str, float]]] = {task: [] for task in MEDICAL_TASKS}
        low, high = np.inf, -np.inf
        for task, images in pairs:
            result = medfuse.fuse(images, config=config)
            scores[task].append(compute_all(images, result.fused))
            low, high = min(low, float(result.detail_weights.min())), max(high, float(result.detail_weights.max()))
        everything = [row for rows in scores.values() for row in rows]
        for task, rows in [*scores.items(), ("all", everything)]:
            means = " | ".join(f"{np.mean([r[m] for r in rows]):.4f}" for m in METRIC_NAMES)
            extra = f"{low:.3f} .. {high:.3f}" if task == "all" else ""
            print(f"| {name} | {task} ({len(rows)}) | {means} | {extra} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per measurement (median; >= 10)")
    parser.add_argument("--threads", type=int, default=2, help="thread count of the threaded core rows (others: 1)")
    parser.add_argument("--quality", action="store_true", help="score configuration variants on the medical pairs instead")
    parser.add_argument("--jit", action="store_true", help="measure the kernels' compilation cost in new processes instead")
    args = parser.parse_args()
    if args.quality:
        quality_table()
        return
    if args.jit:
        print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        jit_table()
        print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; numpy {np.__version__}")
    stage_table(args.runs, args.threads)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
