"""What fuse-study / fuse-volumes can know before the work starts is checked before it starts (issue 16).

Each refusal is asserted to come before any input is read (the reading or
scanning function is replaced by one that fails the test), with its exit code,
a one-line message naming the inputs and the reason, and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from medfuse.cli.app import main
from medfuse.core.config import FusionConfig
from medfuse.errors import InputError, ModelError
from medfuse.study.pipeline import StudyOptions, fuse_study, fuse_volumes

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_studies" / "mr-phantom-two-contrasts"


def _series(name: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SAMPLE / name)))
    return reader.Execute()


@pytest.fixture(scope="module")
def nifti_pair(tmp_path_factory) -> list[Path]:
    """The sample's two MR series as NIfTI files (16 slices of the fixed one, to keep the run short)."""
    folder = tmp_path_factory.mktemp("nifti")
    paths = [folder / "t1.nii.gz", folder / "synthetic.nii.gz"]
    sitk.WriteImage(_series("series1_t1")[:, :, 24:40], str(paths[0]))
    sitk.WriteImage(_series("series2_synthetic_contrast"), str(paths[1]))
    return paths


@pytest.fixture()
def nothing_read(monkeypatch):
    """Fail the test if any input is read or scanned."""
    def no_work(*args, **kwargs):
        raise AssertionError("an input was read although the run could be refused before")

    for name in ("load_volume", "read_series", "scan_folder"):
        monkeypatch.setattr(f"medfuse.study.pipeline.{name}", no_work)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medfuse: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("options", [["--format", "dicom"], ["--format", "dicom,nifti"], ["--colour"]],
                         ids=["dicom", "dicom+nifti", "colour"])
def test_dicom_outputs_from_nifti_inputs_are_refused_before_reading(options, nifti_pair, tmp_path, capsys,
                                                                    nothing_read):
    out = tmp_path / "out"
    code = main(["fuse-volumes", *map(str, nifti_pair), "-o", str(out), "--workers", "1", "--quiet", *options])
    assert code == 2
    line = _error_line(capsys)
    assert "needs a DICOM CT or MR input" in line
    assert "t1.nii.gz (NIfTI)" in line and "synthetic.nii.gz (NIfTI)" in line and "--format nifti" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_nifti_inputs_default_to_nifti_output(nifti_pair, tmp_path, capsys):
    """The default formats follow the inputs: NIfTI in, NIfTI out (it used to fail at the write stage)."""
    out = tmp_path / "out"
    code = main(["fuse-volumes", *map(str, nifti_pair), "-o", str(out), "--workers", "1", "--json-log"])
    assert code == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    info = [e["message"] for e in events if e["event"] == "info"]
    assert any(m.startswith("writing NIfTI only: no input is a DICOM CT or MR series") for m in info), info
    result = json.loads(captured.out)
    assert result["dicom"] is None and result["nifti"] == str(out / "fused.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == ["fused.nii.gz", "provenance.json", "transforms"]
    fused = sitk.ReadImage(str(out / "fused.nii.gz"))
    assert fused.GetSize() == sitk.ReadImage(str(nifti_pair[0])).GetSize()


def test_fuse_study_refuses_colour_for_two_mr_series_before_reading(tmp_path, capsys, monkeypatch):
    """The modalities are known from the scan: --colour without a PET/SPECT series is refused after selecting."""
    def no_read(*args, **kwargs):
        raise AssertionError("a series was read although the run could be refused before")

    monkeypatch.setattr("medfuse.study.pipeline.read_series", no_read)
    code = main(["fuse-study", str(SAMPLE), "-o", str(tmp_path / "out"), "--colour", "--workers", "1", "--quiet"])
    assert code == 2
    assert "colour output needs one PET/SPECT (PT/NM) volume and at least one CT/MR volume; got MR, MR" in \
        _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_input_is_refused_before_the_others_are_read(nifti_pair, tmp_path, capsys, nothing_read):
    missing = tmp_path / "nowhere" / "b.nii.gz"
    code = main(["fuse-volumes", str(nifti_pair[0]), str(missing), "-o", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert f"no such file or folder: {missing}" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("window", ["40,-5", "40,nan", "lung-ish", "40"])
def test_a_malformed_window_is_refused_by_the_options(window, tmp_path, nothing_read):
    """Library callers too (the CLI checks --window itself): not at the map stage, after registration."""
    with pytest.raises(InputError, match="window"):
        fuse_study(SAMPLE, tmp_path / "out", StudyOptions(workers=1, window=window))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_model_file_is_refused_before_scanning(tmp_path, monkeypatch, capsys, nothing_read):
    """A model file gone from the registry: exit 7 at once, not in the fuse stage after registration."""
    from test_models_registry import _register_copy

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("MEDFUSE_MODELS_DIR", str(models))
    _register_copy(models, "gone").unlink()
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="missing") as caught:
        fuse_study(SAMPLE, out, StudyOptions(workers=1, fusion=FusionConfig(model="gone")))
    assert caught.value.exit_code == 7
    assert not out.exists()
    with pytest.raises(ModelError, match="unknown model 'nonesuch'"):
        fuse_study(SAMPLE, out, StudyOptions(workers=1, fusion=FusionConfig(model="nonesuch")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_explicit_formats_are_kept_and_an_empty_list_refused(tmp_path, capsys, nothing_read):
    code = main(["fuse-study", str(SAMPLE), "-o", str(tmp_path / "out"), "--format", "", "--quiet"])
    assert code == 2
    assert "formats must be a non-empty subset of dicom, nifti" in _error_line(capsys)
    assert StudyOptions(formats=["nifti"]).formats == ("nifti",)
    assert StudyOptions().formats is None  # follow the inputs
    assert list(tmp_path.iterdir()) == []
