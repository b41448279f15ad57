"""Benchmark the fuse-study pipeline: stage times, 1 vs 2 workers, peak memory, saliency scope.

Run by hand (not part of the test suite)::

    python bench/fuse_study.py                 # everything (a few minutes on 2 cores)
    python bench/fuse_study.py --only sample   # the bundled sample study only
    python bench/fuse_study.py --only large    # the 512 x 512 x 200 CT + MR pair only (--repeat pairs of runs)
    python bench/fuse_study.py --only large --report   # each large run also with the QC report (what it adds)
    python bench/fuse_study.py --only scope    # saliency scope consistency only
    python bench/fuse_study.py --only dispatch --repeat 2   # fusion stage alone: dispatch paths

Cases:

* ``sample``: ``fuse_study`` on ``sample_studies/mr-phantom-two-contrasts`` (DICOM in, DICOM + NIfTI out).
* ``large``: a 512 x 512 x 200 CT + MR pair built by resampling real data: the TCIA CCTH-A01 CT of the
  shared data (512 x 512 x 101, 2.5 mm slices) linearly resampled to 200 slices of 1.25 mm; the "MR" is
  that CT through a non-monotonic intensity curve and a known rigid offset (3 deg, 5 mm) on a
  256 x 256 x 100 grid (as in tools/make_sample_study.py). Both are written as NIfTI and fused with
  ``fuse_volumes`` (registration included, NIfTI output).
* ``scope``: inter-slice consistency of the fused volume for ``--saliency-scope volume`` and ``slice``:
  mean absolute difference of adjacent fused slices divided by the mean of the same quantity over the
  sources (inside the second source's coverage), on the sample and on the large pair.
* ``dispatch``: the fusion stage alone (``fuse_volume``) on the large pair, the MR resampled onto the CT
  grid without registration (timing only), in one fresh subprocess: 1 worker (in-process), 2 local
  workers (staged-files path), and 2 local workers reached as an external scheduler (pixels sent in the
  graph from this process, which hosts the scheduler: the path every local run took before); each
  ``--repeat`` times, with the load average before each run and a check that all give identical pixels.

Each pipeline run happens in a fresh subprocess so its memory is its own: ``ru_maxrss`` of the main
process, and a 20 ms psutil sampling (the list of processes refreshed every 0.5 s) of the main process per stage, of each child process (the Dask
workers) and of the whole process tree. Numbers are printed as JSON as soon as known; every ratio
compares runs made in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_studies" / "mr-phantom-two-contrasts"
SHARED = Path(os.environ.get("MEDFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))
CT_DIR = SHARED / "volumes" / "tcia_CCTH-A01_pet_ct" / "CT_images"


def make_large_pair(folder: Path) -> tuple[Path, Path]:
    """Write the 512 x 512 x 200 CT and the synthetic MR (NIfTI) into *folder*."""
    import numpy as np
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT_DIR)))
    ct = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    size = (512, 512, 200)
    spacing = (ct.GetSpacing()[0], ct.GetSpacing()[1], ct.GetSpacing()[2] * ct.GetSize()[2] / size[2])
    ct200 = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), spacing, ct.GetDirection(),
                          -1024.0, sitk.sitkFloat32)
    centre = ct200.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
    offset = sitk.Euler3DTransform()
    offset.SetCenter(centre)
    offset.SetRotation(0.0, 0.0, np.deg2rad(3.0))
    offset.SetTranslation((5.0, -3.0, 0.0))
    mr_grid = [s * 2 for s in spacing]
    mr = sitk.Resample(ct200, [n // 2 for n in size], offset, sitk.sitkLinear, ct200.GetOrigin(), mr_grid,
                       ct200.GetDirection(), -1024.0, sitk.sitkFloat32)
    hu = sitk.GetArrayFromImage(mr)
    # Non-monotonic curve: air dark, fat bright, water/soft tissue mid, bone dark (an MR-like look).
    curve = np.interp(hu, (-1024, -500, -100, 0, 60, 300, 3000), (0, 0, 900, 500, 650, 100, 50)).astype(np.float32)
    mr_image = sitk.GetImageFromArray(curve)
    mr_image.CopyInformation(mr)
    paths = (folder / "ct_512x512x200.nii.gz", folder / "mr_synthetic_256x256x100.nii.gz")
    sitk.WriteImage(ct200, str(paths[0]))
    sitk.WriteImage(mr_image, str(paths[1]))
    return paths


def run_case(kind: str, inputs: list[str], workers: int, out: Path, scope: str = "volume", report: bool = False) -> dict:
    """One pipeline run in a fresh subprocess; returns its timings and peak memory.

    Memory is sampled every 20 ms with psutil (a dask dependency): the main process's RSS per stage,
    each child process's peak (the Dask workers, the nannies' helpers), and the peak of the sum over
    the whole process tree. ``ru_maxrss`` of the main process is reported too.
    """
    code = f"""
import json, resource, threading, time
import psutil
from medfuse.study.pipeline import StudyOptions, fuse_study, fuse_volumes
from medfuse.study.progress import Progress

stage, per_stage, children, tree = ["start"], {{}}, {{}}, [0.0]
running = True

