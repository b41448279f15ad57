#!/usr/bin/env python3
"""Depth / pretraining ablation on the medical pairs (paper sec. IV-C-4), written into docs/models.md.

    python bench/ablation_depth.py [--pairs-per-task 6] [--threads 1] [--resnet50-random] [--no-write]

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

The result replaces the text between the ablation markers in docs/models.md
(or is printed only, with ``--no-write``); a CSV of every pair goes to
``--csv``.  Needs torch (``medfuse[export]``) for the exports.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
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


def _export_all(out: Path, with_resnet: bool) -> list[tuple[str, str, str, int]]:
    from medfuse.features.export.onnx_export import export_efficientnet_lite0, export_resnet50
    from medfuse.features.manifest import write_manifest

    entries = {
        "effl0-pretrained": export_efficientnet_lite0(out, range(1, 8), pretrained=True, name="effl0-pretrained"),
        "effl0-random": export_efficientnet_lite0(out, range(1, 8), pretrained=False, seed=0, name="effl0-random"),
    }
    configs = [("EfficientNet-Lite0", "ImageNet", "effl0-pretrained", d) for d in range(1, 8)]
    configs += [("EfficientNet-Lite0", "random", "effl0-random", d) for d in range(1, 8)]
    if with_resnet:
        entries["resnet50-random"] = export_resnet50(None, out, range(1, 6), seed=0, name="resnet50-random")
        configs += [("ResNet50", "random", "resnet50-random", d) for d in range(1, 6)]
    write_manifest(out / "manifest.toml", entries)
    return configs


def _table(rows: list[dict], metric_names) -> str:
    keys = sorted({(r["network"], r["weights"], r["depth"], r["stride"]) for r in rows},
                  key=lambda k: (k[0], k[1] != "ImageNet", k[2]))
    lines = []
    for scope in ("all",) + TASKS:
        chosen = rows if scope == "all" else [r for r in rows if r["task"] == scope]
        if not chosen:
            continue
        count = len({(r["task"], r["pair"]) for r in chosen})
        title = "All medical pairs" if scope == "all" else f"`{scope}`"
        lines += ["", f"**{title}** ({count} pairs; mean of each metric, higher is better; "
                  "times are medians per pair)", "",
                  "| network | weights | depth | stride | " + " | ".join(metric_names) + " | fuse ms | CNN ms |",
                  "|---|---|---:|---:|" + "---:|" * (len(metric_names) + 2)]
        best = {m: max(statistics.fmean(r[m] for r in chosen if (r["network"], r["weights"], r["depth"],
                                                                  r["stride"]) == k) for k in keys)
                for m in metric_names}
        for key in keys:
            group = [r for r in chosen if (r["network"], r["weights"], r["depth"], r["stride"]) == key]
            cells = []
            for m in metric_names:
                value = statistics.fmean(r[m] for r in group)
                text = f"{value:.4f}"
                cells.append(f"**{text}**" if abs(value - best[m]) < 1e-12 else text)
            fuse_ms = statistics.median(r["fuse_ms"] for r in group)
            cnn_ms = statistics.median(r["cnn_ms"] for r in group)
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(cells)
                         + f" | {fuse_ms:.0f} | {cnn_ms:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs-per-task", type=int, default=6, help="first N pairs of each task (0 = all)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--resnet50-random", action="store_true", help="also randomly initialised ResNet50 1..5")
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
        configs = _export_all(Path(tmp), args.resnet50_random)
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
    header = (f"Measured by `python bench/ablation_depth.py --pairs-per-task {args.pairs_per_task} --threads "
              f"{args.threads}{' --resnet50-random' if args.resnet50_random else ''}` on {time.strftime('%Y-%m-%d')}, "
              f"{os.cpu_count()} CPU cores shared with other jobs (times are indicative only); "
              f"FusionConfig() defaults, only the extractor varies. Per-pair CSV: `{args.csv.name}`.")
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
