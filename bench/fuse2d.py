"""Benchmark the 2-D fusion core: per-stage times, and the JIT cost of its compiled kernels.

Run by hand (not a test):  python bench/fuse2d.py [--runs 15] [--threads N]
                           python bench/fuse2d.py --jit

Prints a markdown table of the per-stage median wall-clock time (ms) of
``fuse_stack`` on a real 256x256 CT/MR pair and a real 512x512 IR/visible
pair: the core without the CNN (detail rule max-abs) in the paper's
configuration and the two-scale rule with box 7 (the default before the
pyramid rule), both with the shipped CNN, ``FusionConfig()`` (whatever the
default rule is) with the CNN, the pyramid rule without the CNN (decision
'energy'), the cores without the CNN again with
``--threads`` threads (default 2; the other rows use 1),
``medfuse.fuse`` (the public call: 2 threads, checks, colour handling) with
the default configuration and the CNN, and two baselines measured in the
same run: the same fusions on the NumPy reference filters the compiled
kernels replaced (:mod:`medfuse.core.kernels_reference`, "x reference"; for
the pyramid rule its NumPy decision and blending), and a plain pixel-wise
average ("x average"). Rows of the two-scale rule fill its stages, rows of
the pyramid rule its own (cnn, decision, blending). After the table: the
pyramid rule's own time (decision + blending of the default, the part that
is not the CNN) compiled and on the reference, and the same for a
(2, 8, 512, 512) volume stack through ``fuse_slices`` (slices of the 512²
pair shifted; CNN activity computed once beforehand and replayed, so only the
rule's own work is timed) on 1 and ``--threads`` threads. The guided filter
alone against OpenCV: ``bench/guided_filter.py``.

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
from medfuse.core.fusion import PYRAMID_STAGES, STAGES, fuse_slices, fuse_stack  # noqa: E402
from medfuse.io.images import read_image  # noqa: E402


def median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1e3)


#: Table columns: the two-scale rule's stages, then the pyramid rule's own (cnn is in both).
ALL_STAGES = STAGES + tuple(stage for stage in PYRAMID_STAGES if stage not in STAGES)


def time_fusion(stack: np.ndarray, config: FusionConfig, extractor, runs: int, threads: int = 1) -> dict[str, float]:
    """Median ms per stage of ``fuse_stack`` (the stages of the configuration's rule), total and CPU."""
    for _ in range(2):
        fuse_stack(stack, config, extractor, threads=threads)
    stages = PYRAMID_STAGES if config.rule == "pyramid" else STAGES
    per_stage: dict[str, list[float]] = {stage: [] for stage in stages}
    totals, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = fuse_stack(stack, config, extractor, threads=threads)
        totals.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        for stage in stages:
            per_stage[stage].append(result.timings[stage])
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
    """Within this block the fusion core runs the NumPy reference filters instead of the compiled kernels
    (and the pyramid rule its NumPy decision and blending)."""

    def __enter__(self):
        self.saved = (fusion.GuideWindows, decomposition.box_mean, decomposition.guided_filter,
                      decomposition.gaussian_blur, fusion.decision_indices, fusion.blend_decisions)
        fusion.GuideWindows = kernels_reference.GuideWindows
        decomposition.box_mean = kernels_reference.box_mean
        decomposition.guided_filter = kernels_reference.guided_filter
        decomposition.gaussian_blur = kernels_reference.gaussian_blur
        fusion.decision_indices = kernels_reference.decision_indices
        fusion.blend_decisions = kernels_reference.blend_decisions

    def __exit__(self, *exc_info):
        (fusion.GuideWindows, decomposition.box_mean, decomposition.guided_filter,
         decomposition.gaussian_blur, fusion.decision_indices, fusion.blend_decisions) = self.saved


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
    own = {}  # (size, threads): the default's decision + blending ms, compiled and reference
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
            ("pyramid rule without CNN (decision energy)", FusionConfig(decision="energy"), None, 1),
            (f"pyramid rule without CNN (decision energy), {threads} threads", FusionConfig(decision="energy"),
             None, threads),
            (f"features on detail, CNN {extractor.name}", paper.replace(features_on="detail"), extractor, 1),
        ]
        for name, config, cnn, count in configurations:
            compiled = time_fusion(stack, config, cnn, runs, count)
            with reference_filters():
                reference = time_fusion(stack, config, cnn, runs, count)
            rows.append((size, name, compiled, reference["total"], average))
            if config == FusionConfig() and cnn is not None:
                own[(size, count)] = (own_ms(compiled), own_ms(reference))
        compiled = time_api(stack, runs)
        with reference_filters():
            reference = time_api(stack, runs)
        rows.append((size, f"medfuse.fuse (default, CNN {extractor.name})", compiled, reference["total"], average))
        rows.append((size, "baseline: plain average", {"total": average}, None, average))
    print("Median wall-clock ms per stage; 'CPU ms' is this process's CPU time (all threads) for the whole call; "
          "'reference ms' is the same call on the NumPy reference filters, measured in the same run.")
    print("| size | configuration | " + " | ".join(ALL_STAGES) + " | total ms | CPU ms | reference ms | x reference "
          "| x average |")
    print("|---|---|" + "---|" * (len(ALL_STAGES) + 5))
    for size, name, times, reference, average in rows:
        cells = " | ".join(f"{times[s]:.2f}" if s in times else "" for s in ALL_STAGES)
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
    print("\nThe default's own stages (decision + blending: everything but the CNN), median ms, same run:")
    for (size, count), (compiled, reference) in own.items():
        print(f"{size}², {count} thread(s): compiled {compiled:.2f} ms, NumPy reference {reference:.2f} ms "
              f"= x{compiled / reference:.3f}")


def own_ms(times: dict[str, float]) -> float:
    """The pyramid rule's own time in a :func:`time_fusion` result: decision + blending (medians)."""
    return times["decision"] + times["blending"]


class ReplayedActivity:
    """An extractor that returns activity computed once beforehand (so only the fusion rule's own work is timed)."""

    def __init__(self, extractor, images: np.ndarray) -> None:
        self.name, self.stride = extractor.name, extractor.stride
        self.cells = extractor.activity(images)

    def activity(self, images: np.ndarray) -> np.ndarray:
        return self.cells


def volume_table(runs: int, threads: int) -> None:
    """The default through fuse_slices on a (2, 8, 512, 512) stack, CNN replayed: compiled vs reference."""
    from medfuse.features.registry import load_extractor

    pair = load_pair(512)
    volumes = np.stack([np.stack([np.roll(image, 16 * z, axis=0) for z in range(8)]) for image in pair])
    replayed = ReplayedActivity(load_extractor(), volumes.reshape((-1,) + volumes.shape[-2:]))
    print("\n(2, 8, 512, 512) through fuse_slices, default configuration, CNN activity replayed "
          "(includes the input checks); median ms of the whole call:")
    print("| threads | compiled ms | CPU ms | per slice ms | reference ms | x reference |")
    print("|---|---|---|---|---|---|")
    for count in (1, threads):
        compiled, cpu = time_call(lambda: fuse_slices(volumes, FusionConfig(), replayed, threads=count), runs,
                                  cpu=True)
        with reference_filters():
            reference = time_call(lambda: fuse_slices(volumes, FusionConfig(), replayed, threads=count),
                                  max(3, runs // 4))
        print(f"| {count} | {compiled:.2f} | {cpu:.2f} | {compiled / 8:.2f} | {reference:.2f} "
              f"| {compiled / reference:.3f} |", flush=True)


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
    volume_table(args.runs, args.threads)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
