"""fuse_stack / fuse_slices on the shared pairs and stacks, with the shipped extractor."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.api import to_unit_float
from medfuse.core.colour import rgb_to_ycbcr
from medfuse.core.config import FusionConfig
from medfuse.core.decomposition import decompose
import medfuse.core.fusion as fusion_module
from medfuse.core.fusion import STAGES, fuse_slices, fuse_stack
from medfuse.core.saliency import level_histogram
from medfuse.errors import FusionError, InputError
from medfuse.io.images import read_image

CONFIGS = {
    "default": FusionConfig(),
    "energy-decision": FusionConfig(decision="energy"),
    "photo": FusionConfig.photo(),
    "paper": FusionConfig.paper(),
    "clipped": FusionConfig.paper().replace(clip_detail_weights=True),
    "features-on-detail": FusionConfig.paper().replace(features_on="detail"),
    "max-abs": FusionConfig.paper().replace(detail_rule="max-abs"),
    "average-base": FusionConfig.paper().replace(base_rule="average"),
    "gaussian": FusionConfig.paper().replace(decomposition="gaussian"),
    "guided": FusionConfig.paper().replace(decomposition="guided"),
}


@pytest.fixture(scope="module")
def extractor():
    from medfuse.features.registry import load_extractor

    return load_extractor()


def luma(path) -> np.ndarray:
    unit = to_unit_float(read_image(path))
    return unit if unit.ndim == 2 else rgb_to_ycbcr(unit)[..., 0]


@pytest.fixture(scope="module")
def stacks(shared_data):
    """Real K = 2..5 source stacks (luma), cropped to keep the test quick."""
    pairs = shared_data / "pairs2d"
    sets = {
        2: [pairs / "ct-mri/ivrl_1/a.png", pairs / "ct-mri/ivrl_1/b.png"],
        3: sorted((pairs / "multifocus/lytro_triple_01").glob("*.jpg")),
        4: sorted((pairs / "multiexposure/house").glob("*.jpg")),
        5: sorted((pairs / "multiexposure/chair").glob("*.jpg")),
    }
    return {k: np.stack([luma(p) for p in paths])[:, :200, :200] for k, paths in sets.items()}


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_weights_are_in_unit_range_and_sum_to_one_for_k_sources(stacks, extractor, k):
    stack = stacks[k]
    assert stack.shape[0] == k
    result = fuse_stack(stack, CONFIGS["clipped"], extractor)
    for weights in (result.base_weights, result.detail_weights):
        assert weights.shape == stack.shape
        assert weights.min() >= 0.0 and weights.max() <= 1.0
        assert np.max(np.abs(weights.sum(axis=0) - 1.0)) < 1e-5
    assert result.fused.shape == stack.shape[1:] and result.fused.dtype == np.float32
    assert result.fused.min() >= stack.min() and result.fused.max() <= stack.max()


@pytest.mark.parametrize("k", [2, 5])
def test_unclipped_detail_weights_still_sum_to_one(stacks, extractor, k):
    result = fuse_stack(stacks[k], CONFIGS["paper"], extractor)
    assert np.max(np.abs(result.detail_weights.sum(axis=0) - 1.0)) < 1e-5
    assert result.base_weights.min() >= 0.0 and result.base_weights.max() <= 1.0


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("k", [2, 4])
def test_fusing_identical_images_returns_that_image(stacks, extractor, name, k):
    image = stacks[2][0]
    result = fuse_stack(np.stack([image] * k), CONFIGS[name], extractor)
    assert np.max(np.abs(result.fused - image)) < 1e-5


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_constant_images_do_not_produce_nan(stacks, extractor, name):
    constant = np.full((64, 64), 0.3, np.float32)
    real = stacks[2][0][:64, :64]
    for stack in (np.stack([constant, real]), np.stack([constant, constant + 0.2]), np.stack([constant] * 3)):
        result = fuse_stack(stack, CONFIGS[name], extractor)
        for array in (result.fused, result.base_weights, result.detail_weights):
            assert np.all(np.isfinite(array))
    both_flat = fuse_stack(np.stack([constant, constant]), CONFIGS[name], extractor)
    assert np.allclose(both_flat.fused, 0.3)


def test_fused_image_keeps_the_structure_of_both_sources(stacks, extractor):
    ct, mr = stacks[2][1], stacks[2][0]
    fused = fuse_stack(stacks[2], CONFIGS["paper"], extractor).fused
    # The fused image correlates with each source better than the sources with each other.
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]  # noqa: E731
    assert corr(fused, ct) > corr(ct, mr) and corr(fused, mr) > corr(ct, mr)


def test_timings_cover_every_stage(stacks, extractor):
    result = fuse_stack(stacks[2], CONFIGS["paper"], extractor)
    assert set(STAGES) <= set(result.timings) and all(t >= 0 for t in result.timings.values())
    assert result.extractor_name == extractor.name


def test_output_is_deterministic(stacks, extractor):
    first = fuse_stack(stacks[3], CONFIGS["paper"], extractor).fused
    second = fuse_stack(stacks[3], CONFIGS["paper"], extractor).fused
    assert first.tobytes() == second.tobytes()


class CountingExtractor:
    """Test-local extractor: activity = 2x2 mean of |image − 0.5|, stride 2; counts calls."""

    name = "counting@1"
    stride = 2

    def __init__(self):
        self.calls = []

    def activity(self, images):
        self.calls.append(images.shape)
        n, h, w = images.shape
        padded = np.pad(np.abs(images - 0.5), ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
        return padded.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2).mean(axis=(2, 4)).astype(np.float32)


def test_fuse_slices_batches_all_slices_through_the_extractor_once(stacks):
    volumes = np.stack([stacks[2][:, i * 40 : i * 40 + 50, :51] for i in range(3)], axis=1)  # (K=2, Z=3, 50, 51)
    extractor = CountingExtractor()
    fused = fuse_slices(volumes, CONFIGS["paper"], extractor)
    assert extractor.calls == [(6, 50, 51)]
    assert fused.shape == (3, 50, 51)
    for z in range(3):
        single = fuse_stack(volumes[:, z], CONFIGS["paper"], CountingExtractor()).fused
        assert np.max(np.abs(fused[z] - single)) < 1e-6


class CellIndexExtractor:
    """Test-local extractor of stride 8 whose activity is its cell's index (source 0) or 0."""

    name = "cell-index@1"
    stride = 8

    def activity(self, images):
        n, h, w = images.shape
        cells = np.arange(-(-h // 8) * -(-w // 8), dtype=np.float32).reshape(-(-h // 8), -(-w // 8)) / 4
        return np.stack([cells] + [np.zeros_like(cells)] * (n - 1))


def _pixel_cells(shape, stride):
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    return rows // stride, columns // stride


def test_odd_sized_images_take_the_activity_of_the_cell_containing_each_pixel(stacks):
    # features_on='detail' skips the detail guided filter, so the detail weights
    # are exactly the upsampled softmax of the activity.
    config = CONFIGS["features-on-detail"]
    stack = np.ascontiguousarray(stacks[2][:, 50:70, 60:97])  # 20 x 37: not a multiple of 8
    extractor = CellIndexExtractor()
    weights = fuse_stack(stack, config, extractor).detail_weights
    cells = extractor.activity(stack)[0]
    expected = 1 / (1 + np.exp(-cells.astype(np.float64)))  # softmax of (a, 0)
    rows, columns = _pixel_cells((20, 37), 8)
    np.testing.assert_allclose(weights[0], expected[rows, columns], rtol=1e-6)
    assert weights[0, 7, 0] != weights[0, 8, 0] and weights[0, 15, 0] == weights[0, 8, 0]


def test_odd_sized_images_follow_the_shipped_extractors_cells(stacks, extractor):
    config = CONFIGS["features-on-detail"]
    stack = np.ascontiguousarray(stacks[2][:, 50:70, 60:97])
    weights = fuse_stack(stack, config, extractor).detail_weights
    _, detail = decompose(stack, config.decomposition, config.decomposition_size)
    activity = extractor.activity(np.clip(detail + np.float32(0.5), 0, 1)).astype(np.float64)
    assert activity.shape == (2, 3, 5)
    soft = np.exp(activity - activity.max(axis=0))
    soft /= soft.sum(axis=0)
    rows, columns = _pixel_cells((20, 37), extractor.stride)
    np.testing.assert_allclose(weights, soft[:, rows, columns], atol=1e-5)


def test_a_huge_detail_temperature_gives_equal_detail_weights(stacks, extractor):
    config = CONFIGS["features-on-detail"]
    hot = fuse_stack(stacks[2], config.replace(detail_temperature=1e9), extractor)
    np.testing.assert_allclose(hot.detail_weights, 0.5, atol=1e-6)
    plain = fuse_stack(stacks[2], config, extractor)
    # The shipped model's activities saturate the plain softmax on most pixels.
    assert np.mean(plain.detail_weights.max(axis=0) > 0.99) > 0.5


def test_fuse_slices_uses_volume_wide_saliency_histograms(stacks):
    volumes = np.stack([stacks[2][:, :100, :100], stacks[2][:, 100:, 100:]], axis=1)
    config = CONFIGS["max-abs"]
    hist = np.stack([level_histogram(volumes[0]), level_histogram(volumes[1])])
    wide = fuse_slices(volumes, config, saliency_histograms=hist)
    per_slice = fuse_slices(volumes, config)
    assert not np.array_equal(wide, per_slice)
    # Slice 0 fused with the volume table equals fuse_stack given the same histograms.
    alone = fuse_stack(volumes[:, 0], config, saliency_histograms=hist).fused
    assert np.max(np.abs(wide[0] - alone)) < 1e-6


def test_bad_stacks_are_refused(stacks):
    config = CONFIGS["max-abs"]
    with pytest.raises(InputError, match="at least 2"):
        fuse_stack(stacks[2][:1], config)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        fuse_stack(stacks[2] * 2, config)
    with pytest.raises(InputError, match="different shapes"):
        fuse_stack([stacks[2][0], stacks[2][1][:100]], config)
    with pytest.raises(InputError):
        fuse_stack((stacks[2] * 255).astype(np.uint8), config)
    with pytest.raises(FusionError, match="extractor"):
        fuse_stack(stacks[2], CONFIGS["paper"], None)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (9, 70)])
