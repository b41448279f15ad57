"""Hand-checkable cases for the eight fusion metrics, and input handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from medfuse import metrics
from medfuse.errors import InputError


@pytest.fixture(scope="module")
def ct_mri(shared_data):
    """The IVRL CT-MRI pair, uint8 (256, 256) each: (mri, ct)."""
    folder = shared_data / "pairs2d" / "ct-mri" / "ivrl_1"
    return tuple(np.array(Image.open(folder / name).convert("L")) for name in ("a.png", "b.png"))


def _levels(values, shape=(64, 64)):
    """An image made of equal-area vertical stripes of the given grey levels."""
    stripes = np.repeat(np.array(values, dtype=np.uint8), shape[1] // len(values))
    return np.tile(stripes, (shape[0], 1))


def test_entropy_of_two_level_image_is_one_bit():
    two = _levels([0, 255])
    assert metrics.en([two, two], two) == pytest.approx(1.0, abs=1e-12)


def test_entropy_of_four_equal_levels_is_two_bits_and_constant_is_zero():
    four = _levels([10, 80, 150, 220])
    flat = np.full((64, 64), 37, np.uint8)
    assert metrics.en([four, four], four) == pytest.approx(2.0, abs=1e-12)
    assert metrics.en([four, four], flat) == 0.0


def test_mi_of_an_image_with_itself_is_its_entropy():
    four = _levels([10, 80, 150, 220])
    flat = np.full((64, 64), 99, np.uint8)
    # A constant source shares no information: MI = MI(A, A) + 0 = H(A) = 2 bits.
    assert metrics.mi([four, flat], four) == pytest.approx(2.0, abs=1e-12)
    assert metrics.image_entropy(four) == pytest.approx(2.0, abs=1e-12)


def test_mi_of_real_image_with_itself_equals_entropy(ct_mri):
    mri, _ = ct_mri
    flat = np.zeros_like(mri)
    assert metrics.mi([mri, flat], mri) == pytest.approx(metrics.image_entropy(mri), abs=1e-9)
    assert metrics.mi([mri, mri], mri) == pytest.approx(2 * metrics.image_entropy(mri), abs=1e-9)


def test_qmi_bounds_on_hand_cases(ct_mri):
    mri, _ = ct_mri
    flat = np.zeros_like(mri)
    assert metrics.qmi([mri, mri], mri) == pytest.approx(2.0, abs=1e-12)
    # MI(A,A) / (H(A) + H(A)) = 1/2, doubled: 1; the constant source adds 0.
    assert metrics.qmi([mri, flat], mri) == pytest.approx(1.0, abs=1e-12)


def test_qg_maximum_for_identical_sources(ct_mri):
    mri, _ = ct_mri
    # Q_g(1) * Q_a(1) with Xydeas & Petrovic's constants, written out by hand.
    expected = 0.9994 / (1 + math.exp(-15 * (1 - 0.5))) * 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))
    assert metrics.qg([mri, mri], mri) == pytest.approx(expected, abs=1e-12)
    assert metrics.QG_MAXIMUM == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("name", ["QY", "QC", "VIFF"])
def test_structural_and_viff_equal_one_for_identical_sources(ct_mri, name):
    mri, _ = ct_mri
    assert metrics.METRICS[name]([mri, mri], mri) == pytest.approx(1.0, abs=1e-6)


def test_qp_identical_sources_near_one_and_above_degraded_fusions(ct_mri):
    mri, ct = ct_mri
    best = metrics.qp([mri, mri], mri)
    # Liu's convention leaves F's feature map unmasked, so 1 is not reached.
    assert 0.95 < best < 1.0
    blurred = np.asarray(Image.fromarray(mri).resize((64, 64)).resize((256, 256), Image.BILINEAR))
    assert metrics.qp([mri, mri], blurred) < best - 0.2


def test_metrics_reward_the_right_source_content(ct_mri):
    """Fusing with one source's content scores better than a blank fusion."""
    mri, ct = ct_mri
    blank = np.zeros_like(mri)
    average = ((mri.astype(np.float64) + ct) / 2).round().astype(np.uint8)
    for name in ("MI", "VIFF", "QMI", "QG"):
        assert metrics.METRICS[name]([mri, ct], average) > metrics.METRICS[name]([mri, ct], blank), name
    blurred = np.asarray(Image.fromarray(average).resize((64, 64)).resize((256, 256), Image.BILINEAR))
    assert metrics.qp([mri, ct], average) > metrics.qp([mri, ct], blurred) + 0.05


