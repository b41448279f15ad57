"""A workflow holds misregistered studies for review and stores nothing of them (issue 16), against a real Orthanc.

Three copies of the bundled sample study (whole series, so that the registration
is well constrained) go into one Orthanc: one as it is, one whose moving series
has its anatomy shifted out of most of the field of view, and one whose moving
series is turned 120 degrees in its header (beyond the registration's capture
range). One workflow pass stores the first and holds the other two (ledger state
``held``, listed by ``workflow status`` with the reason); the next pass leaves
them held. Nothing of the held studies reaches the PACS.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc_support import OrthancServer, copy_study, orthanc_missing_reason
from test_workflow_orthanc import PASSWORD, PASSWORD_ENV, dicomweb_source, fused_series, json_lines, workflow_file

from medfuse.cli.app import main

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]
SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
MOVING = "series2_synthetic_contrast"


@pytest.fixture
def orthanc(tmp_path_factory):
    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


def shift_anatomy_out(series: Path, fraction: float = 0.75) -> None:
    """Move every slice's pixels *fraction* of the width sideways (the rest is cut off, zeros come in)."""
    for file in series.iterdir():
        ds = pydicom.dcmread(file)
        pixels = ds.pixel_array
        moved = np.zeros_like(pixels)
        cut = int(pixels.shape[1] * fraction)
        moved[:, cut:] = pixels[:, : pixels.shape[1] - cut]
        ds.PixelData = np.ascontiguousarray(moved).tobytes()
        ds.save_as(file)


def turn_header(series: Path, degrees: float = 120.0) -> None:
    """Rotate the series' geometry about the patient's z axis through its centre (pixels untouched)."""
    files = sorted(series.iterdir())
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient]).reshape(2, 3)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    centre = positions.mean(0) + iop[0] * col_mm * (first.Columns - 1) / 2 + iop[1] * row_mm * (first.Rows - 1) / 2
    a = math.radians(degrees)
    turn = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    for file, ds, position in zip(files, datasets, positions):
        ds.ImagePositionPatient = [f"{v:.4f}" for v in turn @ (position - centre) + centre]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([turn @ iop[0], turn @ iop[1]])]
        ds.save_as(file)


def test_workflow_holds_misregistered_studies_and_stores_nothing_of_them(orthanc, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    studies = {}
    for index, (name, spoil) in enumerate([("good", None), ("shifted", shift_anatomy_out), ("turned", turn_header)]):
        folder = tmp_path / name
        studies[name] = copy_study(SAMPLE, folder, 40 + index)
        if spoil is not None:
            spoil(folder / MOVING)
        orthanc.upload(folder)
    wf = workflow_file(tmp_path / "wf", "hold-doubtful", dicomweb_source(orthanc), outputs={"pacs": "true"})

    capsys.readouterr()
    code = main(["workflow", "run", str(wf), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err + out
    outcomes = {r["study_uid"]: r for r in json_lines(out) if r["event"] == "study"}
    assert outcomes[studies["good"]]["outcome"] == "done"
    for name in ("shifted", "turned"):
        record = outcomes[studies[name]]
        assert record["outcome"] == "held", record
        assert record["reason"].startswith("doubtful registration, not delivered:")
    assert "2 studies held for review" in err
    assert json_lines(out)[-1]["held"] == 2

    assert len(fused_series(orthanc, studies["good"])) == 1
    assert fused_series(orthanc, studies["shifted"]) == [] and fused_series(orthanc, studies["turned"]) == []
    assert "covers only" in outcomes[studies["shifted"]]["reason"]

    main(["workflow", "status", str(wf), "--json"])
    jobs = {j["study_uid"]: j for j in json.loads(capsys.readouterr().out)}
    for name in ("shifted", "turned"):
        job = jobs[studies[name]]
        assert job["state"] == "held" and "doubtful registration" in job["reason"]
        review = Path(job["outputs"]["review_folder"])
        check = json.loads((review / "provenance.json").read_text())["alignment_check"][0]
        assert check["doubtful"] is True
    assert jobs[studies["good"]]["state"] == "done"
    main(["workflow", "status", str(wf)])
    table = capsys.readouterr().out
    assert table.count("held") >= 2 and "doubtful registration" in table

    # The next pass neither re-fuses nor delivers the held studies.
    assert main(["workflow", "run", str(wf), "--json"]) == 0
    again = {r["study_uid"]: r["outcome"] for r in json_lines(capsys.readouterr().out) if r["event"] == "study"}
    assert again == {}  # already done or held: nothing is logged as fused
    assert fused_series(orthanc, studies["shifted"]) == [] and fused_series(orthanc, studies["turned"]) == []
