"""Workflow files: the shipped examples validate; bad files are refused with the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from medfuse.cli.app import main
from medfuse.errors import WorkflowError
from medfuse.workflow.config import load_workflow, schedule_problem
from medfuse.workflow.schema import schema_json

GOOD = textwrap.dedent("""\
    version: 1
    name: test-flow
    schedule: "*/10 * * * *"
    source:
      dicomweb:
        url: http://127.0.0.1:8042/dicom-web
        auth:
          username: medfuse
          password_env: MEDFUSE_TEST_PASSWORD
    select:
      fixed: {modality: CT, description: "(?i)head"}
      moving: {modality: MR}
    outputs:
      pacs: true
    """)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(WorkflowError) as info:
        load_workflow(write(tmp_path, text))
    return str(info.value)


@pytest.mark.parametrize("name", ["ct-mr-brain-to-pacs.yaml", "mr-t1-t2-folder-to-nifti.yaml"])
def test_shipped_examples_validate(repo_root: Path, name: str) -> None:
    wf = load_workflow(repo_root / "workflows" / name)
    assert wf.name and wf.fixed != wf.moving
    assert main(["workflow", "validate", str(repo_root / "workflows" / name)]) == 0


def test_examples_cover_the_two_issue_scenarios(repo_root: Path) -> None:
    pacs = load_workflow(repo_root / "workflows" / "ct-mr-brain-to-pacs.yaml")
    folder = load_workflow(repo_root / "workflows" / "mr-t1-t2-folder-to-nifti.yaml")
    assert (pacs.source_kind, pacs.fixed.modality, pacs.moving.modality, pacs.outputs["pacs"]) == ("dicomweb", "CT", "MR", True)
    assert (folder.source_kind, folder.fixed.modality, folder.moving.modality, folder.outputs["nifti"]) == ("folder", "MR", "MR", True)


def test_schema_file_matches_code(repo_root: Path) -> None:
    assert (repo_root / "workflows" / "workflow.schema.json").read_text() == schema_json()


def test_plain_text_password_is_refused_with_line(tmp_path: Path) -> None:
    text = GOOD.replace("password_env: MEDFUSE_TEST_PASSWORD", "password: hunter2")
    message = refused(tmp_path, text)
    assert ":9:" in message and "plain-text secret 'source.dicomweb.auth.password'" in message
    assert "hunter2" not in message


def test_password_in_url_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace("http://127.0.0.1", "http://medfuse:hunter2@127.0.0.1"))
    assert ":6:" in message and "password inside the URL" in message and "hunter2" not in message


def test_unknown_key_names_key_line_and_allowed_keys(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace("  moving: {modality: MR}\n", "  moving: {modality: MR}\n  colour: hot\n"))
    assert ":13: unknown key 'colour' in select (allowed: fixed, moving)" in message


def test_wrong_type_names_field_and_line(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace("  pacs: true", "  pacs: yes please"))
    assert ":14: 'outputs.pacs' must be true or false, got str 'yes please'" in message


def test_missing_field_is_named(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace("  moving: {modality: MR}\n", ""))
    assert ":11: missing field 'moving' in select" in message


@pytest.mark.parametrize("schedule, why", [
    ("every tuesday", "5 cron fields"),
    ("61 * * * *", "minute field '61' is outside 0-59"),
    ("*/0 * * * *", "step must be at least 1"),
    ("* * * 13 *", "month field '13'"),
])
def test_bad_schedule_is_refused(tmp_path: Path, schedule: str, why: str) -> None:
    message = refused(tmp_path, GOOD.replace('"*/10 * * * *"', f'"{schedule}"'))
    assert ":3: bad schedule" in message and why in message


@pytest.mark.parametrize("schedule", ["on-stable", "@hourly", "0 2 * * 1-5", "5,35 8-18 * * *"])
def test_good_schedules(schedule: str) -> None:
    assert schedule_problem(schedule) is None


def test_bad_regex_duplicate_key_and_folder_pacs(tmp_path: Path) -> None:
    assert "not a valid regular expression" in refused(tmp_path, GOOD.replace('"(?i)head"', '"(unclosed"'))
    assert ":4: duplicate key 'schedule'" in refused(tmp_path, GOOD.replace("source:", "schedule: '@daily'\nsource:"))
    folder = GOOD.replace("  dicomweb:\n    url: http://127.0.0.1:8042/dicom-web\n    auth:\n      username: medfuse\n"
                          "      password_env: MEDFUSE_TEST_PASSWORD\n", "  folder: {path: /tmp}\n")
    assert "outputs.pacs needs a PACS source" in refused(tmp_path, folder)


def test_cli_reports_bad_file_in_one_line_with_exit_code_8(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, GOOD.replace("password_env: MEDFUSE_TEST_PASSWORD", "password: hunter2"))
    assert main(["workflow", "validate", str(path)]) == 8
    err = capsys.readouterr().err
    assert err.startswith("medfuse: error: ") and err.count("\n") == 1 and "hunter2" not in err


def test_parameters_hash_changes_with_rules_not_with_source(tmp_path: Path) -> None:
    base = load_workflow(write(tmp_path, GOOD)).parameters_hash
    moved = load_workflow(write(tmp_path, GOOD.replace("8042", "9042"))).parameters_hash
    other_rule = load_workflow(write(tmp_path, GOOD.replace("{modality: MR}", "{modality: PT}"))).parameters_hash
    assert base == moved and base != other_rule


def test_fusion_options_are_checked_against_fuse_study(tmp_path: Path) -> None:
    good = GOOD + "fusion:\n  window: brain\n  workers: 1\n  fusion: {r_b: 45}\n  registration: {affine: false}\n"
    assert load_workflow(write(tmp_path, good)).fusion["fusion"] == {"r_b": 45}
    assert ":16: unknown fusion option 'colour'" in refused(tmp_path, GOOD + "fusion:\n  colour: hot\n")
    assert ":17: unknown fusion option 'fusion.r_bb'" in refused(tmp_path, GOOD + "fusion:\n  workers: 1\n  fusion: {r_bb: 3}\n")


@pytest.mark.parametrize("option, value, why", [
    ("fixed", "'3'", "the fixed series is chosen by select.fixed"),
    ("rules", "{fixed: {modality: CT}}", "series are chosen by select.fixed and select.moving"),
    ("formats", "[nifti]", "outputs are chosen by outputs"),
    ("uid_entropy", "my-key", "the workflow derives the output UIDs from its job key"),
    ("deterministic_uids", "true", "the workflow derives the output UIDs from its job key"),
    ("colour_series", "true", "workflows deliver only the grey fused series, not dicom_colour/"),
])
def test_fusion_options_the_workflow_controls_or_does_not_deliver_are_refused(tmp_path: Path, option: str,
                                                                              value: str, why: str) -> None:
    message = refused(tmp_path, GOOD + f"fusion:\n  workers: 1\n  {option}: {value}\n")
    assert f"wf.yaml:17: fusion option '{option}' cannot be set in a workflow file: {why}" in message
    assert main(["workflow", "validate", str(tmp_path / "wf.yaml")]) != 0


def test_refused_fusion_options_are_fuse_study_options() -> None:
    import dataclasses

    from medfuse.study.pipeline import StudyOptions
    from medfuse.workflow.config import (
        WORKFLOW_CONTROLLED_OPTIONS,
        WORKFLOW_UNSUPPORTED_OPTIONS,
    )

    fields = {f.name for f in dataclasses.fields(StudyOptions)}
    assert set(WORKFLOW_CONTROLLED_OPTIONS) | set(WORKFLOW_UNSUPPORTED_OPTIONS) <= fields  # renamed upstream?


@pytest.mark.parametrize("folder, plane", [("axasc35", "axial"), ("corasc35", "coronal"), ("sagasc35", "sagittal")])
def test_orientation_rule_reads_real_scanner_headers(shared_data: Path, folder: str, plane: str) -> None:
    import pydicom

    from medfuse.workflow.config import SeriesRule, orientation_of

    first = sorted((shared_data / "dicom" / "qa_siemens_orientation" / folder).iterdir())[0]
    found = orientation_of(pydicom.dcmread(first, stop_before_pixels=True).ImageOrientationPatient)
    assert found == plane
    assert SeriesRule(modality="MR", orientation=plane).matches("MR", "", "", found)
    assert not SeriesRule(modality="MR", orientation="axial" if plane != "axial" else "sagittal").matches("MR", "", "", found)
    assert orientation_of([1, 0, 0, 0, 0.6, 0.8]) == "oblique" and orientation_of(None) == ""
