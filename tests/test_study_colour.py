"""Colour output (issue 5 item 6): CT + PET fused on luma, written as RGB Secondary Capture with geometry."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medfuse.cli.app import main
from medfuse.errors import InputError
from medfuse.study.colour import Palette, functional_source
from medfuse.study.pipeline import StudyOptions, fuse_study

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_studies" / "mr-phantom-two-contrasts"
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
            "FrameOfReferenceUID", "StudyInstanceUID", "PatientID", "Rows", "Columns")


def test_hot_iron_palette_runs_black_to_white_with_rising_luma():
    palette = Palette.hot_iron()
    assert palette.uid == "1.2.840.10008.1.5.1"
    assert palette.rgb[0].tolist() == [0, 0, 0] and palette.rgb[255].min() >= 250
    luma = palette.ycbcr[:, 0]
    assert np.all(np.diff(luma) >= -1e-6)  # brighter uptake is never darker luma
    # Black has neutral chroma: outside the PET, the colour image shows the grey fused anatomy.
    assert np.allclose(palette.ycbcr[0, 1:], 0.5, atol=1e-6)


def test_colour_needs_one_functional_and_one_anatomical_source(tmp_path):
    assert functional_source(["CT", "PT"]) == 1
    with pytest.raises(InputError, match="PET/SPECT"):
        functional_source(["MR", "MR"])
    with pytest.raises(InputError):
        functional_source(["PT", "NM", "CT"])
    # Refused before any work, as a bad argument (exit 2), leaving nothing behind.
    out = tmp_path / "out"
    assert main(["fuse-study", str(SAMPLE), "-o", str(out), "--quiet", "--colour", "--workers", "1"]) == 2
    assert not out.exists()


@pytest.fixture(scope="module")
def pet_ct_folder(shared_data, tmp_path_factory):
    """The shared CCTH-A01 PET + CT, with the CT cut to 16 contiguous slices through the PET (small, fast)."""
    root = shared_data / "volumes" / "tcia_CCTH-A01_pet_ct"
    folder = tmp_path_factory.mktemp("petct") / "patient"
    (folder / "ct").mkdir(parents=True)
    shutil.copytree(root / "PET_images", folder / "pet")
    ct = sorted(root.glob("CT_images/*.dcm"),
                key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    middle = len(ct) // 2
    for path in ct[middle - 8: middle + 8]:
        shutil.copy(path, folder / "ct" / path.name)
    return folder


@pytest.fixture(scope="module")
def colour_run(pet_ct_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("colour") / "out"
    return fuse_study(pet_ct_folder, out, StudyOptions(workers=1, colour_series=True, formats=("dicom",)))


def _series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]


@pytest.mark.slow
def test_colour_series_keeps_the_grey_series_geometry(colour_run):
    assert colour_run.colour_dir == colour_run.out_dir / "dicom_colour"
    grey, colour = _series(colour_run.dicom_dir), _series(colour_run.colour_dir)
    assert len(colour) == len(grey) == 16
    for g, c in zip(grey, colour):
        assert c.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert c.PhotometricInterpretation == "RGB" and c.SamplesPerPixel == 3
        for keyword in GEOMETRY:
            assert keyword in c, keyword
            assert c[keyword].value == g[keyword].value, keyword
        assert c.SeriesInstanceUID != g.SeriesInstanceUID
        cited = {item.ReferencedSOPInstanceUID for item in c.SourceImageSequence}
        assert cited == {item.ReferencedSOPInstanceUID for item in g.SourceImageSequence}
    assert len({c.SeriesInstanceUID for c in colour}) == 1


@pytest.mark.slow
def test_colour_pixels_show_uptake_in_colour_and_anatomy_in_grey(colour_run):
    rgb = np.stack([ds.pixel_array for ds in _series(colour_run.colour_dir)]).astype(int)
    grey = np.stack([ds.pixel_array for ds in _series(colour_run.dicom_dir)]).astype(float)
    chromatic = np.abs(rgb[..., 0] - rgb[..., 2]) > 16
    neutral = ~chromatic & (np.abs(rgb[..., 0] - rgb[..., 1]) <= 1)
    # PET uptake appears in colour (hot iron: red > blue) in part of the body, the rest stays grey.
    assert 0.001 < chromatic.mean() < 0.9
    assert np.all(rgb[..., 0][chromatic] >= rgb[..., 2][chromatic])
    assert neutral.mean() > 0.1
    # Grey anatomy in the colour image follows the grey fused series where neither is black.
    both = neutral & (grey > 0)
    assert np.corrcoef(rgb[..., 0][both], grey[both])[0, 1] > 0.9


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_colour_series_passes_dciodvfy_and_dcentvfy(colour_run):
    files = sorted(colour_run.colour_dir.glob("*.dcm"))
    for path in (files[0], files[len(files) // 2], files[-1]):
        out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
    out = subprocess.run(["dcentvfy", *map(str, files)], capture_output=True, text=True, check=False)
    assert (out.stdout + out.stderr).strip() == "", out.stdout + out.stderr


@pytest.mark.slow
def test_simpleitk_reads_the_colour_series_onto_the_grey_grid(colour_run):
    import SimpleITK as sitk

    def read(folder: Path) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return reader.Execute()

    grey, colour = read(colour_run.dicom_dir), read(colour_run.colour_dir)
    assert colour.GetNumberOfComponentsPerPixel() == 3
    assert colour.GetSize() == grey.GetSize()
    for a, b in ((colour.GetOrigin(), grey.GetOrigin()), (colour.GetSpacing(), grey.GetSpacing()),
                 (colour.GetDirection(), grey.GetDirection())):
        assert np.allclose(a, b, atol=1e-3)


@pytest.mark.slow
def test_orthanc_stores_orders_and_renders_the_colour_series(colour_run, tmp_path):
    """A real PACS and its viewer back end: Orthanc accepts every instance, orders the series as a volume from
    its plane information (its ordered-slices answer), and its renderer shows each slice in colour, equal to
    the stored RGB pixels."""
    from io import BytesIO

    from orthanc_support import OrthancServer, orthanc_missing_reason
    from PIL import Image

    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    colour = _series(colour_run.colour_dir)
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        assert server.upload(colour_run.colour_dir) == len(colour)
        (series,) = server.find("Series", {"SeriesInstanceUID": colour[0].SeriesInstanceUID})
        ordered = server.session.get(f"{server.url}/series/{series['ID']}/ordered-slices", timeout=30).json()
        assert ordered["Type"] == "Volume"  # sorted by position along the slice normal, not by instance number
        order = [path.split("/")[2] for path in ordered["Dicom"]]
        uid_of = {server.session.get(f"{server.url}/instances/{i}", timeout=30).json()["MainDicomTags"]
                  ["SOPInstanceUID"]: i for i in order}
        normal = np.cross(*np.reshape(np.asarray(colour[0].ImageOrientationPatient, float), (2, 3)))
        by_position = sorted(colour, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
        assert [uid_of[ds.SOPInstanceUID] for ds in by_position] in (order, order[::-1])
        for ds in (colour[0], colour[len(colour) // 2]):
            rendered = server.session.get(f"{server.url}/instances/{uid_of[ds.SOPInstanceUID]}/preview", timeout=30)
            rendered.raise_for_status()
            image = np.asarray(Image.open(BytesIO(rendered.content)).convert("RGB")).astype(int)
            assert image.shape == ds.pixel_array.shape
            assert np.abs(image - ds.pixel_array.astype(int)).max() <= 1
            assert (np.abs(image[..., 0] - image[..., 2]) > 16).any()  # colour, not grey
    finally:
        server.stop()
