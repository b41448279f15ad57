"""`medfuse evaluate`: single-result scoring and the --pairs harness."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medfuse import metrics
from medfuse.cli.app import main


@pytest.fixture(scope="module")
def pair_tree(shared_data, tmp_path_factory):
    """A small pairs folder: two T1-T2 pairs and one PET-MRI (colour) pair."""
    root = tmp_path_factory.mktemp("pairs")
    for task, pair in (("t1-t2", "ivrl_1"), ("t1-t2", "ifcnn_c05"), ("pet-mri", "cdd_11")):
        shutil.copytree(shared_data / "pairs2d" / task / pair, root / task / pair)
    return root


def _read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_sources_and_fused_json_matches_library(pair_tree, tmp_path, capsys):
    folder = pair_tree / "t1-t2" / "ivrl_1"
    a, b = (np.asarray(Image.open(folder / n)) for n in ("a.png", "b.png"))
    Image.fromarray(np.maximum(a, b)).save(tmp_path / "max.png")
    code = main(["evaluate", "--sources", str(folder / "a.png"), str(folder / "b.png"), "--fused", str(tmp_path / "max.png"), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = metrics.compute_all([a, b], np.maximum(a, b))
    assert list(printed) == list(metrics.METRIC_NAMES)
    for name in metrics.METRIC_NAMES:
        assert printed[name] == pytest.approx(expected[name], abs=1e-12)


def test_table_output_lists_all_eight(pair_tree, capsys):
    folder = pair_tree / "t1-t2" / "ivrl_1"
    code = main(["evaluate", "--sources", str(folder / "a.png"), "--sources", str(folder / "b.png"), "--fused", str(folder / "a.png")])
    assert code == 0
    out = capsys.readouterr().out
    for name in metrics.METRIC_NAMES:
        assert name in out


@pytest.mark.slow
def test_pairs_harness_writes_consistent_tables(pair_tree, tmp_path, capsys):
    out = tmp_path / "tables"
    methods = ["max", "average", "ours:paper", "ours:paper:clip_detail_weights=true"]
    code = main(["evaluate", "--pairs", str(pair_tree), *sum((["-m", m] for m in methods), []), "-o", str(out), "--save-fused"])
    assert code == 0, capsys.readouterr().err
    rows = _read_csv(out / "per_pair.csv")
    assert len(rows) == 3 * len(methods)
    assert {r["task"] for r in rows} == {"t1-t2", "pet-mri"}
    means = {(r["task"], r["method"]): r for r in _read_csv(out / "mean.csv")}
    assert means[("t1-t2", "max")]["pairs"] == "2"
    assert means[("pet-mri", "ours:paper")]["pairs"] == "1"
    # The pixel-max row must equal scoring the max of the stored files directly.
    folder = pair_tree / "t1-t2" / "ivrl_1"
    a, b = (np.asarray(Image.open(folder / n)) for n in ("a.png", "b.png"))
    row = next(r for r in rows if r["pair"] == "ivrl_1" and r["method"] == "max")
    direct = metrics.compute_all([a, b], np.maximum(a, b))
    for name in metrics.METRIC_NAMES:
        assert float(row[name]) == pytest.approx(direct[name], abs=2e-6)
    # Saved fused images score exactly as the table says.
    saved = np.asarray(Image.open(out / "fused" / "pet-mri" / "cdd_11" / "ours_paper.png"))
    pet = [np.asarray(Image.open(pair_tree / "pet-mri" / "cdd_11" / n)) for n in ("a.png", "b.png")]
    row = next(r for r in rows if r["pair"] == "cdd_11" and r["method"] == "ours:paper")
    assert float(row["QG"]) == pytest.approx(metrics.qg(pet, saved), abs=2e-6)
    described = json.loads((out / "methods.json").read_text())
    assert described["ours:paper:clip_detail_weights=true"]["config"]["clip_detail_weights"] is True
    assert "### t1-t2 (2 pairs)" in (out / "mean.md").read_text()


@pytest.mark.slow
def test_pairs_harness_is_deterministic(pair_tree, tmp_path):
    runs = []
    for name in ("one", "two"):
        assert main(["evaluate", "--pairs", str(pair_tree / "t1-t2"), "-m", "gff", "-m", "avg-max", "-o", str(tmp_path / name)]) == 0
        runs.append((tmp_path / name / "per_pair.csv").read_bytes())
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pairs", "{root}", "-m", "bogus", "-o", "{tmp}"], "unknown method"),
        (["--pairs", "{root}", "-m", "ours:paper:no_such_knob=1", "-o", "{tmp}"], "no_such_knob"),
        (["--pairs", "{root}", "-m", "ours:fast", "-o", "{tmp}"], "preset"),
        (["--pairs", "{root}"], "-o OUTDIR"),
        (["--pairs", "{tmp}/missing", "-o", "{tmp}"], "not a folder"),
        (["--sources", "{root}/t1-t2/ivrl_1/a.png", "--fused", "{root}/t1-t2/ivrl_1/a.png"], "--sources A B"),
        (["--sources", "{root}/t1-t2/ivrl_1/a.png", "{root}/t1-t2/ivrl_1/b.png", "--fused", "{tmp}/none.png"], "no such file"),
        (["--sources", "{root}/t1-t2/ivrl_1/a.png", "--bogus-flag", "--fused", "x.png"], "unknown option"),
    ],
)
def test_user_errors_exit_2_with_one_line(pair_tree, tmp_path, capsys, args, message):
    filled = [a.format(root=pair_tree, tmp=tmp_path) for a in args]
    assert main(["evaluate", *filled]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medfuse: error:") and message in err and "\n" not in err


def test_mismatched_sizes_are_refused(tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(tmp_path / "b.png")
    code = main(["evaluate", "--sources", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--fused", str(tmp_path / "a.png")])
    assert code == 2
    assert "80x64" in capsys.readouterr().err
