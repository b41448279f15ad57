"""Baseline fusion methods: exact hand cases and real-data behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medfuse import metrics
from medfuse.core import baselines
from medfuse.errors import InputError


@pytest.fixture(scope="module")
def ct_mri(shared_data):
    """(2, 256, 256) float32 in [0, 1]: MRI, CT of the IVRL pair."""
    folder = shared_data / "pairs2d" / "ct-mri" / "ivrl_1"
    return np.stack([np.asarray(Image.open(folder / n).convert("L"), np.float32) / 255 for n in ("a.png", "b.png")])


def test_average_and_max_by_hand():
    a = np.array([[0.0, 0.2], [0.4, 1.0]] * 16).reshape(32, 2)
    b = np.array([[1.0, 0.2], [0.0, 0.5]] * 16).reshape(32, 2)
    assert np.allclose(baselines.average(np.stack([a, b])), (a + b) / 2)
    assert np.array_equal(baselines.maximum(np.stack([a, b])), np.maximum(a, b).astype(np.float32))


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_identical_sources_are_reproduced(ct_mri, name):
    mri = ct_mri[0]
    fused = baselines.BASELINES[name](np.stack([mri, mri, mri]))
    assert fused.dtype == np.float32 and fused.shape == mri.shape
    assert np.abs(fused - mri).max() < 1e-5


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_real_pair_output_range_and_determinism(ct_mri, name):
    first = baselines.BASELINES[name](ct_mri)
    second = baselines.BASELINES[name](ct_mri.copy())
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert first.tobytes() == second.tobytes()


def test_gff_and_avg_max_pick_the_sharp_half_of_a_multifocus_pair(ct_mri):
    """Each source blurred on one half: the detail rules must recover the sharp
    halves, coming closer to the all-sharp image than the plain average does."""
    sharp = ct_mri[0].astype(np.float64)
    blurred = ndimage.gaussian_filter(sharp, 3.0)
    left, right = sharp.copy(), sharp.copy()
    left[:, 128:] = blurred[:, 128:]
    right[:, :128] = blurred[:, :128]
    pair = np.stack([left, right]).astype(np.float32)
    error_average = np.abs(baselines.average(pair) - sharp).mean()
    for name in ("gff", "avg-max"):
        error = np.abs(baselines.BASELINES[name](pair) - sharp).mean()
        assert error < 0.6 * error_average, name


def test_pixel_max_is_the_strong_medical_baseline_on_qg(ct_mri):
    as_uint8 = [np.rint(x * 255).astype(np.uint8) for x in ct_mri]
    scores = {name: metrics.qg(as_uint8, np.rint(fn(ct_mri) * 255).astype(np.uint8)) for name, fn in baselines.BASELINES.items()}
    assert scores["max"] > scores["average"] + 0.1
    assert scores["gff"] > scores["average"]


@pytest.mark.parametrize(
    "sources, message",
    [
        (np.zeros((1, 32, 32)), "K >= 2"),
        (np.zeros((32, 32)), "K >= 2"),
        (np.full((2, 32, 32), 1.5), r"\[0, 1\]"),
        (np.full((2, 32, 32), np.nan), "NaN"),
    ],
)
def test_bad_sources_raise_input_error(sources, message):
    with pytest.raises(InputError, match=message):
        baselines.gff(sources)


def test_avg_max_refuses_even_box():
    with pytest.raises(InputError, match="odd"):
        baselines.avg_max(np.zeros((2, 32, 32)), box_size=44)
