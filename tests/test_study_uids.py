"""Caller-given UID entropy (issue 5 follow-up for the workflow): UIDs known before the run, stable on re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from medfuse.cli.app import main
from medfuse.errors import InputError
from medfuse.io.dicom.write import derived_uid
from medfuse.study.pipeline import StudyOptions, fuse_study

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
KEY = "workflow-ledger-key-0001"


def _uids(folder: Path) -> list[tuple[int, str, str]]:
    out = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append((int(ds.InstanceNumber), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    return sorted(out)


def test_uid_entropy_options_are_checked():
    with pytest.raises(InputError, match="not both"):
        StudyOptions(uid_entropy=KEY, deterministic_uids=True)
    with pytest.raises(InputError, match="non-empty"):
        StudyOptions(uid_entropy="  ")


@pytest.mark.slow
def test_uid_entropy_gives_the_predicted_uids_on_every_run(tmp_path):
    first = fuse_study(SAMPLE, tmp_path / "a", StudyOptions(workers=1, formats=("dicom",), uid_entropy=KEY))
    # The same job again, through the CLI: the same UIDs, without any rewriting afterwards.
    assert main(["fuse-study", str(SAMPLE), "-o", str(tmp_path / "b"), "--quiet", "--workers", "1",
                 "--format", "dicom", "--uid-entropy", KEY]) == 0
    a, b = _uids(first.dicom_dir), _uids(tmp_path / "b" / "dicom")
    assert a == b
    assert first.series_instance_uid == derived_uid(KEY, "series")
    assert {series for _, series, _ in a} == {derived_uid(KEY, "series")}
    assert [sop for _, _, sop in a] == [derived_uid(KEY, "instance", str(z)) for z in range(len(a))]
    assert len({sop for _, _, sop in a}) == len(a)
    provenance = json.loads(first.provenance_path.read_text())
    assert KEY in provenance["outputs"]["dicom"]["uids"]
    # A different key gives different UIDs.
    assert derived_uid("another-key", "series") != derived_uid(KEY, "series")
