#!/usr/bin/env python3
"""Depth / pretraining ablation on the medical pairs (paper sec. IV-C-4), written into docs/models.md.

    python bench/ablation_depth.py [--pairs-per-task 6] [--threads 1] [--seeds 0 1 2] [--resnet50-random]
                                   [--skip-pretrained] [--merge earlier.csv ...] [--no-write]

Exports EfficientNet-Lite0 at every stage depth (1..7) twice into a
temporary registry -- with the ImageNet weights and with the same
architecture randomly initialised (torch's default init, seed 0) -- and, with
``--resnet50-random``, the paper's ResNet50 randomly initialised at depths
1..5 (no pretrained ResNet50 can be downloaded here).  Every configuration
fuses the pairs of ``pairs2d/{ct-mri,pet-mri,spect-mri,t1-t2}`` with
``medfuse.fuse`` and medfuse's default ``FusionConfig`` (only the extractor
changes), and scores them with the eight metrics of ``medfuse.metrics``.
Time is the wall time of ``medfuse.fuse`` per pair (CNN included) and the
CNN stage alone, median over pairs.

Random initialisation is one draw of many, so ``--seeds`` repeats it; rows of
earlier runs (their ``--csv``) can be added with ``--merge``.  Besides the
mean of each metric, the tables give each configuration's mean rank over the
eight metrics, and a paired comparison: for each depth, the share of
(pair, metric, seed) comparisons in which the ImageNet weights score higher
than the random ones.

The result replaces the text between the ablation markers in docs/models.md
(or is printed only, with ``--no-write``); a CSV of every pair goes to
``--csv``.  Needs torch (``medfuse[export]``) for the exports.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDFUSE_SHARED_DATA", REPO.parent / "shared" / "data")) / "pairs2d"
TASKS = ("ct-mri", "pet-mri", "spect-mri", "t1-t2")
DOC = REPO / "docs" / "models.md"
START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"


def _pairs(per_task: int):
    for task in TASKS:
        folders = sorted(p for p in (DATA / task).iterdir() if p.is_dir())
        for folder in folders[:per_task] if per_task else folders:
            files = sorted(f for f in folder.iterdir() if f.stem in ("a", "b"))
            yield task, folder.name, [np.asarray(Image.open(f)) for f in files]


def _export_all(out: Path, seeds, with_resnet: bool, with_pretrained: bool) -> list[tuple[str, str, str, int]]:
    from medfuse.features.export.onnx_export import export_efficientnet_lite0, export_resnet50
    from medfuse.features.manifest import write_manifest

    entries = {}
    configs = []
    if with_pretrained:
        entries["effl0-pretrained"] = export_efficientnet_lite0(out, range(1, 8), pretrained=True,
                                                                name="effl0-pretrained")
        configs += [("EfficientNet-Lite0", "ImageNet", "effl0-pretrained", d) for d in range(1, 8)]
    for seed in seeds:
        name = f"effl0-random-s{seed}"
        entries[name] = export_efficientnet_lite0(out, range(1, 8), pretrained=False, seed=seed, name=name)
        configs += [("EfficientNet-Lite0", f"random s{seed}", name, d) for d in range(1, 8)]
        if with_resnet:
            name = f"resnet50-random-s{seed}"
            entries[name] = export_resnet50(None, out, range(1, 6), seed=seed, name=name)
            configs += [("ResNet50", f"random s{seed}", name, d) for d in range(1, 6)]
    write_manifest(out / "manifest.toml", entries)
    return configs


def _key(row: dict) -> tuple:
    return row["network"], row["weights"], int(row["depth"]), int(row["stride"])


def _table(rows: list[dict], metric_names) -> str:
    keys = sorted({_key(r) for r in rows}, key=lambda k: (k[0], k[1] != "ImageNet", k[1], k[2]))
    lines = []
    for scope in ("all",) + TASKS:
        chosen = rows if scope == "all" else [r for r in rows if r["task"] == scope]
        if not chosen:
            continue
        count = len({(r["task"], r["pair"]) for r in chosen})
        title = "All medical pairs" if scope == "all" else f"`{scope}`"
        means = {k: {m: statistics.fmean(float(r[m]) for r in chosen if _key(r) == k) for m in metric_names}
                 for k in keys}
        ranks = {k: 0.0 for k in keys}
        for m in metric_names:
            for position, k in enumerate(sorted(keys, key=lambda k: -means[k][m]), start=1):
                ranks[k] += position / len(metric_names)
        lines += ["", f"**{title}** ({count} pairs; mean of each metric, higher is better; mean rank over the "
                  f"8 metrics among these {len(keys)} rows, lower is better; times are medians per pair)", "",
                  "| network | weights | depth | stride | " + " | ".join(metric_names)
                  + " | mean rank | fuse ms | CNN ms |",
                  "|---|---|---:|---:|" + "---:|" * (len(metric_names) + 3)]
        best = {m: max(means[k][m] for k in keys) for m in metric_names}
        for k in keys:
            group = [r for r in chosen if _key(r) == k]
            cells = [f"**{means[k][m]:.4f}**" if means[k][m] == best[m] else f"{means[k][m]:.4f}"
                     for m in metric_names]
            fuse_ms = statistics.median(float(r["fuse_ms"]) for r in group)
            cnn_ms = statistics.median(float(r["cnn_ms"]) for r in group)
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cells)
                         + f" | {ranks[k]:.1f} | {fuse_ms:.0f} | {cnn_ms:.0f} |")
    lines += ["", "**EfficientNet-Lite0, ImageNet vs random weights, paired**: share of (pair, metric, seed) "
              "comparisons, over all pairs, in which the ImageNet weights score higher (0.5 = no difference)", "",
              "| depth | " + " | ".join(metric_names) + " | all |", "|---:|" + "---:|" * (len(metric_names) + 1)]
    by_pair = {(_key(r), r["task"], r["pair"]): r for r in rows}
    for depth in sorted({int(r["depth"]) for r in rows if r["network"] == "EfficientNet-Lite0"}):
        pretrained = [r for r in rows if r["network"] == "EfficientNet-Lite0" and r["weights"] == "ImageNet"
                      and int(r["depth"]) == depth]
        random_keys = [k for k in keys if k[0] == "EfficientNet-Lite0" and k[1] != "ImageNet" and k[2] == depth]
        if not pretrained or not random_keys:
            continue
        wins = {m: [] for m in metric_names}
        for row in pretrained:
            for k in random_keys:
                other = by_pair.get((k, row["task"], row["pair"]))
                if other is not None:
                    for m in metric_names:
                        wins[m].append(float(row[m]) > float(other[m]))
        cells = [f"{statistics.fmean(wins[m]):.2f}" for m in metric_names]
        overall = statistics.fmean(w for m in metric_names for w in wins[m])
        lines.append(f"| {depth} | " + " | ".join(cells) + f" | {overall:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs-per-task", type=int, default=6, help="first N pairs of each task (0 = all)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the random initialisations")
    parser.add_argument("--resnet50-random", action="store_true", help="also randomly initialised ResNet50 1..5")
    parser.add_argument("--skip-pretrained", action="store_true", help="only the random initialisations")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="add the rows of earlier runs' CSVs")
    parser.add_argument("--csv", type=Path, default=Path(tempfile.gettempdir()) / "medfuse-ablation-depth.csv")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/models.md alone")
    args = parser.parse_args(argv)

    from medfuse.api import fuse
    from medfuse.core.config import FusionConfig
    from medfuse.features import load_extractor
    from medfuse.metrics import METRIC_NAMES, compute_all

    pairs = list(_pairs(args.pairs_per_task))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDFUSE_MODELS_DIR"] = tmp
        configs = _export_all(Path(tmp), args.seeds, args.resnet50_random, not args.skip_pretrained)
        config = FusionConfig()
        for network, weights, name, depth in configs:
            extractor = load_extractor(name, depth, threads=args.threads)
            started = time.perf_counter()
            for task, pair, images in pairs:
                t0 = time.perf_counter()
                result = fuse(images, config=config, extractor=extractor)
                fuse_ms = 1e3 * (time.perf_counter() - t0)
                scores = compute_all(images, result.fused)
                rows.append({"network": network, "weights": weights, "depth": depth, "stride": extractor.stride,
                             "task": task, "pair": pair, **scores, "fuse_ms": fuse_ms,
                             "cnn_ms": 1e3 * result.timings.get("cnn", float("nan"))})
            print(f"{network} {weights} depth {depth}: {len(pairs)} pairs in {time.perf_counter() - started:.1f} s",
                  flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for earlier in args.merge:
        with earlier.open(newline="") as handle:
            rows += list(csv.DictReader(handle))
    command = " ".join(["python bench/ablation_depth.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"Measured by `{command}` on {time.strftime('%Y-%m-%d')}, on {os.cpu_count()} CPU cores shared with "
              f"other jobs (times are indicative only: see the forward benchmark); FusionConfig() defaults, only "
              f"the extractor varies.")
    table = header + "\n" + _table(rows, METRIC_NAMES)
    print(table)
    if not args.no_write:
        text = DOC.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"{DOC} lacks the {START} / {END} markers")
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        DOC.write_text(f"{before}{START}\n{table}\n{END}{after}")
        print(f"wrote the table into {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