def test_tiny_and_thin_images_fuse_without_error(extractor, name, shape):
    rng = np.random.default_rng(7)
    stack = rng.random((3,) + shape).astype(np.float32)
    result = fuse_stack(stack, CONFIGS[name], extractor)
    assert result.fused.shape == shape and np.all(np.isfinite(result.fused))
    assert stack.min(axis=0).min() <= result.fused.min() and result.fused.max() <= stack.max()


def test_round_off_outside_the_unit_range_is_clipped_not_refused(stacks):
    stack = stacks[2].copy()
    stack[0, 0, 0], stack[1, 0, 0] = -1e-7, 1.0 + 1e-7
    result = fuse_stack(stack, CONFIGS["max-abs"])
    assert 0.0 <= result.fused.min() and result.fused.max() <= 1.0


@pytest.mark.parametrize("name", ["default", "energy-decision", "paper", "max-abs", "features-on-detail"])
def test_output_is_byte_identical_whatever_the_thread_count(stacks, extractor, name, monkeypatch):
    # Threads even for these small crops (by default they need ~2**17 pixels each).
    monkeypatch.setattr(fusion_module, "_MIN_PIXELS_PER_THREAD", 1)
    for k in (2, 3, 5):
        one = fuse_stack(stacks[k], CONFIGS[name], extractor, threads=1)
        for threads in (2, 3, 8):
            many = fuse_stack(stacks[k], CONFIGS[name], extractor, threads=threads)
            assert many.fused.tobytes() == one.fused.tobytes()
            assert many.base_weights.tobytes() == one.base_weights.tobytes()
            assert many.detail_weights.tobytes() == one.detail_weights.tobytes()
    volumes = np.stack([stacks[3][:, i * 40 : i * 40 + 60, :70] for i in range(3)], axis=1)  # (K=3, Z=3, 60, 70)
    slices_one = fuse_slices(volumes, CONFIGS[name], extractor, threads=1)
    assert fuse_slices(volumes, CONFIGS[name], extractor, threads=2).tobytes() == slices_one.tobytes()


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_a_bad_thread_count_is_refused(stacks, threads):
    with pytest.raises(ValueError, match="threads"):
        fuse_stack(stacks[2], CONFIGS["max-abs"], threads=threads)


def test_a_full_size_pair_fuses_identically_on_two_threads(shared_data):
    pair = shared_data / "pairs2d/ir-vis/ifcnn_Navi"
    stack = np.stack([luma(pair / "a.png"), luma(pair / "b.png")])  # 2 x 512 x 512: one thread per source
    config = FusionConfig.photo().replace(detail_rule="max-abs")
    assert fusion_module._SourceGroups(2, 2, stack[0].size).groups == [slice(0, 1), slice(1, 2)]
    assert fuse_stack(stack, config, threads=2).fused.tobytes() == fuse_stack(stack, config).fused.tobytes()
