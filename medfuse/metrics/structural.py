"""Structural-similarity metrics QY (Yang et al.) and QC (Cvejic et al.).

Both use the local SSIM of Liu's toolbox (``ssim_yang`` inside
``metricYang.m`` / ``metricCvejic.m``): a 7x7 Gaussian window with
sigma = 1.5, 'valid' positions only (no border padding), and stabilising
constants C1 = C2 = 2e-16 in 8-bit units, which makes it Wang & Bovik's
universal image quality index in all but exactly flat windows.

Flat windows (see docs/metrics.md): where both sources have zero local
variance (QY) or zero covariance with the fused image (QC) the local
weight is 0/0; those windows are left out of the mean, as the MEFB
benchmark's wrappers ``metricsQy`` / ``metricsQc`` do. If every window is
flat the metric is undefined and NaN is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from medfuse.metrics._common import local_moments, prepare

WINDOW_SIZE = 7
WINDOW_SIGMA = 1.5
SSIM_C1 = 2e-16
SSIM_C2 = 2e-16
#: Yang et al.'s threshold on SSIM(A, B) between the two weighting rules.
YANG_THRESHOLD = 0.75


def _ssim_map(x: np.ndarray, y: np.ndarray):
    """Local SSIM map and the local variances / covariance it used."""
    mu_x, mu_y, var_x, var_y, cov = local_moments(x, y, WINDOW_SIZE, WINDOW_SIGMA, valid=True)
    ssim = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return ssim, var_x, var_y, cov


def _nan_mean(values: np.ndarray) -> float:
    kept = values[np.isfinite(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _qy_pair(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    ssim_ab, var_a, var_b, _ = _ssim_map(a, b)
    ssim_af, _, _, _ = _ssim_map(a, f)
    ssim_bf, _, _, _ = _ssim_map(b, f)
    total_var = var_a + var_b
    flat = total_var == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(flat, np.nan, var_a / np.where(flat, 1.0, total_var))
    local = np.where(ssim_ab >= YANG_THRESHOLD, lam * ssim_af + (1 - lam) * ssim_bf, np.maximum(ssim_af, ssim_bf))
    local = np.where(flat, np.nan, local)
    return _nan_mean(local)


def qy(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Yang et al.'s SSIM-based metric QY.

    Per 7x7 window w: if SSIM(A, B | w) >= 0.75,
    ``Q = lambda SSIM(A, F | w) + (1 - lambda) SSIM(B, F | w)`` with
    ``lambda = s_A^2 / (s_A^2 + s_B^2)`` (local variances); otherwise
    ``Q = max(SSIM(A, F | w), SSIM(B, F | w))``. QY is the mean of Q over the
    windows (C. Yang, J.-Q. Zhang, X.-R. Wang and X. Liu, "A novel similarity
    based quality metric for image fusion", Information Fusion 9(2), 2008;
    Liu's toolbox ``metricYang``). Windows where both sources are flat are
    left out (MEFB). K > 2 sources: the mean of QY over all source pairs
    (i < j). Range [0, 1] in practice (1 when F equals identical sources).

    Parameters
    ----------
    sources : sequence of K >= 2 arrays (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array

    Returns
    -------
    float
        NaN if every window is flat in both sources.
    """
    grey, out = prepare(sources, fused)
    return float(np.mean([_qy_pair(a, b, out) for a, b in combinations(grey, 2)]))


def _qc_pair(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    q_af, _, _, cov_af = _ssim_map(a, f)
    q_bf, _, _, cov_bf = _ssim_map(b, f)
    total = cov_af + cov_bf
    undefined = (cov_af == 0) & (cov_bf == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(total == 0, np.sign(cov_af) * np.inf, cov_af / np.where(total == 0, 1.0, total))
    with np.errstate(invalid="ignore"):
        local = ratio * q_af + (1 - ratio) * q_bf
    # Liu's convention: the window's score (not the weight) becomes 0 / 1.
    local = np.where(ratio < 0, 0.0, np.where(ratio > 1, 1.0, local))
    local = np.where(undefined, np.nan, local)
    return _nan_mean(local)


def qc(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Cvejic et al.'s covariance-weighted metric QC.

    Per 7x7 window w, with ``mu = s_AF / (s_AF + s_BF)`` (s = local
    covariance with F): ``Q = mu UIQI(A, F | w) + (1 - mu) UIQI(B, F | w)``
    where 0 <= mu <= 1, ``Q = 0`` where mu < 0 and ``Q = 1`` where mu > 1;
    QC is the mean of Q over windows (N. Cvejic, A. Loza, D. Bull and N.
    Canagarajah, "A similarity metric for assessment of image fusion
    algorithms", Int. J. Signal Processing 2(3), 2005; Liu's toolbox
    ``metricCvejic`` with ``sw=2``, as MEFB's ``metricsQc`` wraps it).
    Windows where both covariances are 0 (e.g. both sources flat) are left
    out (MEFB).

    Convention: the 0 / 1 scores outside 0 <= mu <= 1 are Liu's code; the
    paper clips the *weight* mu to [0, 1] instead, which would make QC
    symmetric. With Liu's rule QC is not symmetric: A is the first source as
    given (docs/metrics.md gives the size of the difference). K > 2 sources:
    the mean of QC over source pairs (i < j) in the given order.

    Parameters
    ----------
    sources : sequence of K >= 2 arrays (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array

    Returns
    -------
    float
        NaN if every window is undefined.
    """
    grey, out = prepare(sources, fused)
    return float(np.mean([_qc_pair(a, b, out) for a, b in combinations(grey, 2)]))
