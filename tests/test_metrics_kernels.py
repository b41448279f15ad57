"""The metrics' compiled loops against their NumPy / SciPy definitions, and their use from threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import fft, ndimage

from medfuse import metrics
from medfuse.metrics import phase
from medfuse.metrics._common import gaussian_filter, gaussian_kernel_1d


def _scipy_gaussian(image, size, sigma, valid):
    """The window's definition: SciPy's zero-padded correlation down the columns, then along the rows."""
    kernel = gaussian_kernel_1d(size, sigma)
    out = ndimage.correlate1d(image, kernel, axis=0, mode="constant", cval=0.0)
    out = ndimage.correlate1d(out, kernel, axis=1, mode="constant", cval=0.0)
    half = size // 2
    return out[half : out.shape[0] - half, half : out.shape[1] - half] if valid else out


@pytest.mark.parametrize("shape", [(64, 48), (33, 70), (9, 12), (5, 4)])
@pytest.mark.parametrize(("size", "sigma"), [(11, 1.5), (7, 1.5), (17, 3.4), (3, 0.6)])
@pytest.mark.parametrize("valid", [False, True])
def test_gaussian_window_equals_scipy(shape, size, sigma, valid):
    image = np.random.default_rng(sum(shape) + size).random(shape) * 255
    expected = _scipy_gaussian(image, size, sigma, valid)
    got = gaussian_filter(image, size, sigma, valid=valid)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * 255)


def test_gaussian_window_takes_strided_views():
    image = np.random.default_rng(1).random((80, 90)) * 255
    np.testing.assert_allclose(gaussian_filter(image[::2, ::2], 9, 1.8, valid=True),
                               _scipy_gaussian(np.ascontiguousarray(image[::2, ::2]), 9, 1.8, True), rtol=1e-12,
                               atol=1e-10)


def _numpy_phase_congruency(image):
    """Phase congruency in plain NumPy, one temporary per operation: the formulation the compiled
    orientation loops replaced (the test oracle)."""
    rows, cols = image.shape
    image_fft = fft.fft2(image)
    zeros = np.zeros((rows, cols))
    total_energy, total_sum_an = zeros.copy(), zeros.copy()
    cov_x2, cov_y2, cov_xy = zeros.copy(), zeros.copy(), zeros.copy()
    for angle, filters, em_n, sum_an2, sum_aiaj in phase._filter_bank(rows, cols):
        responses = [fft.ifft2(image_fft * f) for f in filters]
        amplitudes = [np.abs(r) for r in responses]
        sum_an = np.sum(amplitudes, axis=0)
        max_an = np.max(amplitudes, axis=0)
        sum_e = np.sum([r.real for r in responses], axis=0)
        sum_o = np.sum([r.imag for r in responses], axis=0)
        x_energy = np.sqrt(sum_e**2 + sum_o**2) + phase._EPSILON
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = zeros.copy()
        for r in responses:
            energy += r.real * mean_e + r.imag * mean_o - np.abs(r.real * mean_o - r.imag * mean_e)
        noise_power = (-np.median(amplitudes[0] ** 2) / np.log(0.5)) / em_n
        tau = np.sqrt((2 * noise_power * sum_an2 + 4 * noise_power * sum_aiaj) / 2)
        threshold = (tau * np.sqrt(np.pi / 2) + phase.NOISE_K * np.sqrt((2 - np.pi / 2) * tau**2)) / phase._NOISE_RESCALE
        energy = np.maximum(energy - threshold, 0.0)
        width = sum_an / (max_an + phase._EPSILON) / phase.N_SCALES
        weighted = 1.0 / (1.0 + np.exp((phase.CUT_OFF - width) * phase.SIGMOID_G)) * energy
        total_sum_an += sum_an
        total_energy += weighted
        pc_o = np.divide(weighted, sum_an, out=np.zeros_like(weighted), where=sum_an > 0)
        cx, cy = pc_o * np.cos(angle), pc_o * np.sin(angle)
        cov_x2 += cx * cx
        cov_y2 += cy * cy
        cov_xy += cx * cy
    cov_x2 /= phase.N_ORIENTATIONS / 2
    cov_y2 /= phase.N_ORIENTATIONS / 2
    cov_xy /= phase.N_ORIENTATIONS
    denom = np.sqrt(cov_xy**2 + (cov_x2 - cov_y2) ** 2) + phase._EPSILON
    return (total_energy / (total_sum_an + phase._EPSILON), (cov_y2 + cov_x2 + denom) / 2,
            (cov_y2 + cov_x2 - denom) / 2)


@pytest.mark.parametrize("shape", [(64, 64), (45, 70)])
def test_phase_congruency_equals_the_numpy_formulation(shape):
    rng = np.random.default_rng(3)
    # Edges, a bright disc and noise: every branch (zero energy, threshold, spread) is reached.
    y, x = np.mgrid[: shape[0], : shape[1]]
    image = 120.0 * (x > shape[1] // 3) + 80.0 * ((y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2 < 90)
    image += rng.normal(0, 3, shape)
    got = phase.phase_congruency(image)
    for value, expected in zip((got.pc, got.maximum_moment, got.minimum_moment), _numpy_phase_congruency(image)):
        np.testing.assert_allclose(value, expected, rtol=1e-9, atol=1e-12)


def test_flat_image_has_zero_phase_congruency():
    got = phase.phase_congruency(np.full((40, 40), 77.0))
    assert np.all(got.pc == 0) and np.all(np.isfinite(got.maximum_moment))


def test_metrics_in_threads_equal_sequential_ones(ct_slices):
    """The QC report evaluates slices in parallel threads: same values, bit for bit."""
    sequential = [metrics.compute_all(sources, fused) for sources, fused in ct_slices]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(lambda case: metrics.compute_all(*case), ct_slices))
    assert threaded == sequential


@pytest.fixture(scope="module")
def ct_slices():
    """Three 128 x 128 two-source cases with a fused image each."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[:128, :128]
    cases = []
    for shift in (0, 9, 21):
        a = np.clip(0.5 + 0.4 * np.sin((x + shift) / 9.0) * (y > 30) + rng.normal(0, 0.02, (128, 128)), 0, 1)
        b = np.clip(((x - 64) ** 2 + (y - 60 - shift) ** 2 < 900) * 0.8 + rng.normal(0, 0.02, (128, 128)), 0, 1)
        cases.append(([a, b], np.maximum(a, b)))
    return cases


def test_compute_all_of_named_metrics_equals_the_full_call(ct_slices):
    sources, fused = ct_slices[1]
    full = metrics.compute_all(sources, fused)
    assert {name: metrics.compute_all(sources, fused, names=(name,))[name] for name in reversed(metrics.METRIC_NAMES)} \
        == full
    assert list(metrics.compute_all(sources, fused, names=("QP", "EN"))) == ["QP", "EN"]
