"""LC histogram saliency: the table against the definition on hand-checked examples."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.core.saliency import level_histogram, quantise, saliency_maps, saliency_table


def test_saliency_table_matches_a_hand_checked_example():
    # Levels 0 (once), 1 (twice), 3 (once). S(v) = sum_i M(i) |v - i|:
    # S(0) = 0 + 2*1 + 1*3 = 5, S(1) = 1 + 0 + 2 = 3, S(3) = 3 + 2*2 + 0 = 7.
    hist = np.array([1, 2, 0, 1])
    raw = saliency_table(hist, "none")
    assert raw[[0, 1, 3]] == pytest.approx(np.array([5, 3, 7]) / 4)
    # Min-max over the levels present: (S - 3) / (7 - 3).
    assert saliency_table(hist, "minmax")[[0, 1, 3]] == pytest.approx([0.5, 0.0, 1.0])


def test_saliency_maps_look_up_the_table_per_pixel():
    levels = 4
    image = np.array([[0, 1], [1, 3]], dtype=np.float32) / (levels - 1)
    maps = saliency_maps(image[None, None], levels=levels, normalisation="minmax")
    assert maps.shape == (1, 1, 2, 2)
    assert maps[0, 0] == pytest.approx(np.array([[0.5, 0.0], [0.0, 1.0]]))


def test_saliency_equals_the_pixel_sum_definition_on_a_random_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(9, 11)).astype(np.float32) / 255
    values = quantise(image).astype(np.int64).ravel()
    direct = np.abs(values[:, None] - values[None, :]).sum(axis=1) / values.size  # sum over all pixels q
    maps = saliency_maps(image[None, None], normalisation="none")[0, 0].ravel()
    assert maps == pytest.approx(direct, rel=1e-6)


def test_flat_image_has_zero_saliency_not_nan():
    maps = saliency_maps(np.full((1, 1, 5, 5), 0.4, dtype=np.float32))
    assert np.all(maps == 0)


def test_volume_histograms_equal_to_the_slice_histograms_give_the_same_maps():
    rng = np.random.default_rng(1)
    stack = rng.random((2, 1, 16, 16)).astype(np.float32)
    own = saliency_maps(stack)
    hist = np.stack([level_histogram(stack[0]), level_histogram(stack[1])])
    assert np.array_equal(saliency_maps(stack, histograms=hist), own)


def test_volume_histograms_apply_one_table_to_every_slice():
    rng = np.random.default_rng(2)
    stack = rng.random((2, 3, 8, 8)).astype(np.float32)
    hist = np.stack([level_histogram(stack[0]), level_histogram(stack[1])])
    maps = saliency_maps(stack, histograms=hist)
    table = saliency_table(hist[0])
    q = quantise(stack[0, 2])
    assert maps[0, 2] == pytest.approx(table[q].astype(np.float32))


def test_histograms_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError):
        saliency_maps(np.zeros((2, 1, 4, 4), np.float32), histograms=np.ones((2, 10)))
