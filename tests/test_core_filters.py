"""Box, guided and Gaussian filters against direct (brute-force) implementations."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.core.filters import GuideWindows, box_mean, gaussian_blur, guided_filter


def brute_box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the part of each (2r+1)² window inside the image, pixel by pixel."""
    height, width = image.shape
    out = np.empty((height, width))
    for i in range(height):
        for j in range(width):
            window = image[max(i - radius, 0) : i + radius + 1, max(j - radius, 0) : j + radius + 1]
            out[i, j] = window.astype(np.float64).mean()
    return out


def direct_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter written out window by window (no box-filter algebra).

    For every window ω_k (cut at the border): a_k = cov_k(I, p) / (var_k(I) + ε),
    b_k = mean_k(p) − a_k mean_k(I); then q_i = mean over the windows containing i
    of (a_k I_i + b_k).
    """
    guide = guide.astype(np.float64)
    src = src.astype(np.float64)
    height, width = guide.shape
    a = np.empty((height, width))
    b = np.empty((height, width))
    for i in range(height):
        for j in range(width):
            rows = slice(max(i - radius, 0), i + radius + 1)
            cols = slice(max(j - radius, 0), j + radius + 1)
            gi, pi = guide[rows, cols], src[rows, cols]
            cov = np.mean((gi - gi.mean()) * (pi - pi.mean()))
            a[i, j] = cov / (gi.var() + eps)
            b[i, j] = pi.mean() - a[i, j] * gi.mean()
    q = np.empty((height, width))
    for i in range(height):
        for j in range(width):
            rows = slice(max(i - radius, 0), i + radius + 1)
            cols = slice(max(j - radius, 0), j + radius + 1)
            q[i, j] = a[rows, cols].mean() * guide[i, j] + b[rows, cols].mean()
    return q


@pytest.mark.parametrize("radius", [0, 1, 2, 5, 11, 40])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (16, 9)])
def test_box_mean_equals_brute_force_window_mean_including_borders(radius, shape):
    rng = np.random.default_rng(radius * 100 + shape[0])
    image = rng.random(shape).astype(np.float32)
    expected = brute_box_mean(image, radius)
    assert np.max(np.abs(box_mean(image, radius) - expected)) < 1e-6


def test_box_mean_filters_each_leading_image_independently():
    rng = np.random.default_rng(1)
    stack = rng.random((3, 2, 11, 8))
    out = box_mean(stack, 3)
    assert out.shape == stack.shape
    for k in range(3):
        for n in range(2):
            assert np.max(np.abs(out[k, n] - brute_box_mean(stack[k, n], 3))) < 1e-12


def test_box_mean_keeps_a_constant_image_constant_at_the_borders():
    image = np.full((20, 30), 0.37, dtype=np.float32)
    assert np.max(np.abs(box_mean(image, 9) - 0.37)) < 1e-7


def test_box_mean_is_accurate_on_a_large_float32_image():
    # Running sums over 1024 columns in float32 would lose ~1e-4; ours are float64.
    rng = np.random.default_rng(2)
    image = rng.random((6, 1024)).astype(np.float32)
    out = box_mean(image, 3)
    j = 1000
    assert abs(out[3, j] - image[0:7, j - 3 : j + 4].astype(np.float64).mean()) < 1e-12


def test_box_mean_reads_and_writes_strided_arrays():
    rng = np.random.default_rng(4)
    stack = rng.random((2, 14, 10))
    source = stack[:, ::2, ::-1]  # non-contiguous input
    out = np.zeros((2, 7, 10))[:, :, ::-1]  # non-contiguous output of the right shape
    box_mean(source, 2, out=out)
    for k in range(2):
        assert np.max(np.abs(out[k] - brute_box_mean(source[k], 2))) < 1e-12


def test_box_mean_rejects_a_negative_radius():
    with pytest.raises(ValueError):
        box_mean(np.zeros((4, 4)), -1)


@pytest.mark.parametrize(("radius", "eps"), [(1, 1e-6), (2, 0.1), (3, 1e-3), (6, 1e-6), (9, 0.01)])
def test_guided_filter_equals_direct_he_formulas(radius, eps):
    rng = np.random.default_rng(radius)
    guide = rng.random((12, 15)).astype(np.float32)
    # An input correlated with the guide plus noise, like a weight map.
    src = (0.6 * guide + 0.4 * rng.random((12, 15))).astype(np.float32)
    expected = direct_guided_filter(guide, src, radius, eps)
    assert np.max(np.abs(guided_filter(guide, src, radius, eps) - expected)) < 1e-9


def test_guided_filter_keeps_precision_with_tiny_eps_on_a_wide_image():
    # eps = 1e-6 (the paper's detail filter): the variance must not be lost in
    # the running sums of a 600-pixel-wide float32 image.
    rng = np.random.default_rng(3)
    guide = np.clip(0.5 + 0.001 * rng.standard_normal((9, 600)), 0, 1).astype(np.float32)
    src = (rng.random((9, 600)) > 0.5).astype(np.float32)
    ours = guided_filter(guide, src, 2, 1e-6)
    cols = slice(590, 600)
    expected = direct_guided_filter(guide[:, 580:600], src[:, 580:600], 2, 1e-6)[:, 10:]
    # The reference sees the same windows except at its own left border (cols 580-581), which is excluded.
    assert np.max(np.abs(ours[:, cols] - expected)) < 1e-6


def test_one_guide_filters_several_inputs_as_separate_calls_do():
    rng = np.random.default_rng(5)
    guide = rng.random((2, 1, 30, 41)).astype(np.float32)
    inputs = [rng.random(guide.shape).astype(np.float32) for _ in range(3)]
    shared = GuideWindows(guide)
    for src, radius, eps in ((inputs[0], 4, 0.1), (inputs[1], 4, 1e-6), (inputs[2], 2, 1e-3), (inputs[0], 4, 0.1)):
        alone = guided_filter(guide, src, radius, eps)
        assert np.array_equal(shared.filter(src, radius, eps), alone)
    expected = direct_guided_filter(guide[1, 0], inputs[1][1, 0], 4, 1e-6)
    assert np.max(np.abs(shared.filter(inputs[1], 4, 1e-6)[1, 0] - expected)) < 1e-9


def test_guided_filter_with_the_guide_as_input_and_large_eps_smooths():
    rng = np.random.default_rng(4)
    image = rng.random((32, 32))
    smoothed = guided_filter(image, image, 4, 1.0)
    assert smoothed.std() < image.std()


def test_guided_filter_rejects_mismatched_shapes_and_bad_eps():
    with pytest.raises(ValueError):
        guided_filter(np.zeros((4, 4)), np.zeros((4, 5)), 1, 0.1)
    with pytest.raises(ValueError):
        guided_filter(np.zeros((4, 4)), np.zeros((4, 4)), 1, 0.0)


def test_gaussian_blur_equals_direct_normalised_convolution():
    rng = np.random.default_rng(5)
    image = rng.random((10, 12))
    sigma, radius = 1.5, 4
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    expected = np.empty_like(image)
    for i in range(10):
        for j in range(12):
            total = weight = 0.0
            for di in taps:
                for dj in taps:
                    y, x = i + di, j + dj
                    if 0 <= y < 10 and 0 <= x < 12:
                        w = kernel[di + radius] * kernel[dj + radius]
                        total += w * image[y, x]
                        weight += w
            expected[i, j] = total / weight
    assert np.max(np.abs(gaussian_blur(image, sigma, radius) - expected)) < 1e-12
