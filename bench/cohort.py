"""Studies per hour of ``fuse-cohort`` with one and with two local workers, on the same cohort, in one run.

Run by hand (not part of the test suite)::

    python bench/cohort.py [--studies 10] [--repeat 3]

The cohort is ``--studies`` copies of the bundled sample study (65 + 43 slices of 128 x 128, new
UIDs each, made with the tests' ``copy_study``). Each repeat fuses the whole cohort into a fresh
output folder twice, with ``--jobs 1`` (each study in its own process, one after another, no Dask)
and with ``--jobs 2`` (a local Dask cluster of two one-thread workers, its start-up included), in
alternating order, and prints one JSON line per pass (wall seconds, studies per hour, the seconds
before the first study could start, i.e. the local cluster's start-up, and studies per hour after
it, load average before, hypervisor steal during) and the ratios of each pair. Both passes must produce the same
pixels; the bench checks that the fused series' UIDs (derived from inputs and options) agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fuse_study import steal_seconds  # bench/ is the script's folder, so on sys.path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_studies" / "mr-phantom-two-contrasts"


def make_cohort(root: Path, studies: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from orthanc_support import copy_study

    for i in range(studies):
        copy_study(SAMPLE, root / f"patient{i:03d}", 900 + i)


def one_pass(root: Path, out: Path, jobs: int) -> dict:
    from medfuse.study.cohort.run import CohortOptions, run_cohort

    load, steal = os.getloadavg()[0], steal_seconds()
    ready = []
    started = time.perf_counter()
    summary = run_cohort(root, out, CohortOptions(formats=("dicom",), jobs=jobs),
                         on_start=lambda *_: ready.append(time.perf_counter()))
    ended = time.perf_counter()
    if summary.count("done") != summary.total:
        raise SystemExit(f"jobs={jobs}: {summary.to_dict()}")
    return {"jobs": jobs, "studies": summary.total, "seconds": round(ended - started, 2),
            "studies_per_hour": round(summary.total / (ended - started) * 3600, 1),
            "start_up_s": round(ready[0] - started, 2),
            "studies_per_hour_after_start_up": round(summary.total / (ended - ready[0]) * 3600, 1),
            "load_before": round(load, 2), "steal_s": round(steal_seconds() - steal, 2)}


def series_uids(out: Path) -> dict[str, str]:
    return {p.name: json.loads((p / "provenance.json").read_text())["outputs"]["dicom"]["series_instance_uid"]
            for p in sorted(out.iterdir()) if p.is_dir()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medfuse-bench-cohort-"))
    try:
        make_cohort(work / "root", args.studies)
        ratios = []
        for r in range(args.repeat):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            passes = {jobs: one_pass(work / "root", work / f"out-{r}-{jobs}", jobs) for jobs in order}
            if series_uids(work / f"out-{r}-1") != series_uids(work / f"out-{r}-2"):
                raise SystemExit("the two passes wrote different series")
            ratio = passes[2]["studies_per_hour"] / passes[1]["studies_per_hour"]
            steady = passes[2]["studies_per_hour_after_start_up"] / passes[1]["studies_per_hour_after_start_up"]
            ratios.append((ratio, steady))
            for jobs in order:
                print(json.dumps({"repeat": r, **passes[jobs]}), flush=True)
            print(json.dumps({"repeat": r, "ratio_2_over_1": round(ratio, 3),
                              "ratio_after_start_up": round(steady, 3)}), flush=True)
            for jobs in order:
                shutil.rmtree(work / f"out-{r}-{jobs}")
        whole, steady = [r for r, _ in ratios], [s for _, s in ratios]
        print(json.dumps({"pairs": len(ratios), "median_ratio": round(statistics.median(whole), 3),
                          "min_ratio": round(min(whole), 3), "max_ratio": round(max(whole), 3),
                          "median_ratio_after_start_up": round(statistics.median(steady), 3),
                          "cpus": os.cpu_count()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