def test_qp_of_a_constant_fused_image_degenerates_to_one(ct_mri):
    """Liu's stabilised correlation (cov + C) / (sqrt(var var_F) + C) is C / C = 1
    where F's feature map is constant: a blank fusion scores ~1 (docs/metrics.md)."""
    mri, ct = ct_mri
    assert metrics.qp([mri, ct], np.zeros_like(mri)) > 0.99


def test_symmetric_metrics_do_not_depend_on_source_order_but_qc_does(ct_mri):
    mri, ct = ct_mri
    fused = np.maximum(mri, ct)
    for name in ("EN", "MI", "QMI", "QG", "QY", "QP"):
        fn = metrics.METRICS[name]
        assert fn([mri, ct], fused) == pytest.approx(fn([ct, mri], fused), abs=1e-12), name
    assert abs(metrics.qc([mri, ct], fused) - metrics.qc([ct, mri], fused)) > 1e-3
    # VIFF depends on the order only where both gains tie (Han's code gives the
    # tie to the later source): a small effect, not a symmetry.
    assert metrics.viff([mri, ct], fused) == pytest.approx(metrics.viff([ct, mri], fused), abs=5e-3)


def test_flat_background_windows_are_left_out(ct_mri):
    """Widening a black border adds only flat windows: QY, QC and QG must not change."""
    mri, ct = ct_mri
    fused = np.maximum(mri, ct)
    narrow = [np.pad(x, 16) for x in (mri, ct, fused)]
    wide = [np.pad(x, 48) for x in (mri, ct, fused)]
    for name in ("QY", "QC", "QG"):
        fn = metrics.METRICS[name]
        assert fn(narrow[:2], narrow[2]) == pytest.approx(fn(wide[:2], wide[2]), abs=1e-12), name


def test_all_flat_sources_make_structural_metrics_undefined():
    flat = np.full((64, 64), 0, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert math.isnan(metrics.qy([flat, flat], noise))
    assert math.isnan(metrics.qc([flat, flat], flat))


def test_uint8_float_and_uint16_inputs_agree(ct_mri):
    mri, ct = ct_mri
    fused = np.maximum(mri, ct)
    as_uint8 = metrics.compute_all([mri, ct], fused)
    as_float = metrics.compute_all([mri / 255.0, ct / 255.0], fused.astype(np.float32) / 255.0)
    as_uint16 = metrics.compute_all([mri.astype(np.uint16) * 257, ct.astype(np.uint16) * 257], fused.astype(np.uint16) * 257)
    for name in metrics.METRIC_NAMES:
        assert as_float[name] == pytest.approx(as_uint8[name], abs=1e-6), name
        assert as_uint16[name] == pytest.approx(as_uint8[name], abs=1e-6), name


def test_grey_stored_as_rgb_equals_grey(ct_mri):
    mri, ct = ct_mri
    fused = np.maximum(mri, ct)
    rgb = [np.repeat(x[:, :, None], 3, axis=2) for x in (mri, ct, fused)]
    grey = metrics.compute_all([mri, ct], fused)
    colour = metrics.compute_all(rgb[:2], rgb[2])
    for name in metrics.METRIC_NAMES:
        assert colour[name] == pytest.approx(grey[name], abs=1e-9), name


def test_three_identical_sources_keep_the_maxima(ct_mri):
    mri, _ = ct_mri
    values = metrics.compute_all([mri, mri, mri], mri)
    assert values["QG"] == pytest.approx(metrics.QG_MAXIMUM, abs=1e-12)
    for name in ("QY", "QC", "VIFF"):
        assert values[name] == pytest.approx(1.0, abs=1e-6), name
    assert values["QMI"] == pytest.approx(3.0, abs=1e-12)


@pytest.mark.parametrize(
    "sources, fused, message",
    [
        ([np.zeros((64, 64), np.uint8)], np.zeros((64, 64), np.uint8), "at least 2"),
        ([np.zeros((64, 64), np.uint8)] * 2, np.zeros((64, 60), np.uint8), "60x64"),
        ([np.zeros((64, 64))] * 2, np.full((64, 64), 2.0), r"\[0, 1\]"),
        ([np.zeros((16, 16), np.uint8)] * 2, np.zeros((16, 16), np.uint8), "at least 32"),
        ([np.zeros((64, 64, 4), np.uint8)] * 2, np.zeros((64, 64), np.uint8), "colour image"),
        ([np.zeros((64, 64))] * 2, np.full((64, 64), np.nan), "NaN"),
    ],
)
def test_bad_inputs_raise_input_error(sources, fused, message):
    with pytest.raises(InputError, match=message):
        metrics.compute_all(sources, fused)
