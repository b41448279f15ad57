"""Weight rules: normalisation, softmax, nearest upsampling, max-abs, refinement, the pyramid rule's decision."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.core.weights import (
    decision_indices,
    decision_weights,
    largest_index,
    max_abs_weights,
    normalise_sum,
    one_hot,
    one_hot_largest,
    refine,
    saliency_weights,
    softmax_weights,
    upsample_nearest,
)


def test_normalise_sum_gives_equal_weights_where_all_weights_are_zero():
    weights = np.zeros((3, 4, 4), np.float32)
    weights[0, 0, 0] = 2.0
    out = normalise_sum(weights)
    assert np.all(np.isfinite(out))
    assert out[:, 0, 0] == pytest.approx([1, 0, 0])
    assert out[:, 1, 1] == pytest.approx([1 / 3] * 3)


def test_normalise_sum_can_clip_before_renormalising():
    weights = np.array([[[1.4]], [[-0.4]]], np.float32)
    assert normalise_sum(weights.copy(), clip=True)[:, 0, 0] == pytest.approx([1.0, 0.0])
    assert normalise_sum(weights.copy())[:, 0, 0] == pytest.approx([1.4, -0.4])


def test_softmax_is_stable_for_huge_activities():
    activity = np.array([[[1e6, 0.0]], [[1e6 - 1.0, 5.0]]], np.float32)
    out = softmax_weights(activity)
    assert np.all(np.isfinite(out))
    assert out.sum(axis=0) == pytest.approx(np.ones((1, 2)))
    assert out[:, 0, 0] == pytest.approx([1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], rel=1e-5)


def test_softmax_temperature_one_is_eq_11_and_a_large_one_gives_equal_weights():
    rng = np.random.default_rng(3)
    activity = (rng.random((3, 4, 5)) * 200).astype(np.float32)  # the shipped model's scale
    exact = np.exp(activity.astype(np.float64))
    exact /= exact.sum(axis=0)
    np.testing.assert_allclose(softmax_weights(activity, 1.0), exact, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(softmax_weights(activity, 1e9), np.full((3, 4, 5), 1 / 3), atol=1e-6)
    # In between it softens the choice: the largest weight falls as T grows.
    assert softmax_weights(activity, 50.0).max(axis=0).mean() < softmax_weights(activity, 1.0).max(axis=0).mean()


def test_upsample_nearest_maps_each_cell_to_its_stride_block():
    maps = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    out = upsample_nearest(maps, (7, 10), stride=4)  # ceil(7/4)=2, ceil(10/4)=3
    assert out.shape == (1, 7, 10)
    assert out[0, 3, 3] == 0 and out[0, 4, 3] == 3 and out[0, 6, 9] == 5 and out[0, 0, 8] == 2


def test_upsample_nearest_with_a_stride_puts_each_pixel_in_the_cell_containing_it():
    # 20 x 37 at stride 8: 3 x 5 cells; inferring ceil(20 / 3) = 7 would shift rows 7..15.
    maps = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    out = upsample_nearest(maps, (20, 37), stride=8)
    rows, columns = np.mgrid[0:20, 0:37]
    assert out.shape == (2, 20, 37)
    for k in range(2):
        assert np.array_equal(out[k], maps[k][rows // 8, columns // 8])
    assert out[0, 7, 0] == maps[0, 0, 0] and out[0, 16, 0] == maps[0, 2, 0]


def test_upsample_nearest_refuses_a_stride_that_does_not_match_the_cells():
    with pytest.raises(ValueError, match="stride"):
        upsample_nearest(np.zeros((1, 3, 5)), (20, 37), stride=4)


def test_upsample_nearest_refuses_maps_that_cannot_tile_the_image():
    with pytest.raises(ValueError):
        upsample_nearest(np.zeros((1, 5, 5)), (4, 4), stride=1)


def test_max_abs_picks_the_largest_magnitude_and_breaks_ties_to_the_first():
    details = np.array([[[0.1, -0.5, 0.2]], [[-0.3, 0.4, 0.2]]], np.float32)
    assert max_abs_weights(details)[:, 0].tolist() == [[0, 1, 1], [1, 0, 0]]


def test_saliency_weights_sum_to_one_and_survive_flat_images():
    rng = np.random.default_rng(0)
    stack = np.stack([np.full((1, 16, 16), 0.5, np.float32), rng.random((1, 16, 16)).astype(np.float32)])
    weights = saliency_weights(stack)
    assert np.all(np.isfinite(weights)) and np.all(weights >= 0) and np.all(weights <= 1)
    assert weights.sum(axis=0) == pytest.approx(np.ones((1, 16, 16)))
    # The flat source has zero saliency everywhere: the textured one takes all weight
    # except where it is itself at zero saliency (1/2 each there).
    assert set(np.unique(weights[0])) <= {0.0, 0.5}


def test_refine_renormalises_and_clip_keeps_weights_in_unit_range():
    rng = np.random.default_rng(1)
    guides = rng.random((3, 1, 20, 20)).astype(np.float32)
    onehot = max_abs_weights(rng.standard_normal((3, 1, 20, 20)))
    loose = refine(onehot.copy(), guides, 3, 1e-6)
    assert loose.sum(axis=0) == pytest.approx(np.ones((1, 20, 20)), abs=1e-5)
    clipped = refine(onehot.copy(), guides, 3, 1e-6, clip=True)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert clipped.sum(axis=0) == pytest.approx(np.ones((1, 20, 20)), abs=1e-5)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_max_abs_agrees_with_argmax_including_ties_between_any_sources(k):
    rng = np.random.default_rng(k)
    details = rng.standard_normal((k, 2, 30, 30)).astype(np.float32)
    details[:, :, :5] = 0.0  # every source tied
    details[-1, :, 5:10] = -details[0, :, 5:10]  # first and last tied in magnitude
    details[1, :, 10:15] = details[k - 1, :, 10:15]  # a later pair tied
    expected = np.abs(details).argmax(axis=0)
    onehot = max_abs_weights(details)
    assert onehot.dtype == np.float32
    assert np.array_equal(onehot, (np.arange(k)[:, None, None, None] == expected).astype(np.float32))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_largest_index_is_argmax_with_ties_to_the_first_and_one_hot_spells_it_out(k):
    rng = np.random.default_rng(10 + k)
    scores = rng.random((k, 2, 20, 30))
    scores[:, :, :4] = 0.25  # every source tied
    scores[-1, :, 4:8] = scores.max(axis=0)[:, 4:8]  # the last ties the best
    chosen = largest_index(scores)
    assert chosen.dtype == np.uint8 and np.array_equal(chosen, scores.argmax(axis=0))
    maps = one_hot(chosen, k)
    assert maps.dtype == np.float32 and maps.shape == scores.shape
    assert np.array_equal(maps, (np.arange(k)[:, None, None, None] == chosen).astype(np.float32))
    assert np.array_equal(one_hot_largest(scores, np.float64), maps.astype(np.float64))


@pytest.mark.parametrize("radius", [0, 2, 30])
def test_compiled_decision_picks_the_source_decision_weights_picks(radius):
    rng = np.random.default_rng(radius)
    low = (0.1 + 0.2 * rng.random((2, 37, 29))).astype(np.float32)  # N = 2 slices
    stack = np.stack([low, low + 0.5, low])
    stack[:, :, 10:20, 5:15] = stack[::-1, :, 10:20, 5:15]  # the brightest source changes inside a box
    cells = np.ones((3, 2, 5, 4), np.float32)
    cells[0, :, :, 2:] = 10.0  # activity favours the first source right of column 16
    chosen = decision_indices(stack, radius, cells, stride=8)
    expected = decision_weights(stack, radius, upsample_nearest(cells, (37, 29), 8))
    assert chosen.shape == (2, 37, 29)
    assert np.array_equal(one_hot(chosen, 3), expected)
    assert np.array_equal(one_hot(decision_indices(stack, radius), 3), decision_weights(stack, radius))


def test_compiled_decision_refuses_cells_that_do_not_tile_the_images():
    stack = np.zeros((2, 1, 20, 37), np.float32)
    with pytest.raises(ValueError, match="stride"):
        decision_indices(stack, 3, np.ones((2, 1, 3, 5), np.float32), stride=4)
    with pytest.raises(ValueError):
        decision_indices(stack, 3, np.ones((2, 1, 30, 50), np.float32), stride=1)
