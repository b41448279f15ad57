"""The compiled kernels against the NumPy reference, and their on-disk cache.

The run-time filters (:mod:`medfuse.core.filters`, numba kernels) must agree
with the readable NumPy implementation they replaced
(:mod:`medfuse.core.kernels_reference`) to 1e-6 on random images, at the
borders, for radii larger than the image, for K = 2..5 stacked sources and
for float32 and float64 inputs; whole fusions with either core agree too.
The pyramid rule's kernels (decision, blending) likewise, with N > 1 slices:
the blending byte for byte, the decision except at near-ties of the scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medfuse.core import decomposition, filters, fusion, kernels, kernels_reference, pyramid, weights
from medfuse.core.config import FusionConfig
from medfuse.core.fusion import fuse_slices, fuse_stack

SHAPES = [(1, 1), (1, 9), (9, 1), (7, 13), (33, 20), (64, 64)]
RADII = [0, 1, 3, 7, 45]  # 45 is larger than every test image but the last
TWO_SCALE = FusionConfig.paper().replace(detail_rule="max-abs")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_box_mean_kernel_equals_the_reference(shape, dtype):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    images = rng.random((3,) + shape).astype(dtype)
    for radius in RADII:
        for out_dtype in (np.float32, np.float64):
            ours = filters.box_mean(images, radius, dtype=out_dtype)
            reference = kernels_reference.box_mean(images, radius, dtype=out_dtype)
            assert ours.dtype == out_dtype
            assert np.max(np.abs(ours.astype(np.float64) - reference)) <= 1e-6, (radius, out_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_guided_filter_kernel_equals_the_float64_reference(shape, dtype):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    guide = rng.random((2,) + shape).astype(dtype)
    # Weight-like inputs: correlated with the guide, plus noise and a hard edge.
    src = (0.5 * guide + 0.5 * rng.random((2,) + shape)).astype(dtype)
    src[:, : shape[0] // 2] = 1.0
    for radius in RADII:
        for eps in (1e-6, 1e-3, 0.1):
            reference = kernels_reference.guided_filter(guide, src, radius, eps)
            ours = filters.guided_filter(guide, src, radius, eps)
            assert np.max(np.abs(ours - reference)) <= 1e-6, (radius, eps)
            as_float32 = filters.guided_filter(guide, src, radius, eps, dtype=np.float32)
            assert np.array_equal(as_float32, ours.astype(np.float32)), (radius, eps)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_k_stacked_sources_are_filtered_each_as_alone(k):
    rng = np.random.default_rng(k)
    guide = rng.random((k, 2, 40, 52)).astype(np.float32)
    src = rng.random(guide.shape).astype(np.float32)
    windows = filters.GuideWindows(guide)
    stacked = windows.filter(src, 7, 1e-6, dtype=np.float32)
    reference = kernels_reference.guided_filter(guide, src, 7, 1e-6)
    assert np.max(np.abs(stacked - reference)) <= 1e-6
    for index in range(k):
        alone = filters.guided_filter(guide[index], src[index], 7, 1e-6, dtype=np.float32)
        assert np.array_equal(stacked[index], alone)
    assert np.max(np.abs(filters.box_mean(guide, 11) - kernels_reference.box_mean(guide, 11))) <= 1e-6


def test_box_mean_in_place_and_on_strided_arrays_equals_the_reference():
    rng = np.random.default_rng(8)
    base = rng.random((2, 30, 24))
    strided = base[:, ::2, ::-1]
    expected = kernels_reference.box_mean(strided, 4)
    assert np.max(np.abs(filters.box_mean(strided, 4) - expected)) <= 1e-12
    in_place = base.copy()
    filters.box_mean(in_place, 4, out=in_place)
    assert np.max(np.abs(in_place - kernels_reference.box_mean(base, 4))) <= 1e-12


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (40, 33)])
def test_gaussian_kernel_equals_the_reference(shape):
    rng = np.random.default_rng(shape[1])
    images = rng.random((3,) + shape).astype(np.float32)
    for sigma, radius in ((0.5, 1), (2.0, 6), (7.5, 22)):
        difference = filters.gaussian_blur(images, sigma, radius) - kernels_reference.gaussian_blur(images, sigma, radius)
        assert np.max(np.abs(difference)) <= 1e-6


@pytest.mark.parametrize("rule", ["max-abs", "guided-decomposition"])
def test_whole_fusion_with_compiled_and_reference_filters_agrees(monkeypatch, rule):
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:96, 0:80] / 80.0
    sources = np.stack([np.clip(0.5 + 0.4 * np.sin(6 * xx) * yy + 0.05 * rng.standard_normal(xx.shape), 0, 1),
                        np.clip(0.3 + 0.5 * (xx > 0.5) + 0.05 * rng.standard_normal(xx.shape), 0, 1)]).astype(np.float32)
    # The paper's two-scale rule (every filter of the core), without the CNN.
    config = (TWO_SCALE if rule == "max-abs" else TWO_SCALE.replace(decomposition="guided", decomposition_size=9))
    compiled = fuse_stack(sources, config)
    monkeypatch.setattr(fusion, "GuideWindows", kernels_reference.GuideWindows)
    for name in ("box_mean", "guided_filter", "gaussian_blur"):
        monkeypatch.setattr(decomposition, name, getattr(kernels_reference, name))
    reference = fuse_stack(sources, config)
    assert np.max(np.abs(compiled.base_weights - reference.base_weights)) <= 1e-6
    assert np.max(np.abs(compiled.fused - reference.fused)) <= 1e-5


def test_threads_give_byte_identical_output_on_compiled_kernels():
    rng = np.random.default_rng(12)
    volumes = rng.random((3, 2, 300, 260)).astype(np.float32)
    config = TWO_SCALE
    one = fuse_slices(volumes, config, threads=1)
    for threads in (2, 3):
        assert np.array_equal(fuse_slices(volumes, config, threads=threads), one)


PYRAMID_SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (7, 13), (33, 20), (64, 47)]
ENERGY = FusionConfig(decision="energy")  # the default pyramid rule without the CNN


def _cells(rng, k, n, shape, stride=8):
    """Random CNN-like activity cells of ``stride`` pixels for (k, n) images of ``shape``."""
    return (1.0 + 99.0 * rng.random((k, n, -(-shape[0] // stride), -(-shape[1] // stride)))).astype(np.float32)


class CellExtractor:
    """An activity extractor without a CNN: per 8-pixel cell, 1 + the mean of the image there (deterministic)."""

    name = "cell-means"
    stride = 8

    def activity(self, images):
        n, h, w = images.shape
        padded = np.zeros((n, -(-h // 8) * 8, -(-w // 8) * 8), np.float32)
        padded[:, :h, :w] = images
        return 1.0 + padded.reshape(n, padded.shape[1] // 8, 8, padded.shape[2] // 8, 8).mean(axis=(2, 4))


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("shape", PYRAMID_SHAPES)
def test_pyramid_decision_kernel_equals_the_reference_but_at_rare_near_ties(k, shape):
    rng = np.random.default_rng(k * 1000 + shape[0] * 31 + shape[1])
    stack = (0.05 + 0.95 * rng.random((k, 2) + shape)).astype(np.float32)  # N = 2 slices, nothing black
    cells = _cells(rng, k, 2, shape)
    for radius in (0, 1, 3, 40):
        for activity_cells in (None, cells):
            ours = weights.decision_indices(stack, radius, activity_cells, 8)
            reference = kernels_reference.decision_indices(stack, radius, activity_cells, 8)
            assert ours.shape == stack.shape[1:] and ours.dtype == np.uint8
            activity = None if activity_cells is None else weights.upsample_nearest(activity_cells, shape, 8)
            scores = weights.decision_scores(stack, radius, activity, box=kernels_reference.box_mean)
            differ = ours != reference
            assert differ.mean() <= 1e-3, (radius, activity_cells is None)
            if differ.any():
                ours_score = np.take_along_axis(scores, ours[None].astype(np.intp), 0)[0]
                reference_score = np.take_along_axis(scores, reference[None].astype(np.intp), 0)[0]
                gap = np.abs(ours_score - reference_score)[differ]
                assert gap.max() <= 1e-12 * scores.max(), (radius, activity_cells is None)


def test_pyramid_decision_is_exact_in_black_areas_and_where_sources_are_equal():
    """Direct window sums: a black window scores 0 for every source and equal sources tie exactly (first wins);
    the reference's running sums leave round-off there, so it may decide by it: only near-ties may differ."""
    rng = np.random.default_rng(21)
    stack = rng.random((3, 1, 90, 70)).astype(np.float32)
    stack[:, :, 30:60] = 0.0  # black rows after bright ones: running sums keep round-off here
    stack[1, :, :, 40:] = stack[0, :, :, 40:]  # sources 0 and 1 equal on the right
    stack[2, :, :, 40:] *= 0.5
    cells = np.ones((3, 1, 12, 9), np.float32)
    ours = weights.decision_indices(stack, 3, cells, 8)
    assert np.all(ours[0, 34:56] == 0)  # whole window black
    assert not np.any(ours[0, :, 40 + 3:] == 1)  # source 1 only ties source 0 there, and ties go to the first
    reference = kernels_reference.decision_indices(stack, 3, cells, 8)
    scores = weights.decision_scores(stack, 3, None, box=kernels_reference.box_mean)
    differ = ours != reference
    ours_score = np.take_along_axis(scores, ours[None].astype(np.intp), 0)[0]
    reference_score = np.take_along_axis(scores, reference[None].astype(np.intp), 0)[0]
    assert np.all(np.abs(ours_score - reference_score)[differ] <= 1e-12 * scores.max())


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("shape", PYRAMID_SHAPES)
def test_pyramid_blend_kernels_give_the_numpy_blend_byte_for_byte(k, shape):
    rng = np.random.default_rng(k * 100 + shape[0] + shape[1])
    stack = rng.random((k, 2) + shape).astype(np.float32)
    stack[:, :, : shape[0] // 3] = 0.0
    chosen = weights.decision_indices(stack, 3, _cells(rng, k, 2, shape), 8)
    for levels in (1, 2, 3, 4, 6):
        for coarsest in ("max", "weights"):
            for envelope in (True, False):
                options = dict(coarsest=coarsest, envelope=envelope)
                fused, base = pyramid.blend_decisions(stack, chosen, levels, **options)
                reference_fused, reference_base = kernels_reference.blend_decisions(stack, chosen, levels, **options)
                assert fused.dtype == base.dtype == np.float32
                assert np.array_equal(fused, reference_fused), (levels, coarsest, envelope)
                assert np.array_equal(base, reference_base), (levels, coarsest, envelope)
                alone, no_weights = pyramid.blend_decisions(stack, chosen, levels, keep_weights=False, **options)
                assert no_weights is None and np.array_equal(alone, fused)


def test_split_work_covers_every_row_once_in_at_most_parts_groups():
    for slices, rows, parts in [(1, 512, 2), (8, 512, 2), (3, 7, 2), (2, 1, 3), (1, 3, 8), (5, 9, 4)]:
        groups = kernels.split_work(slices, rows, parts)
        assert 1 <= len(groups) <= parts
        covered = [(s, r) for pieces in groups for s, start, stop in pieces for r in range(start, stop)]
        assert covered == [(s, r) for s in range(slices) for r in range(rows)]
        sizes = [sum(stop - start for _, start, stop in pieces) for pieces in groups]
        assert max(sizes) - min(sizes) <= 1


def test_whole_pyramid_fusion_with_compiled_and_reference_kernels_agrees(monkeypatch):
    rng = np.random.default_rng(22)
    yy, xx = np.mgrid[0:96, 0:80] / 80.0
    sources = np.stack([np.clip(0.5 + 0.4 * np.sin(6 * xx) * yy + 0.05 * rng.standard_normal(xx.shape), 0.05, 1),
                        np.clip(0.3 + 0.5 * (xx > 0.5) + 0.05 * rng.standard_normal(xx.shape), 0.05, 1)])
    sources = sources.astype(np.float32)
    for config in (FusionConfig(), FusionConfig(coarsest_band="decision", envelope_clip=False)):
        compiled = fuse_stack(sources, config, CellExtractor())
        with monkeypatch.context() as patch:
            patch.setattr(fusion, "decision_indices", kernels_reference.decision_indices)
            patch.setattr(fusion, "blend_decisions", kernels_reference.blend_decisions)
            reference = fuse_stack(sources, config, CellExtractor())
        assert np.array_equal(compiled.detail_weights, reference.detail_weights)
        assert np.max(np.abs(compiled.fused - reference.fused)) <= 1e-6
        assert np.max(np.abs(compiled.base_weights - reference.base_weights)) <= 1e-6


def test_pyramid_rule_threads_and_runs_give_byte_identical_output(monkeypatch):
    # Threads even for small images (by default they need ~2**17 source pixels each).
    monkeypatch.setattr(fusion, "_MIN_PIXELS_PER_THREAD", 1)
    rng = np.random.default_rng(23)
    volumes = rng.random((3, 3, 150, 130)).astype(np.float32)
    volumes[:, :, 40:70] = 0.0
    one = fuse_slices(volumes, FusionConfig(), CellExtractor(), threads=1)
    assert fuse_slices(volumes, FusionConfig(), CellExtractor(), threads=1).tobytes() == one.tobytes()
    for threads in (2, 3, 8):  # 2 and 8 split rows of one slice among threads, 3 gives each a slice
        assert fuse_slices(volumes, FusionConfig(), CellExtractor(), threads=threads).tobytes() == one.tobytes()
    single = fuse_stack(volumes[:, 0], ENERGY, threads=1)
    for threads in (2, 3):
        many = fuse_stack(volumes[:, 0], ENERGY, threads=threads)
        for name in ("fused", "base_weights", "detail_weights"):
            assert getattr(many, name).tobytes() == getattr(single, name).tobytes(), (threads, name)


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from medfuse.core import kernels
    from medfuse.core.config import FusionConfig
    from medfuse.core.fusion import fuse_stack
    sources = np.load(sys.argv[1])
    fused = fuse_stack(sources, FusionConfig.paper().replace(detail_rule="max-abs", decomposition="gaussian")).fused
    pyramid_rule = fuse_stack(sources, FusionConfig(decision="energy")).fused
    np.save(sys.argv[2], np.stack([fused, pyramid_rule]))
    print(json.dumps({"cache_dir": kernels.CACHE_DIR, "numba_env": __import__("os").environ.get("NUMBA_CACHE_DIR")}))
""")


def _run_child(tmp_path, env_changes: dict, name: str) -> tuple[dict, np.ndarray]:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(env_changes)
    out = tmp_path / f"{name}.npy"
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "sources.npy"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out)


@pytest.mark.slow
def test_an_unwritable_cache_folder_compiles_in_memory_with_the_same_output(tmp_path):
    rng = np.random.default_rng(13)
    sources = rng.random((2, 48, 40)).astype(np.float32)
    np.save(tmp_path / "sources.npy", sources)
    expected = np.stack([fuse_stack(sources, FusionConfig.paper().replace(detail_rule="max-abs",
                                                                          decomposition="gaussian")).fused,
                         fuse_stack(sources, ENERGY).fused])
    # A folder under a regular file cannot be created, not even by root (chmod would not stop root).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    report, fused = _run_child(tmp_path, {"XDG_CACHE_HOME": str(blocker / "cache")}, "read-only")
    assert report["cache_dir"] is None
    assert np.array_equal(fused, expected)
    # An explicit NUMBA_CACHE_DIR that cannot be written: same fallback, nothing written anywhere.
    report, fused = _run_child(tmp_path, {"NUMBA_CACHE_DIR": str(blocker / "numba")}, "explicit")
    assert report["cache_dir"] is None
    assert np.array_equal(fused, expected)


@pytest.mark.slow
def test_the_cache_goes_under_xdg_cache_home_and_is_reused(tmp_path):
    rng = np.random.default_rng(14)
    np.save(tmp_path / "sources.npy", rng.random((2, 40, 36)).astype(np.float32))
    cache_home = tmp_path / "xdg"
    first, fused_first = _run_child(tmp_path, {"XDG_CACHE_HOME": str(cache_home)}, "first")
    folder = cache_home / "medfuse" / "numba"
    assert first["cache_dir"] == str(folder) and first["numba_env"] == str(folder)  # inherited by workers
    cached = sorted(p.name for p in folder.rglob("*.nbi"))
    assert any("guided_images" in name for name in cached) and any("gaussian_images" in name for name in cached)
    for kernel in ("decide_rows", "reduce_finest_rows", "blend_coarse", "blend_finest_rows"):
        assert any(kernel in name for name in cached), kernel
    second, fused_second = _run_child(tmp_path, {"XDG_CACHE_HOME": str(cache_home)}, "second")
    assert second["cache_dir"] == str(folder)
    assert np.array_equal(fused_first, fused_second)


def test_importing_medfuse_does_not_import_numba_until_a_kernel_runs():
    code = ("import sys, numpy as np, medfuse, medfuse.api, medfuse.core.filters as f; before = 'numba' in sys.modules; "
            "f.box_mean(np.ones((4, 4)), 1); print(before, 'numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert done.stdout.split() == ["False", "True"]
