"""Workflow files that attack the YAML parser or hold senseless numbers (issue 16).

Each file is validated by ``medfuse workflow validate`` in one subprocess
under a 1 GiB address-space limit, timed per file: it must be refused with
exit 8, one line naming the file and the line, and the reason; never a
MemoryError, RecursionError, traceback or internal error.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hostile_support import assert_refused, run_cli, run_limited_batch

BASE = textwrap.dedent("""\
    version: 1
    name: hostile
    source:
      folder:
        path: incoming
        stable_after_s: 30
    select:
      fixed: {modality: MR}
      moving: {modality: MR}
    outputs:
      folder: out
    """)




def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 "lol"']
    for n in range(1, levels + 1):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


HOSTILE = {
    # name: (text, line, words)
    "billion-laughs": (BASE.replace("version: 1\n", "version: 1\n" + "x-bomb:\n" + textwrap.indent(_laughs(), "  ")),
                       4, "alias *a0 refused"),
    "laughs-in-a-string-field": (
        "lol: &l0 [\"ha\", \"ha\", \"ha\", \"ha\"]\n" + BASE.replace("name: hostile\n", "name: hostile\ndescription: *l0\n"),
        4, "alias *l0 refused"),
    "recursive-alias": (BASE + "extra: &loop\n  self: *loop\n", 13, "alias *loop refused"),
    "merge-key": (BASE.replace("select:\n", "base: &b {modality: MR}\nselect:\n").replace(
        "fixed: {modality: MR}", "fixed: {<<: *b}"), 9, "aliases and merge keys are not allowed"),
    "deep-flow-mappings": (BASE + "deep: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 12, "nested more than 32 levels"),
    "deep-flow-sequences": (BASE + "deep: " + "[" * 100000 + "]" * 100000 + "\n", 12, "nested more than 32 levels"),
    "deep-block-mappings": (BASE + "".join(" " * n + f"k{n}:\n" for n in range(200)) + " " * 200 + "v\n",
                            43, "nested more than 32 levels"),  # the line of the 33rd level
    "5000-digit-integer": (BASE.replace("stable_after_s: 30", "stable_after_s: " + "9" * 5000), 6,
                           "integer with 5000 digits refused"),
    "stable-after-inf": (BASE.replace("stable_after_s: 30", "stable_after_s: .inf"), 6,
                         "'source.folder.stable_after_s' must be a finite number, got inf"),
    "stable-after-nan": (BASE.replace("stable_after_s: 30", "stable_after_s: .NaN"), 6, "must be a finite number"),
    "stable-after-overflow": (BASE.replace("stable_after_s: 30", "stable_after_s: 1.0e+999"), 6,
                              "must be a finite number, got inf"),
    "stable-after-negative": (BASE.replace("stable_after_s: 30", "stable_after_s: -5"), 6,
                              "-5 is less than the minimum of 0"),
    "stable-after-a-century": (BASE.replace("stable_after_s: 30", "stable_after_s: 3153600000"), 6,
                               "is greater than the maximum of 604800"),
    "negative-window": (BASE + "fusion:\n  window: \"40,-80\"\n", 13, "fusion.window centre 40, width -80: width must be positive"),
    "infinite-window": (BASE + "fusion:\n  window: [40, .inf]\n", 13, "must be a finite number"),
    "nan-in-a-fusion-option": (BASE + "fusion:\n  registration:\n    sampling_fraction: .nan\n", 14,
                               "'fusion.registration.sampling_fraction' must be a finite number"),
}


def test_hostile_workflow_files_are_refused_with_their_line(tmp_path):
    cases = sorted(HOSTILE)
    paths = [tmp_path / f"{case}.yaml" for case in cases]
    for case, path in zip(cases, paths):
        path.write_text(HOSTILE[case][0])
    results = run_limited_batch([["workflow", "validate", path] for path in paths])
    for case, path, result in zip(cases, paths, results):
        _text, line, words = HOSTILE[case]
        assert_refused(result, 8, f"{path}:{line}: ", words)
        assert result[3] < 10, f"{case} took {result[3]:.1f} s"


def test_network_timeouts_must_be_finite_and_bounded(tmp_path, capsys):
    text = BASE.replace("  folder:\n    path: incoming\n    stable_after_s: 30\n",
                        "  dicomweb:\n    url: http://127.0.0.1:8042/dicom-web\n    timeout_s: .inf\n")
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    assert_refused(run_cli(capsys, ["workflow", "validate", path]), 8, f"{path}:6: ", "must be a finite number")
    path.write_text(text.replace(".inf", "86400"))
    assert_refused(run_cli(capsys, ["workflow", "validate", path]), 8, f"{path}:6: ",
                   "86400 is greater than the maximum of 3600")


def test_oversized_workflow_file_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "wf.yaml"
    path.write_text(BASE + "# " + "x" * (300 * 1024) + "\n")
    assert_refused(run_cli(capsys, ["workflow", "validate", path]), 8, str(path), "larger than 256 KiB")


def test_an_anchor_without_aliases_and_a_plain_file_still_validate(tmp_path, capsys):
    path = tmp_path / "wf.yaml"
    path.write_text(BASE.replace("fixed: {modality: MR}", "fixed: &f {modality: MR}"))
    code, out, err = run_cli(capsys, ["workflow", "validate", path])
    assert code == 0, err
