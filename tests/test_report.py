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

from medfuse.core.config import FusionConfig
from medfuse.study.report import build_report, weight_planes
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
def report_html(sources) -> str:
    fixed, arrays, cover = sources
    fused = fuse_volume(arrays, [None, cover], workers=1)
    provenance = {"medfuse_version": "0.1.0", "inputs": [{"role": "fixed", "label": "T1"}, {"role": "moving", "label": "S"}],
                  "timings_s": {"fuse": 1.0}, "fusion": FusionConfig().to_dict()}
    return build_report(arrays, [None, cover], fused, ["T1", "synthetic"], FusionConfig(), "volume", provenance, fixed)


def test_report_is_self_contained(report_html):
    assert report_html.startswith("<!DOCTYPE html>")
    sources = re.findall(r"<img src='([^']+)'", report_html)
    # 3 orientations x ((2 sources + fused) + 2 sources x 2 weight maps) + 3 overlays
    assert len(sources) == 9 + 12 + 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"""(src|href)=['"]https?://""", report_html)
    for metric in ("EN", "MI", "VIFF", "QMI", "QG", "QY", "QC", "QP"):
        assert f"<th>{metric}</th>" in report_html


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
    planes = weight_planes(arrays, [None, cover], config, "slice")
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
