"""Phase-congruency metric QP (Zhao, Laganiere & Liu 2007).

Kovesi's phase congruency (log-Gabor filters applied with FFTs), in the
variant Liu's toolbox ships as ``myphasecong3.m`` and ``metricZhao.m`` uses.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft

from medfuse.metrics._common import gaussian_filter, prepare

# Kovesi's default parameters (phasecong2/3), as Liu's myphasecong3 uses them.
N_SCALES = 4
N_ORIENTATIONS = 6
MIN_WAVELENGTH = 3.0
MULT = 2.1
SIGMA_ON_F = 0.55
D_THETA_ON_SIGMA = 1.2
NOISE_K = 2.0
CUT_OFF = 0.5
SIGMOID_G = 10.0
_EPSILON = 1e-4
#: Kovesi's empirical rescaling of the noise threshold for the PC_2 measure.
_NOISE_RESCALE = 1.7

# metricZhao constants.
FEATURE_THRESHOLD = 0.1
CORRELATION_WINDOW = 11
CORRELATION_SIGMA = 1.5
CORRELATION_C = 1e-4

_BANK_LOCK = threading.Lock()


@dataclass(frozen=True)
class PhaseCongruency:
    """Kovesi phase congruency of one image (all arrays (H, W) float64).

    Attributes
    ----------
    pc : total phase congruency in [0, 1]
    maximum_moment : M, edge strength
    minimum_moment : m, corner strength
    """

    pc: np.ndarray
    maximum_moment: np.ndarray
    minimum_moment: np.ndarray


def _frequency_grid(n: int) -> np.ndarray:
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


def _filter_bank(rows: int, cols: int):
    """Log-Gabor filters per orientation ((scales, rows, cols) float64) and the
    per-orientation noise-model sums, which depend only on the image size.

    Built once per size and process; threads evaluating slices of one size
    (the QC report) wait for the first one's bank instead of each building it.
    """
    with _BANK_LOCK:
        return _build_filter_bank(rows, cols)


@lru_cache(maxsize=2)
def _build_filter_bank(rows: int, cols: int):
    x, y = np.meshgrid(_frequency_grid(cols), _frequency_grid(rows))
    radius = np.sqrt(x * x + y * y)
    radius[rows // 2, cols // 2] = 1.0
    theta = np.arctan2(-y, x)
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    sin_t, cos_t = np.sin(theta), np.cos(theta)

    # Low-pass (radius 0.45, order 15) so no energy comes from the FFT corners.
    lx = (np.arange(1, cols + 1) - (cols // 2 + 1)) / cols
    ly = (np.arange(1, rows + 1) - (rows // 2 + 1)) / rows
    lxx, lyy = np.meshgrid(lx, ly)
    lowpass = np.fft.fftshift(1.0 / (1.0 + (np.sqrt(lxx**2 + lyy**2) / 0.45) ** 30))

    log_gabor = []
    for s in range(N_SCALES):
        centre = 1.0 / (MIN_WAVELENGTH * MULT**s)
        lg = np.exp(-(np.log(radius / centre) ** 2) / (2 * np.log(SIGMA_ON_F) ** 2)) * lowpass
        lg[0, 0] = 0.0
        log_gabor.append(lg)

    theta_sigma = np.pi / N_ORIENTATIONS / D_THETA_ON_SIGMA
    bank = []
    for o in range(N_ORIENTATIONS):
        angle = o * np.pi / N_ORIENTATIONS
        ds = sin_t * np.cos(angle) - cos_t * np.sin(angle)
        dc = cos_t * np.cos(angle) + sin_t * np.sin(angle)
        spread = np.exp(-(np.abs(np.arctan2(ds, dc)) ** 2) / (2 * theta_sigma**2))
        filters = [lg * spread for lg in log_gabor]
        # Noise model: sums over the even (real) part of each filter's spatial response scaled by
        # sqrt(rows * cols), sum_x sp_i(x) sp_j(x); by Parseval, the same sums over the frequencies of the
        # filters' even parts (f(k) + f(-k)) / 2, without an inverse FFT per filter.
        even = [(f + _mirrored(f)) / 2 for f in filters]
        sum_an2 = float(sum((e * e).sum() for e in even))
        sum_aiaj = float(sum((even[i] * even[j]).sum() for i in range(N_SCALES) for j in range(i + 1, N_SCALES)))
        bank.append((angle, np.stack(filters), float((filters[0] ** 2).sum()), sum_an2, sum_aiaj))
    return bank


def _mirrored(spectrum: np.ndarray) -> np.ndarray:
    """``spectrum[-k]`` (indices modulo the size) of an (H, W) array in FFT order."""
    return np.roll(spectrum[::-1, ::-1], 1, axis=(0, 1))


def phase_congruency(image: np.ndarray) -> PhaseCongruency:
    """Kovesi phase congruency (PC_2 measure) with Liu's ``myphasecong3`` conventions.

    Four scales (minimum wavelength 3, factor 2.1, sigma_on_f 0.55), six
    orientations (dtheta_on_sigma 1.2), noise threshold k = 2 (estimated per
    orientation from the median response at the finest scale, divided by
    1.7), frequency-spread sigmoid cut-off 0.5 and gain 10 (P. Kovesi, "Image
    features from phase congruency", Videre 1(3), 1999; "Phase congruency
    detects corners and edges", DICTA 2003). Liu's variant: frequency spread
    ``width = sum_s A_s / (max_s A_s + eps) / n_scales`` and total
    ``PC = sum_o W_o E_o / (sum_o sum_s A_s + eps)``.

    Parameters
    ----------
    image : (H, W) float array (any range; the metric passes 0..255)

    Returns
    -------
    PhaseCongruency
    """
    from medfuse.metrics import _kernels  # numba is imported by the first metric that needs it

    rows, cols = image.shape
    image_fft = fft.fft2(image)
    total_energy, total_sum_an = np.zeros((rows, cols)), np.zeros((rows, cols))
    cov_x2, cov_y2, cov_xy = np.zeros((rows, cols)), np.zeros((rows, cols)), np.zeros((rows, cols))
    sum_an, max_an, energy, finest_power = (np.empty((rows, cols)) for _ in range(4))
    # One (scales, rows, cols) complex buffer for every orientation: the product and, in place, its inverse
    # FFT (a fresh 16 MB array per orientation at 512² cost as much as the multiplication itself).
    spectrum = np.empty((N_SCALES, rows, cols), np.complex128)
    for angle, filters, em_n, sum_an2, sum_aiaj in _filter_bank(rows, cols):
        np.multiply(image_fft, filters, out=spectrum)
        # All scales of one orientation in one batched inverse FFT.
        responses = fft.ifft2(spectrum, axes=(-2, -1), overwrite_x=True)
        _kernels.orientation_energy(responses, _EPSILON, sum_an, max_an, energy, finest_power)

        # Noise: Rayleigh model fitted to the median finest-scale energy.
        median_e2n = np.median(finest_power)
        noise_power = (-median_e2n / np.log(0.5)) / em_n
        noise_energy2 = 2 * noise_power * sum_an2 + 4 * noise_power * sum_aiaj
        tau = np.sqrt(noise_energy2 / 2)
        threshold = (tau * np.sqrt(np.pi / 2) + NOISE_K * np.sqrt((2 - np.pi / 2) * tau**2)) / _NOISE_RESCALE
        # Energy <= sum_an, so where sum_an is 0 the orientation's congruency is 0 (the limit of the ratio).
        _kernels.accumulate_orientation(sum_an, max_an, energy, float(threshold), N_SCALES, _EPSILON, CUT_OFF,
                                        SIGMOID_G, np.cos(angle), np.sin(angle), total_energy, total_sum_an,
                                        cov_x2, cov_y2, cov_xy)

    cov_x2 /= N_ORIENTATIONS / 2
    cov_y2 /= N_ORIENTATIONS / 2
    cov_xy /= N_ORIENTATIONS
    denom = np.sqrt(cov_xy**2 + (cov_x2 - cov_y2) ** 2) + _EPSILON
    return PhaseCongruency(
        pc=total_energy / (total_sum_an + _EPSILON),
        maximum_moment=(cov_y2 + cov_x2 + denom) / 2,
        minimum_moment=(cov_y2 + cov_x2 - denom) / 2,
    )


def _correlation_score(maps: list[np.ndarray], masks: list[np.ndarray], fused_map: np.ndarray) -> float:
    """Zhao's masked local correlation: per pixel the best of the sources'
    (and the max-map's) correlation with F, summed and divided by the
    max-map's feature area."""

    def smooth(a):
        return gaussian_filter(a, CORRELATION_WINDOW, CORRELATION_SIGMA, valid=False)

    mu_f = smooth(fused_map)
    var_f = smooth(fused_map * fused_map) - mu_f * mu_f
    best = None
    for feature, mask in zip(maps, masks):
        masked = np.where(mask, feature, 0.0)
        mu = smooth(masked)
        var = smooth(masked * masked) - mu * mu
        cov = smooth(masked * fused_map) - mu * mu_f
        corr = np.where(mask, (cov + CORRELATION_C) / (np.sqrt(np.abs(var * var_f)) + CORRELATION_C), 0.0)
        best = corr if best is None else np.maximum(best, corr)
    area = int(masks[-1].sum())
    return float(best.sum() / area) if area else 0.0


def qp(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Zhao et al.'s phase-congruency metric QP.

    ``QP = P_p * P_M * P_m`` (exponents alpha = beta = gamma = 1), each factor
    the masked local correlation between F's feature map and the sources' maps
    for phase congruency (p), maximum moment (M) and minimum moment (m):
    at each pixel the largest of the correlations with source k (inside
    source k's feature mask, PC_k > 0.1) and with the max-map (the feature
    of the source with the largest PC there, inside its mask), over an 11x11
    Gaussian window (sigma 1.5, zero-padded), C = 1e-4, summed over the image
    and divided by the max-map's mask area (J. Zhao, R. Laganiere and Z. Liu,
    "Performance assessment of combinative pixel-level image fusion based on
    an absolute feature measurement", IJICIC 3(6A), 2007; Liu's toolbox
    ``metricZhao``). K sources: max-map over all K, K + 1 correlations.

    Maximum: 1 is approached but not reached when F equals identical
    sources, because F's map enters unmasked while the sources' maps are
    masked (Liu's convention); docs/metrics.md gives the measured values.

    Parameters
    ----------
    sources : sequence of K >= 2 arrays (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array

    Returns
    -------
    float
    """
    grey, out = prepare(sources, fused)
    pcs = [phase_congruency(s) for s in grey]
    pcf = phase_congruency(out)
    # Ties go to the later source, as Liu's ``mask = pc1 > pc2`` does.
    stack = np.stack([p.pc for p in pcs])
    winner = len(pcs) - 1 - np.argmax(stack[::-1], axis=0)
    masks = [p.pc > FEATURE_THRESHOLD for p in pcs]
    masks.append(np.max(stack, axis=0) > FEATURE_THRESHOLD)
    score = 1.0
    for field in ("pc", "maximum_moment", "minimum_moment"):
        maps = [getattr(p, field) for p in pcs]
        max_map = np.take_along_axis(np.stack(maps), winner[None], axis=0)[0]
        score *= _correlation_score(maps + [max_map], masks, getattr(pcf, field))
    return float(score)
