"""Vectorised metrics against literal, loop-by-loop transcriptions of the
reference code's formulas (VIFB ``Qabf``, Liu ``ssim_yang`` / ``metricYang`` /
``metricCvejic``) on real image crops small enough to loop over. The one
documented deviation is kept: G = 1 where g_k = g_F (VIFB: G = g_F)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from medfuse import metrics


@pytest.fixture(scope="module")
def crops(shared_data):
    """40x40 float crops (MRI, CT, pixel-max) around the IVRL slice's centre."""
    folder = shared_data / "pairs2d" / "ct-mri" / "ivrl_1"
    a, b = (np.asarray(Image.open(folder / n).convert("L"), np.float64)[100:140, 90:130] for n in ("a.png", "b.png"))
    return a, b, np.maximum(a, b)


def _sobel_loop(img):
    h, w = img.shape
    padded = np.pad(img, 1)
    gx = np.zeros_like(img)
    gy = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            win = padded[i : i + 3, j : j + 3]
            gx[i, j] = (win[:, 2] - win[:, 0]) @ np.array([1.0, 2.0, 1.0])
            gy[i, j] = (win[0, :] - win[2, :]) @ np.array([1.0, 2.0, 1.0])
    return gx, gy


def _qabf_loop(a, b, f):
    tg, kg, dg, ta, ka, da = 0.9994, -15, 0.5, 0.9879, -22, 0.8
    grads = []
    for img in (a, b, f):
        gx, gy = _sobel_loop(img)
        strength = np.sqrt(gx**2 + gy**2)
        angle = np.where(gx == 0, math.pi / 2, np.arctan(gy / np.where(gx == 0, 1, gx)))
        grads.append((strength, angle))
    (g_f, a_f) = grads[2]
    num = den = 0.0
    for g_s, a_s in grads[:2]:
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                if g_s[i, j] > g_f[i, j]:
                    ratio = g_f[i, j] / g_s[i, j]
                elif g_s[i, j] == g_f[i, j]:
                    ratio = 1.0 if g_s[i, j] > 0 else 0.0
                else:
                    ratio = g_s[i, j] / g_f[i, j]
                orient = 1 - abs(a_s[i, j] - a_f[i, j]) / (math.pi / 2)
                q = tg / (1 + math.exp(kg * (ratio - dg))) * ta / (1 + math.exp(ka * (orient - da)))
                num += q * g_s[i, j]
                den += g_s[i, j]
    return num / den


def _gaussian_window():
    x = np.arange(7) - 3
    w = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    return w / w.sum()


def _window_stats(x, y):
    """Per 'valid' 7x7 window: (ssim, var_x, var_y, cov) with C1 = C2 = 2e-16."""
    win = _gaussian_window()
    n = x.shape[0] - 6
    out = np.zeros((4, n, n))
    for i in range(n):
        for j in range(n):
            px, py = x[i : i + 7, j : j + 7], y[i : i + 7, j : j + 7]
            mx, my = (win * px).sum(), (win * py).sum()
            vx = (win * (px - mx) ** 2).sum()
            vy = (win * (py - my) ** 2).sum()
            c = (win * (px - mx) * (py - my)).sum()
            ssim = (2 * mx * my + 2e-16) * (2 * c + 2e-16) / ((mx**2 + my**2 + 2e-16) * (vx + vy + 2e-16))
            out[:, i, j] = ssim, vx, vy, c
    return out


def test_qg_matches_vifb_formula(crops):
    a, b, f = crops
    assert metrics.qg([a / 255, b / 255], f / 255) == pytest.approx(_qabf_loop(a, b, f), abs=1e-9)


def test_qy_and_qc_match_liu_formulas(crops):
    a, b, f = crops
    s_ab, va, vb, _ = _window_stats(a, b)
    s_af, _, _, c_af = _window_stats(a, f)
    s_bf, _, _, c_bf = _window_stats(b, f)
    lam = va / (va + vb)
    qy = np.where(s_ab >= 0.75, lam * s_af + (1 - lam) * s_bf, np.maximum(s_af, s_bf))
    mu = c_af / (c_af + c_bf)
    qc = np.where(mu < 0, 0.0, np.where(mu > 1, 1.0, mu * s_af + (1 - mu) * s_bf))
    # The crop lies inside the head: no flat windows, nothing left out.
    assert np.all(va + vb > 0)
    assert metrics.qy([a / 255, b / 255], f / 255) == pytest.approx(qy.mean(), abs=1e-9)
    assert metrics.qc([a / 255, b / 255], f / 255) == pytest.approx(qc.mean(), abs=1e-9)
