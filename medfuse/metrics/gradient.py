"""Gradient-based metric QG (Xydeas & Petrovic's Q^AB/F)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medfuse.metrics._common import prepare

# Sobel kernels as in VIFB's Qabf: x responds to vertical edges, y to horizontal.
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])

#: Sigmoid constants of Xydeas & Petrovic (2000): strength (g) and orientation (a).
GAMMA_G, KAPPA_G, SIGMA_G = 0.9994, -15.0, 0.5
GAMMA_A, KAPPA_A, SIGMA_A = 0.9879, -22.0, 0.8
#: Exponent L of the edge-strength weights w = g^L.
WEIGHT_EXPONENT = 1.0

#: Sobel responses and strength differences this small (8-bit units) are
#: round-off of float inputs and count as exactly 0: the reference code's
#: exact comparisons (s_x == 0, g_k == g_F) are discontinuous there.
ROUND_OFF = 1e-3

#: QG of a fused image equal to identical sources (Q^AF = Q^BF at G = A = 1):
#: the constants' sigmoids stop just short of 1.
QG_MAXIMUM = GAMMA_G / (1.0 + np.exp(KAPPA_G * (1.0 - SIGMA_G))) * GAMMA_A / (1.0 + np.exp(KAPPA_A * (1.0 - SIGMA_A)))


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength g and orientation alpha in [-pi/2, pi/2] (zero-padded)."""
    sx = ndimage.correlate(image, _SOBEL_X, mode="constant", cval=0.0)
    sy = ndimage.correlate(image, _SOBEL_Y, mode="constant", cval=0.0)
    sx = np.where(np.abs(sx) <= ROUND_OFF, 0.0, sx)
    sy = np.where(np.abs(sy) <= ROUND_OFF, 0.0, sy)
    strength = np.hypot(sx, sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(sx == 0, np.pi / 2, np.arctan(sy / np.where(sx == 0, 1.0, sx)))
    return strength, angle


def _preservation(g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Per-pixel edge preservation Q^SF = Q_g * Q_a."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_s > g_f, g_f / g_s, g_s / g_f)
    ratio = np.where(np.abs(g_s - g_f) <= ROUND_OFF, np.where(g_s > 0, 1.0, 0.0), ratio)
    orient = 1.0 - np.abs(a_s - a_f) / (np.pi / 2)
    q_g = GAMMA_G / (1.0 + np.exp(KAPPA_G * (ratio - SIGMA_G)))
    q_a = GAMMA_A / (1.0 + np.exp(KAPPA_A * (orient - SIGMA_A)))
    return q_g * q_a


def qg(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Xydeas & Petrovic gradient metric QG (Q^AB/F), standard global form.

    ``QG = sum_p sum_k Q^kF(p) w^k(p) / sum_p sum_k w^k(p)``, with Sobel edge
    strength g and orientation alpha, relative strength
    ``G = min(g_k, g_F) / max(g_k, g_F)``, relative orientation
    ``A = 1 - |alpha_k - alpha_F| / (pi/2)``, ``Q^kF = Q_g(G) Q_a(A)`` with
    sigmoids ``Gamma / (1 + exp(kappa (x - sigma)))`` (Gamma_g = 0.9994,
    kappa_g = -15, sigma_g = 0.5; Gamma_a = 0.9879, kappa_a = -22,
    sigma_a = 0.8) and weights ``w^k = g_k^L``, L = 1 (C. S. Xydeas and V.
    Petrovic, "Objective image fusion performance measure", Electronics
    Letters 36(4), 2000; as VIFB's ``metricsQabf`` computes it). K sources:
    the sums run over all K.

    Conventions (VIFB): Sobel responses zero-padded at the border
    ('same' convolution); alpha = atan(s_y / s_x), pi/2 where s_x = 0
    (|s| <= :data:`ROUND_OFF` counts as 0, so float and uint8 copies of an
    image score the same); where g_k = g_F, G = 1 (Xydeas & Petrovic's
    definition; VIFB's code assigns G = g_F there, which for 8-bit images
    raises Q_g from 0.99885 to at most 0.9994 at such pixels: VIFB's QG is
    higher by at most 0.0004 on the CT-MRI pairs, see docs/metrics.md). Maximum
    :data:`QG_MAXIMUM` (about 0.9748), reached when F carries every source's
    edges exactly (e.g. identical sources); 0 when no source has an edge.

    Parameters
    ----------
    sources : sequence of K >= 2 arrays (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array

    Returns
    -------
    float
    """
    grey, out = prepare(sources, fused)
    g_f, a_f = _sobel(out)
    numerator = 0.0
    denominator = 0.0
    for s in grey:
        g_s, a_s = _sobel(s)
        weight = g_s**WEIGHT_EXPONENT
        numerator += float((_preservation(g_s, a_s, g_f, a_f) * weight).sum())
        denominator += float(weight.sum())
    return numerator / denominator if denominator > 0 else 0.0
