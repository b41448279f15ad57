"""Regenerate the metric tables of docs/metrics.md (run by hand, not in CI).

    python bench/evaluate_tables.py main -o /tmp/medfuse-tables        # all tasks, ours vs baselines
    python bench/evaluate_tables.py variants -o /tmp/medfuse-variants --tasks ct-mri  # config study

``main`` fuses every pair under ../shared/data/pairs2d with the paper preset,
medfuse's default and the four baselines; ``variants`` runs the
configuration variants of the investigation in docs/metrics.md on the
medical tasks. Both write per-pair and mean tables (CSV and Markdown) per
run, exactly as ``medfuse evaluate --pairs`` does, and print the mean table.
Expect minutes: about 1-2 s per pair and method on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medfuse.cli.evaluate import DEFAULT_METHODS, evaluate_pairs, parse_method

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs2d"
MEDICAL = ("ct-mri", "pet-mri", "spect-mri", "t1-t2")
VARIANTS = (
    "ours:paper",
    "ours:paper:clip_detail_weights=true",
    "ours:paper:features_on=detail",
    "ours:paper:decomposition_size=15",
    "ours:paper:decomposition_size=7",
    "ours:paper:saliency_normalisation=none",
    "ours:paper:detail_rule=max-abs",
    "ours:paper:base_rule=average",
    "ours:paper:eps_d=0.01",
    "ours:paper:eps_b=0.001",
    "ours:paper:r_b=7,eps_b=0.001",
    "ours:paper:decomposition_size=7,eps_b=0.001",
    "ours:paper:decomposition_size=15,r_b=7,eps_b=0.001",
    "ours:paper:decomposition_size=11,r_b=7,eps_b=0.001",
    "ours:paper:decomposition_size=7,r_b=7,eps_b=0.001",
    "ours:paper:decomposition_size=7,r_b=3,eps_b=0.0001",
    "ours:paper:decomposition_size=5,r_b=5,eps_b=0.001",
    "ours:paper:decomposition=guided",
    "ours",
    "average",
    "max",
    "avg-max",
    "gff",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("main", "variants"))
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tasks", nargs="*", help="task folders (default: all for main, medical for variants)")
    args = parser.parse_args()
    specs = DEFAULT_METHODS if args.which == "main" else VARIANTS
    tasks = args.tasks or (sorted(p.name for p in args.data.iterdir() if p.is_dir()) if args.which == "main" else MEDICAL)
    methods = [parse_method(s) for s in specs]
    for task in tasks:
        out = args.out / task
        evaluate_pairs(args.data / task, methods, out, echo=print)
        print((out / "mean.md").read_text())


if __name__ == "__main__":
    main()
