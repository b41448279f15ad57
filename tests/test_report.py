"""The QC report is self-contained and renders in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import medfuse.core.fusion
from medfuse.core.config import FusionConfig
from medfuse.metrics import compute_all
from medfuse.study.colour import Palette
from medfuse.study.report import build_report, colour_sections, sections
from medfuse.volume.chunk_task import WeightPlanes
from medfuse.volume.dispatch import fuse_volume

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def sources():
    """12 slices of the sample's T1 and its synthetic contrast on the T1 grid, with the latter's coverage."""
    fixed = _read(SAMPLE / "series1_t1")[:, :, 26:38]
    moving = sitk.Resample(_read(SAMPLE / "series2_synthetic_contrast"), fixed, sitk.Transform(), sitk.sitkLinear, 0.0,
                           sitk.sitkFloat32)
    arrays = []
    for image in (fixed, moving):
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        arrays.append(np.clip(array / np.percentile(array, 99.5), 0, 1).astype(np.float32))
    return fixed, arrays, sitk.GetArrayFromImage(moving) > 0


@pytest.fixture(scope="module")
def fused_with_planes(sources):
    _, arrays, cover = sources
    planes = WeightPlanes(2, arrays[0].shape)
    return fuse_volume(arrays, [None, cover], workers=1, planes=planes), planes


@pytest.fixture(scope="module")
def report_html(sources, fused_with_planes) -> str:
    fixed, arrays, cover = sources
    fused, planes = fused_with_planes
    provenance = {"medfuse_version": "0.1.0", "inputs": [{"role": "fixed", "label": "T1"}, {"role": "moving", "label": "S"}],
                  "outputs": {"dicom": {"folder": "dicom", "instances": 12, "window_center_width": [0.5, 1.0]},
                              "report": {"file": "report.html"}},
                  "timings_s": {"fuse": 1.0}, "fusion": FusionConfig().to_dict()}
    # The report must not fuse anything: the weights come from the fusion pass.
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_fuse", "fuse_stack", "fuse_slices"):
            patch.setattr(medfuse.core.fusion, name, _no_fusion)
        return build_report(arrays, [None, cover], fused, ["T1", "synthetic"], planes.arrays(), provenance, fixed)


def _no_fusion(*args, **kwargs):
    raise AssertionError("the report fused again")


def test_the_planes_do_not_change_the_fused_volume(sources, fused_with_planes):
    _, arrays, cover = sources
    np.testing.assert_array_equal(fuse_volume(arrays, [None, cover], workers=1), fused_with_planes[0])


def test_outputs_are_a_table_not_json(report_html):
    assert "<h2>Outputs</h2>" in report_html
    assert "<tr><th>dicom</th><td>dicom</td><td>instances: 12<br>window center width: [0.5, 1.0]</td></tr>" in report_html
    assert "Outputs: {" not in report_html


def test_colour_sections_follow_the_colour_series_rule(sources):
    fixed, arrays, _ = sources
    palette = Palette.hot_iron()
    indices = palette.indices(arrays[1])
    coloured = colour_sections(arrays[0], indices, palette, fixed.GetSpacing())
    grey = sections(arrays[0], fixed.GetSpacing())
    for name, rgb in coloured.items():
        assert rgb.shape == grey[name].shape + (3,)
        assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    # Where the functional source is 0 the palette has no chroma: the colour plane is the grey one.
    z = arrays[0].shape[0] // 2
    dark = indices[z] == 0
    assert dark.any() and (~dark).any()
    axial = colour_sections(arrays[0][z:z + 1], indices[z:z + 1], palette, (1.0, 1.0, 1.0),
                            size=max(arrays[0].shape[1:]))["axial"]
    spread = axial.max(axis=-1) - axial.min(axis=-1)
    assert spread[dark].max() < 0.02 < spread[~dark].max()


def test_report_is_self_contained(report_html):
    assert report_html.startswith("<!DOCTYPE html>")
    sources = re.findall(r"<img src='([^']+)'", report_html)
    # 3 orientations x ((2 sources + fused) + 2 sources x 2 weight maps) + 3 overlays
    assert len(sources) == 9 + 12 + 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"""(src|href)=['"]https?://""", report_html)
    for metric in ("EN", "MI", "VIFF", "QMI", "QG", "QY", "QC", "QP"):
        assert f"<th>{metric}</th>" in report_html


def test_metrics_table_holds_each_slices_compute_all_values(sources, fused_with_planes, report_html):
    """The report spreads the metrics over threads, one task per slice and metric: the table still shows
    what one compute_all call per slice gives, in METRIC_NAMES order."""
    _, arrays, _ = sources
    fused, _ = fused_with_planes
    z = fused.shape[0]
    for index in (z // 4, z // 2, (3 * z) // 4):
        values = compute_all([a[index] for a in arrays], fused[index])
        row = f"<tr><th>slice {index}</th>" + "".join(f"<td>{round(v, 4)}</td>" for v in values.values()) + "</tr>"
        assert row in report_html


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")
def test_headless_chromium_renders_a_non_blank_page(report_html, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(report_html, encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
         page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200)
    # Not blank: the page background is near-white; the embedded images put
    # dark pixels on a good part of it, with real contrast.
    assert (pixels < 64).mean() > 0.05
    assert pixels.std() > 40


def test_weight_planes_are_the_weights_each_slice_was_fused_with(sources):
    """Coronal and sagittal planes stack each slice's own weights; the rule for missing data applies."""
    from medfuse.core.fusion import fuse_stack
    from medfuse.features.registry import load_extractor

    _, arrays, cover = sources
    cover = cover.copy()
    cover[:, :, :40] = False  # the second source misses a band of every slice
    cover[3] = False  # and all of slice 3
    config = FusionConfig()
    collected = WeightPlanes(2, arrays[0].shape)
    fused = fuse_volume(arrays, [None, cover], config, workers=1, saliency_scope="slice", chunk_slices=5,
                        planes=collected)
    np.testing.assert_array_equal(fused, fuse_volume(arrays, [None, cover], config, workers=1, saliency_scope="slice",
                                                     chunk_slices=5))
    planes = collected.arrays()
    z_size, y_size, x_size = arrays[0].shape
    assert planes["coronal"].shape == (2, 2, z_size, x_size) and planes["sagittal"].shape == (2, 2, z_size, y_size)
    z = 7
    direct = fuse_stack(np.stack([a[z] for a in arrays]), config, load_extractor(threads=1))
    inside = cover[z, y_size // 2]  # the columns of the middle row that both sources cover
    assert inside.sum() > 40
    base_row, detail_row = planes["coronal"][:, :, z]  # (K, X) each
    np.testing.assert_array_equal(base_row[:, inside], direct.base_weights[:, y_size // 2, inside])
    np.testing.assert_array_equal(detail_row[:, inside], np.clip(direct.detail_weights[:, y_size // 2, inside], 0, 1))
    assert (base_row[0, ~inside] == 1).all() and (base_row[1, ~inside] == 0).all()  # the fixed source alone there
    # Only the fixed source covers the band and slice 3: weight 1 for it, 0 for the other.
    assert (planes["coronal"][:, 0, :, :40] == 1).all() and (planes["coronal"][:, 1, :, :40] == 0).all()
    assert (planes["sagittal"][:, 0, 3] == 1).all() and (planes["sagittal"][:, 1, 3] == 0).all()
    middle = planes["axial"][0]
    np.testing.assert_allclose(middle.sum(axis=0), 1.0, atol=1e-6)
    direct_middle = fuse_stack(np.stack([a[z_size // 2] for a in arrays]), config, load_extractor(threads=1))
    both = cover[z_size // 2]
    np.testing.assert_array_equal(planes["axial"][0][:, both], direct_middle.base_weights[:, both])


@pytest.mark.slow
def test_local_workers_write_the_same_planes_into_their_folder(sources, fused_with_planes, tmp_path):
    _, arrays, cover = sources
    fused, in_process = fused_with_planes
    on_workers = WeightPlanes(2, arrays[0].shape, folder=tmp_path / "planes")
    np.testing.assert_array_equal(fuse_volume(arrays, [None, cover], workers=2, scratch_dir=tmp_path,
                                              planes=on_workers), fused)
    for name, plane in in_process.arrays().items():
        np.testing.assert_array_equal(WeightPlanes.open(tmp_path / "planes").arrays()[name], plane)


@pytest.mark.slow
def test_a_study_with_a_colour_series_reports_its_mid_sections_without_fusing_again(shared_data, tmp_path, monkeypatch):
    import pydicom

    from medfuse.study.pipeline import StudyOptions, fuse_study

    root = shared_data / "volumes" / "tcia_CCTH-A01_pet_ct"
    patient = tmp_path / "patient"
    (patient / "ct").mkdir(parents=True)
    shutil.copytree(root / "PET_images", patient / "pet")
    ct = sorted(root.glob("CT_images/*.dcm"),
                key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for path in ct[len(ct) // 2 - 6: len(ct) // 2 + 6]:
        shutil.copy(path, patient / "ct" / path.name)
    calls = []
    real = medfuse.core.fusion._fuse
    monkeypatch.setattr(medfuse.core.fusion, "_fuse", lambda *a, **k: calls.append(a[0].shape[1]) or real(*a, **k))
    result = fuse_study(patient, tmp_path / "out", StudyOptions(workers=1, colour_series=True, report=True,
                                                               formats=("dicom",)))
    slices = 12
    # One fusion call per slice for the grey series (the report's planes come from it), one pass for the colour
    # series: nothing more for the report.
    assert sum(calls) == 2 * slices
    page = result.report_path.read_text(encoding="utf-8")
    section = page.split("<h2>Colour series (mid sections)</h2>")[1].split("<h2>")[0]
    assert len(re.findall(r"<img src='data:image/png;base64,", section)) == 3
    assert "<tr><th>dicom_colour</th><td>dicom_colour</td>" in page
