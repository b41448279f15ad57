"""The pyramid rule (medfuse's default): pyramids, decision maps, envelope, no halos."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.api import fuse, to_unit_float
from medfuse.core.colour import rgb_to_ycbcr
from medfuse.core.config import FusionConfig
from medfuse.core.fusion import PYRAMID_STAGES, fuse_slices, fuse_stack
from medfuse.core.pyramid import (
    blend,
    blend_clipped,
    blend_decisions,
    collapse,
    expand_to,
    gaussian_pyramid,
    laplacian_pyramid,
    max_levels,
)
from medfuse.core.weights import decision_indices, decision_weights, one_hot
from medfuse.io.images import read_image

MEDICAL_TASKS = ("ct-mri", "pet-mri", "spect-mri", "t1-t2")
NO_HALO_PRESETS = ("default", "photo")


@pytest.fixture(scope="module")
def extractor():
    from medfuse.features.registry import load_extractor

    return load_extractor()


def disc_on_black(size=128):
    """Source A: a bright ring (a 'skull', 5 px wide) on black; B: a textured disc inside it."""
    y, x = np.mgrid[:size, :size] - size / 2
    radius = np.hypot(y, x)
    a = np.where((radius >= 40) & (radius < 45), 0.9, 0.0).astype(np.float32)
    texture = 0.35 + 0.15 * np.sin(x / 3.0) * np.cos(y / 4.0)
    b = np.where(radius < 38, texture, 0.0).astype(np.float32)
    return np.stack([a, b])


@pytest.mark.parametrize("shape", [(64, 48), (33, 17), (5, 9), (1, 1)])
def test_laplacian_pyramid_collapses_back_exactly(shape):
    images = np.random.default_rng(1).random((3,) + shape)
    bands = laplacian_pyramid(images, 5)
    assert len(bands) == min(5, max_levels(shape))
    np.testing.assert_allclose(collapse(bands), images, atol=1e-12)
    assert [g.shape[-2:] for g in gaussian_pyramid(images, 5)] == [b.shape[-2:] for b in bands]


def test_blending_with_one_source_weighted_one_returns_that_source():
    images = np.random.default_rng(2).random((3, 40, 50))
    weights = np.zeros_like(images)
    weights[1] = 1.0
    fused, coarse = blend(images, weights, 4)
    np.testing.assert_allclose(fused, images[1], atol=1e-12)
    np.testing.assert_allclose(coarse[1], 1.0, atol=1e-6)
    assert coarse.shape == (3, 5, 7)  # the coarsest level of 40 x 50
    np.testing.assert_allclose(expand_to(coarse, (40, 50))[1], 1.0, atol=1e-6)  # expanding keeps constants


def test_decision_maps_are_one_hot_and_pick_the_higher_energy():
    rng = np.random.default_rng(3)
    low = rng.random((1, 32, 32)).astype(np.float32) * 0.3
    high = low + 0.5
    weights = decision_weights(np.stack([low, high, low]), radius=2)
    assert set(np.unique(weights)) == {0.0, 1.0}
    np.testing.assert_array_equal(weights.sum(axis=0), 1.0)
    assert np.all(weights[1] == 1.0)
    # CNN activity multiplies the energy: a source with zero activity never decides.
    activity = np.stack([np.ones_like(low), np.zeros_like(low), np.ones_like(low)])
    assert np.all(decision_weights(np.stack([low, high, low]), 2, activity)[1] == 0.0)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("levels", [1, 2, 4, 7])
def test_compiled_blending_is_the_numpy_blending_byte_for_byte(k, levels):
    """Ring and disc (sharp edges on black), K sources, N = 2 slices, odd size: every option of the rule."""
    disc = disc_on_black(101)
    stack = np.stack([np.stack([disc[k_ % 2] * (1 - 0.1 * k_), np.roll(disc[(k_ + 1) % 2], 7, axis=1)])
                      for k_ in range(k)]).astype(np.float32)  # (K, 2, 101, 101)
    chosen = decision_indices(stack, 3)
    for coarsest in ("max", "weights"):
        for envelope in (True, False):
            fused, base = blend_decisions(stack, chosen, levels, coarsest=coarsest, envelope=envelope)
            expected_fused, expected_base = blend_clipped(stack, one_hot(chosen, k), levels, coarsest=coarsest,
                                                          envelope=envelope)
            assert fused.tobytes() == expected_fused.tobytes(), (coarsest, envelope)
            assert base.tobytes() == expected_base.tobytes(), (coarsest, envelope)
            if envelope:
                assert np.all(fused >= stack.min(axis=0)) and np.all(fused <= stack.max(axis=0))
            assert np.max(np.abs(base.sum(axis=0) - 1.0)) < 1e-5


def test_compiled_blending_refuses_an_unknown_coarsest_rule():
    stack = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="coarsest"):
        blend_decisions(stack, np.zeros((1, 8, 8), np.uint8), 3, coarsest="decision")


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("decision", ["cnn-energy", "energy"])
def test_k_sources_weights_sum_to_one_and_stay_in_unit_range(extractor, k, decision):
    rng = np.random.default_rng(k)
    stack = np.clip(rng.random((k, 96, 80)) * np.linspace(0.2, 1, k)[:, None, None], 0, 1).astype(np.float32)
    result = fuse_stack(stack, FusionConfig(decision=decision), extractor)
    for weights in (result.base_weights, result.detail_weights):
        assert weights.shape == stack.shape and weights.dtype == np.float32
        assert weights.min() >= 0.0 and weights.max() <= 1.0
        assert np.max(np.abs(weights.sum(axis=0) - 1.0)) < 1e-5
    assert np.all(result.fused >= stack.min(axis=0)) and np.all(result.fused <= stack.max(axis=0))
    assert set(PYRAMID_STAGES) <= set(result.timings)
    assert result.extractor_name == (extractor.name if decision == "cnn-energy" else None)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_k_identical_sources_give_that_image(extractor, k):
    image = disc_on_black()[1]
    result = fuse_stack(np.stack([image] * k), FusionConfig(), extractor)
    assert np.max(np.abs(result.fused - image)) < 1e-6


def test_no_halo_and_no_thicker_ring_on_a_synthetic_disc_on_black(extractor):
    stack = disc_on_black()
    for config in (FusionConfig(), FusionConfig.photo()):
        fused = fuse_stack(stack, config, extractor).fused
        black = np.all(stack == 0, axis=0)
        assert np.all(np.rint(fused[black] * 255) <= 1), config.rule
        # The ring keeps its width: along the central row, pixels at least half as
        # bright as the ring are exactly the ring's (source A's) pixels.
        row = fused[64]
        ring = stack[0, 64] > 0
        bright = row >= 0.45
        assert np.array_equal(bright & ~(stack[1, 64] >= 0.45), ring), config.rule
    # The paper's rule halos here as in the paper (kept exact, not fixed).
    paper = fuse_stack(stack, FusionConfig.paper(), extractor).fused
    assert np.mean(np.rint(paper[np.all(stack == 0, axis=0)] * 255) > 1) > 0.001


def test_volume_slices_fuse_as_single_images(extractor):
    stack = disc_on_black(64)
    volumes = np.stack([np.stack([s, s[::-1], s * 0.5]) for s in stack])  # (K=2, Z=3, H, W)
    fused = fuse_slices(volumes, FusionConfig(), extractor)
    for z in range(3):
        alone = fuse_stack(volumes[:, z], FusionConfig(), extractor).fused
        np.testing.assert_allclose(fused[z], alone, atol=1e-6)


def test_colour_sources_fuse_on_luma_and_keep_the_chroma():
    grey = disc_on_black()[0]
    colour = np.zeros(grey.shape + (3,), np.float32)
    colour[..., 0] = disc_on_black()[1]  # a red 'PET' disc
    result = fuse([grey, colour])
    assert result.fused.shape == grey.shape + (3,)
    inside = disc_on_black()[1] > 0.3
    assert np.all(result.fused[inside][:, 0] > result.fused[inside][:, 1])  # still red where the disc is
    black = (grey == 0) & (disc_on_black()[1] == 0)
    assert np.all(np.rint(result.fused[black] * 255) <= 1)


def _medical_pairs(shared_data):
    root = shared_data / "pairs2d"
    return [p for task in MEDICAL_TASKS for p in sorted((root / task).iterdir()) if p.is_dir()]


def _luma255(unit: np.ndarray) -> np.ndarray:
    """8-bit luma of a float image in [0, 1] (grey or RGB), as written to a file."""
    unit = np.rint(np.clip(unit, 0, 1) * 255.0) / 255.0
    return np.rint((rgb_to_ycbcr(unit)[..., 0] if unit.ndim == 3 else unit) * 255.0)


@pytest.mark.slow
@pytest.mark.parametrize("preset", NO_HALO_PRESETS)
def test_no_halos_on_every_shared_medical_pair(shared_data, preset):
    """Where every source's 8-bit luma is 0, the fused luma is at most 1 on >= 99.9 % of those pixels."""
    config = FusionConfig.preset(preset)
    pairs = _medical_pairs(shared_data)
    assert len(pairs) >= 70
    worst = 0.0
    for pair in pairs:
        images = [to_unit_float(read_image(p)) for p in sorted(pair.glob("[abc].*"))]
        fused = fuse(images, config=config).fused
        # No edge spreads: the fused luma never exceeds the brightest source's (a CT skull keeps its width).
        assert np.all(_luma255(fused) <= np.max([_luma255(im) for im in images], axis=0) + 1), pair.name
        black = np.all([_luma255(im) == 0 for im in images], axis=0)
        if black.any():
            lit = float(np.mean(_luma255(fused)[black] > 1))
            worst = max(worst, lit)
            assert lit <= 0.001, f"{pair.parent.name}/{pair.name}: {lit:.2%} of black pixels lit"
    assert worst <= 0.001
