"""Benchmark the 2-D fusion core: per-stage times, guided filter vs OpenCV.

Run by hand (not a test):  python bench/fuse2d.py [--runs 15] [--threads N]

Prints markdown tables:

1. per-stage median wall-clock time (ms) of ``fuse_stack`` on a real 256x256
   CT/MR pair and a real 512x512 IR/visible pair: the core without the CNN
   (detail rule max-abs) in the paper's and in the default configuration,
   both with the shipped CNN, the core without the CNN again with
   ``--threads`` threads (default 2; the other rows use 1), and a
   naive baseline (pixel-wise average) measured in the same run, with the
   ratios to it;
2. our NumPy guided filter against ``cv2.ximgproc.guidedFilter`` (needs
   ``pip install opencv-contrib-python-headless``, the ``bench`` extra): time
   ratio and the largest difference away from the border (OpenCV mirrors at
   the border, we average over the inside part), plus each one's distance
   from a float64 reference.

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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medfuse.api import to_unit_float  # noqa: E402
from medfuse.core.config import FusionConfig  # noqa: E402
from medfuse.core.filters import guided_filter  # noqa: E402
from medfuse.core.fusion import STAGES, fuse_stack  # noqa: E402
from medfuse.io.images import read_image  # noqa: E402

SHARED = Path(os.environ.get("MEDFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))
PAIRS = {
    256: ("ct-mri/ivrl_1/a.png", "ct-mri/ivrl_1/b.png"),
    512: ("ir-vis/ifcnn_Navi/a.png", "ir-vis/ifcnn_Navi/b.png"),
}


def load_pair(size: int) -> np.ndarray:
    stack = np.stack([to_unit_float(read_image(SHARED / "pairs2d" / name)) for name in PAIRS[size]])
    assert stack.shape == (2, size, size), stack.shape
    return stack


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


def stage_table(runs: int, threads: int) -> None:
    from medfuse.features.registry import load_extractor

    extractor = load_extractor()
    rows = []
    for size in PAIRS:
        stack = load_pair(size)
        baseline = time_call(lambda: stack.mean(axis=0), runs)
        core = time_fusion(stack, FusionConfig.paper().replace(detail_rule="max-abs"), None, runs)
        core_default = time_fusion(stack, FusionConfig().replace(detail_rule="max-abs"), None, runs)
        paper = time_fusion(stack, FusionConfig.paper(), extractor, runs)
        default = time_fusion(stack, FusionConfig(), extractor, runs)
        authors = time_fusion(stack, FusionConfig.paper().replace(features_on="detail"), extractor, runs)
        core_threads = time_fusion(stack, FusionConfig.paper().replace(detail_rule="max-abs"), None, runs, threads)
        default_threads = time_fusion(stack, FusionConfig().replace(detail_rule="max-abs"), None, runs, threads)
        rows.append((size, "core without CNN (paper, max-abs)", core, baseline))
        rows.append((size, "core without CNN (default, max-abs)", core_default, baseline))
        rows.append((size, f"core without CNN (paper, max-abs), {threads} threads", core_threads, baseline))
        rows.append((size, f"core without CNN (default, max-abs), {threads} threads", default_threads, baseline))
        rows.append((size, f"paper, CNN {extractor.name}", paper, baseline))
        rows.append((size, f"default, CNN {extractor.name}", default, baseline))
        rows.append((size, f"features on detail, CNN {extractor.name}", authors, baseline))
        rows.append((size, "baseline: plain average", {"total": baseline}, baseline))
    print("Median wall-clock ms per stage; 'CPU ms' is this process's CPU time (all threads) for the whole call.")
    print("| size | configuration | " + " | ".join(STAGES) + " | total ms | CPU ms | x baseline |")
    print("|---|---|" + "---|" * (len(STAGES) + 3))
    for size, name, times, baseline in rows:
        cells = " | ".join(f"{times[s]:.2f}" if s in times else "" for s in STAGES)
        cpu = f"{times['cpu']:.2f}" if "cpu" in times else ""
        print(f"| {size}² | {name} | {cells} | {times['total']:.2f} | {cpu} | {times['total'] / baseline:.0f} |")


def scipy_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Independent float64 reference: He's formulas on scipy.ndimage.uniform_filter (exact away from borders)."""
    from scipy.ndimage import uniform_filter

    def mean(x):
        return uniform_filter(x, size=2 * radius + 1, mode="nearest")

    guide, src = guide.astype(np.float64), src.astype(np.float64)
    mean_i, mean_p = mean(guide), mean(src)
    a = (mean(guide * src) - mean_i * mean_p) / (mean(guide * guide) - mean_i**2 + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b)


def guided_table(runs: int) -> None:
    try:
        import cv2
    except ImportError:
        print("\n(OpenCV not installed: pip install opencv-contrib-python-headless for the guided-filter comparison)")
        return
    print(f"\nGuided filter, guide = first source, input = second source; OpenCV {cv2.__version__}, "
          f"{cv2.getNumThreads()} threads by default. Differences are over the interior (>= 2r+1 px from the border), "
          "where the border rules agree; the reference is He's formulas in float64 on scipy's uniform_filter.")
    print("| size | r, eps | ours ms (CPU ms) | OpenCV 1 thread ms (CPU ms) | OpenCV default threads ms "
          "| ours / OpenCV, wall (CPU) | max |ours − OpenCV| | max |ours − float64 ref| | max |OpenCV − float64 ref| |")
    print("|---|---|---|---|---|---|---|---|---|")
    default_threads = cv2.getNumThreads()
    for size in PAIRS:
        stack = load_pair(size)
        guide = stack[0]
        src = stack[1]  # a second, different image as the filtered input
        for radius, eps in ((45, 0.1), (7, 1e-6)):
            ours, ours_cpu = time_call(lambda: guided_filter(guide, src, radius, eps), runs, cpu=True)
            cv2.setNumThreads(1)
            theirs_1, theirs_cpu = time_call(lambda: cv2.ximgproc.guidedFilter(guide, src, radius, eps), runs, cpu=True)
            cv2.setNumThreads(default_threads)
            theirs = time_call(lambda: cv2.ximgproc.guidedFilter(guide, src, radius, eps), runs)
            q_ours = guided_filter(guide, src, radius, eps)
            q_cv = cv2.ximgproc.guidedFilter(guide, src, radius, eps).astype(np.float64)
            reference = scipy_guided_filter(guide, src, radius, eps)
            inner = slice(2 * radius + 1, size - 2 * radius - 1)
            diff = np.abs(q_ours - q_cv)[inner, inner].max()
            ours_err = np.abs(q_ours - reference)[inner, inner].max()
            cv_err = np.abs(q_cv - reference)[inner, inner].max()
            print(f"| {size}² | {radius}, {eps:g} | {ours:.2f} ({ours_cpu:.2f}) | {theirs_1:.2f} ({theirs_cpu:.2f}) "
                  f"| {theirs:.2f} | {ours / theirs_1:.1f} ({ours_cpu / theirs_cpu:.1f}) "
                  f"| {diff:.1e} | {ours_err:.1e} | {cv_err:.1e} |")


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
    args = parser.parse_args()
    if args.quality:
        quality_table()
        return
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; numpy {np.__version__}")
    stage_table(args.runs, args.threads)
    guided_table(args.runs)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