def sample():
    # Listing the process tree costs about 1.2 ms of CPU (a scan of /proc), reading one process's RSS
    # 0.02 ms: the list is refreshed every 0.5 s only, so the sampler itself takes well under 1 % of a
    # core instead of 6 % (which slowed the two-worker runs, where no core is idle).
    me = psutil.Process()
    kids, listed = [], 0.0
    while running:
        try:
            if time.monotonic() - listed > 0.5:
                kids, listed = me.children(recursive=True), time.monotonic()
            main = me.memory_info().rss / 2**20
            total = main
            for child in kids:
                try:
                    rss = child.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                total += rss
                children[child.pid] = max(children.get(child.pid, 0.0), rss)
            per_stage[stage[0]] = max(per_stage.get(stage[0], 0.0), main)
            tree[0] = max(tree[0], total)
        except psutil.Error:
            pass
        time.sleep(0.02)

class StageProgress(Progress):
    def stage(self, name, total=None):
        stage[0] = name
        return super().stage(name, total)

if __name__ == "__main__":
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    options = StudyOptions(workers={workers}, saliency_scope={scope!r}, progress=StageProgress("quiet"),
                           formats={('dicom', 'nifti') if kind == 'study' else ('nifti',)!r}, report={report!r})
    started = time.perf_counter()
    if {kind!r} == "study":
        result = fuse_study({inputs[0]!r}, {str(out)!r}, options)
    else:
        result = fuse_volumes({inputs!r}, {str(out)!r}, options)
    total = time.perf_counter() - started
    running = False
    sampler.join()
    print(json.dumps({{"timings_s": result.timings, "total_s": round(total, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "main_rss_by_stage_mb": {{k: round(v) for k, v in per_stage.items()}},
                      "child_peaks_mb": sorted(round(v) for v in children.values()),
                      "tree_peak_mb": round(tree[0]), "load_after": [round(x, 2) for x in psutil.getloadavg()]}}))
"""
    script = out.parent / f"run_{out.name}.py"
    script.write_text(code)
    load, steal = os.getloadavg()[0], steal_seconds()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return {"load_before": round(load, 2), "steal_s": round(steal_seconds() - steal, 2),
            **json.loads(done.stdout.strip().splitlines()[-1])}


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this machine's CPUs wanted to run (all CPUs).

    Read from the ``cpu`` line of /proc/stat (its 8th value, in clock ticks); 0 where that is not
    available. A run with more steal than its pair partner was slowed by the host, not by medfuse.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def scope_consistency(fixed_path: str, moving_path: str) -> dict:
    """Inter-slice consistency ratio of the fused volume: default rule, and two-scale with both saliency scopes."""
    import numpy as np
    import SimpleITK as sitk

    from medfuse.core.config import FusionConfig
    from medfuse.io.volumes import load_volume
    from medfuse.volume.dispatch import fuse_volume, interslice_variation
    from medfuse.volume.intensity import map_to_unit
    from medfuse.volume.registration import register
    from medfuse.volume.resampling import resample_onto

    fixed, moving = load_volume(fixed_path), load_volume(moving_path)
    moved, coverage = resample_onto(fixed, moving, register(fixed, moving).transform)
    arrays = [map_to_unit(v)[0] for v in (fixed, moved)]
    cover = sitk.GetArrayFromImage(coverage).astype(bool)
    sources = float(np.mean([interslice_variation(a, cover) for a in arrays]))
    # Second normaliser: the mean over voxel pairs of the LARGEST source change. A fused volume
    # that takes each voxel from one source in both slices stays below 1 on it; above 1 means it
    # switches between sources from slice to slice (flicker of its own).
    both = cover[1:] & cover[:-1]
    largest = float(np.maximum.reduce([np.abs(np.diff(a, axis=0)) for a in arrays])[both].mean())
    out = {"sources_mad": round(float(sources), 5), "largest_source_change": round(float(largest), 5)}
    for index, array in enumerate(arrays):
        out[f"source{index}"] = round(interslice_variation(array, cover) / sources, 4)
    out["pixel_max"] = round(interslice_variation(np.maximum.reduce(arrays), cover) / sources, 4)
    # The default (pyramid) rule has no saliency, so no scope; the two-scale
    # rule (--preset photo, the previous default) is measured with both scopes.
    runs = {"default": (FusionConfig(), "volume"), "photo_volume": (FusionConfig.photo(), "volume"),
            "photo_slice": (FusionConfig.photo(), "slice")}
    for name, (config, scope) in runs.items():
        fused = fuse_volume(arrays, [None, cover], config, workers=2, saliency_scope=scope)
        variation = interslice_variation(fused, cover)
        out[name] = round(variation / sources, 4)
        out[name + "_to_largest"] = round(variation / largest, 4)
    return out


DISPATCH_CODE = """
import json, os, sys, time
import numpy as np
import SimpleITK as sitk
from dask.distributed import LocalCluster
from medfuse.volume.dispatch import fuse_volume
from medfuse.volume.local_cluster import local_worker_config
import dask

ct = sitk.ReadImage(sys.argv[1], sitk.sitkFloat32)
mr = sitk.ReadImage(sys.argv[2], sitk.sitkFloat32)
on_grid = sitk.Resample(mr, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
ones = sitk.Resample(mr * 0 + 1, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
cover = sitk.GetArrayFromImage(ones) > 0.5
unit_ct = np.clip((sitk.GetArrayFromImage(ct) + 160.0) / 400.0, 0, 1).astype(np.float32)
mr_array = sitk.GetArrayFromImage(on_grid)
unit_mr = np.clip(mr_array / np.percentile(mr_array[cover], 99.5), 0, 1).astype(np.float32)
del ct, mr, on_grid, ones, mr_array
arrays, masks = [unit_ct, unit_mr], [None, cover]
repeat = int(sys.argv[3])
results, reference = {}, None

def graph_via_scheduler():
    # The cluster's start is timed too, as fuse_volume's own local paths include it.
    with dask.config.set(local_worker_config()):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=40)
    try:
        return fuse_volume(arrays, masks, scheduler=cluster.scheduler_address)
    finally:
        cluster.close()

def timed(name, **kw):
    global reference
    load = os.getloadavg()[0]
    started = time.perf_counter()
    fused = graph_via_scheduler() if name.startswith("w2_graph") else fuse_volume(arrays, masks, **kw)
    seconds = time.perf_counter() - started
    if reference is None:
        reference = fused
    same = bool(np.array_equal(fused, reference))
    results.setdefault(name, []).append({"s": round(seconds, 2), "load": round(load, 2), "identical": same})
    print(name, json.dumps(results[name][-1]), flush=True)

for _ in range(repeat):
    timed("w1_in_process", workers=1)
    timed("w2_files", workers=2)
    timed("w2_graph_via_scheduler")
print(json.dumps(results))
"""


def dispatch_case(fixed_path: str, moving_path: str, repeat: int) -> dict:
    """The fusion stage alone for each dispatch path, in a fresh subprocess (see module doc)."""
    done = subprocess.run([sys.executable, "-c", DISPATCH_CODE, fixed_path, moving_path, str(repeat)],
                          capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"dispatch run failed:\n{done.stderr[-3000:]}")
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    best = {name: min(r["s"] for r in rows) for name, rows in runs.items()}
    runs["speedup_1_to_2_files"] = round(best["w1_in_process"] / best["w2_files"], 2)
    runs["speedup_1_to_2_graph"] = round(best["w1_in_process"] / best["w2_graph_via_scheduler"], 2)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("sample", "large", "scope", "dispatch"))
    parser.add_argument("--repeat", type=int, default=2,
                        help="Runs of each dispatch path, and pairs of large runs (default 2).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Worker counts to run (default 1 2).")
    parser.add_argument("--report", action="store_true",
                        help="Also run every large case with the QC report, right after the one without it.")
    args = parser.parse_args()
    results = _Results()
    results["machine"] = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start"
    with tempfile.TemporaryDirectory(prefix="medfuse-bench-") as tmp:
        tmp = Path(tmp)
        large = None
        if args.only in (None, "large", "scope", "dispatch"):
            large = [str(p) for p in make_large_pair(tmp)]
        if args.only in (None, "sample"):
            for workers in args.workers:
                results[f"sample_w{workers}"] = run_case("study", [str(SAMPLE)], workers, tmp / f"sample_w{workers}")
        if args.only in (None, "large"):
            input_mb = (512 * 512 * 200 + 256 * 256 * 100) * 4 / 2**20
            results["large_input_float32_mb"] = round(input_mb)
            speedups = []
            for run in range(1, args.repeat + 1):
                for workers in args.workers:
                    results[f"large_w{workers}_run{run}"] = run_case("volumes", large, workers,
                                                                     tmp / f"large_w{workers}_run{run}")
                    if args.report:
                        name = f"large_w{workers}_run{run}_report"
                        results[name] = run_case("volumes", large, workers, tmp / name, report=True)
                        results[name + "_adds_s"] = round(results[name]["total_s"]
                                                          - results[f"large_w{workers}_run{run}"]["total_s"], 2)
                if {1, 2} <= set(args.workers):
                    fuse1 = results[f"large_w1_run{run}"]["timings_s"]["fuse"]
                    fuse2 = results[f"large_w2_run{run}"]["timings_s"]["fuse"]
                    speedups.append(round(fuse1 / fuse2, 2))
                    results["large_fuse_speedup_1_to_2_per_pair"] = speedups
        if args.only in (None, "dispatch"):
            results["dispatch_large"] = dispatch_case(*large, args.repeat)
        if args.only in (None, "scope"):
            t1 = SAMPLE / "series1_t1"
            results["scope_sample"] = scope_consistency(str(t1), str(SAMPLE / "series2_synthetic_contrast"))
            results["scope_large"] = scope_consistency(*large)
    print(json.dumps(results))


class _Results(dict):
    """A dict that prints each result as soon as it is known (long runs can be interrupted)."""

    def __setitem__(self, name, value) -> None:
        super().__setitem__(name, value)
        print(f"{name:<28} {json.dumps(value)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
