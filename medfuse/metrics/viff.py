"""Visual information fidelity for fusion, VIFF (Han, Cai, Cao & Xu 2013)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfuse.metrics._common import gaussian_filter, local_moments, prepare

#: Visual noise variance sigma_n^2 of the HVS model, in 8-bit units.
VISUAL_NOISE = 0.005 * 255.0 * 255.0
#: Constant added to every pixel's VID and VIND before the ratio.
RATIO_CONSTANT = 1e-7
#: Weights of the four scales (finest first).
SCALE_WEIGHTS = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
#: Threshold below which a variance counts as zero (Sheikh & Bovik's code).
_TINY = 1e-10


def _scale_window(scale: int) -> tuple[int, float]:
    size = 2 ** (4 - scale + 1) + 1  # 17, 9, 5, 3 for scales 1..4
    return size, size / 5.0


def _vid_vind_gain(ref: np.ndarray, dist: np.ndarray, size: int, sigma: float):
    """Per-pixel VID, VIND and gain g of one source (ref) against F (dist)."""
    _, _, var_r, var_d, cov = local_moments(ref, dist, size, sigma, valid=True)
    gain = cov / (var_r + _TINY)
    sv = var_d - gain * cov
    r_flat = var_r < _TINY
    gain = np.where(r_flat, 0.0, gain)
    sv = np.where(r_flat, var_d, sv)
    var_r = np.where(r_flat, 0.0, var_r)
    d_flat = var_d < _TINY
    gain = np.where(d_flat, 0.0, gain)
    sv = np.where(d_flat, 0.0, sv)
    negative = gain < 0
    sv = np.where(negative, var_d, sv)
    gain = np.where(negative, 0.0, gain)
    sv = np.maximum(sv, _TINY)
    vid = np.log10(1.0 + gain * gain * var_r / (sv + VISUAL_NOISE))
    vind = np.log10(1.0 + var_r / VISUAL_NOISE)
    return vid, vind, gain


def viff(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Visual information fidelity for fusion, VIFF.

    Four scales; at scale s (1 = finest) a Gaussian window of
    N = 2^(5-s) + 1 pixels, sigma = N/5; from scale 2 on the images are
    low-passed with that window ('valid') and decimated by 2. Per pixel and
    source k, Sheikh & Bovik's gain-plus-noise model gives the visual
    information with distortion VID_k = log10(1 + g^2 s_k^2 / (s_v^2 + s_n^2))
    and without, VIND_k = log10(1 + s_k^2 / s_n^2), with visual noise
    s_n^2 = 0.005 * 255^2. At each pixel the source with the smaller gain g
    is taken; the scale's score is sum(VID + C) / sum(VIND + C), C = 1e-7,
    and VIFF the scales' weighted sum with weights (1, 0, 0.15, 1) / 2.15
    (Y. Han, Y. Cai, Y. Cao and X. Xu, "A new image fusion performance metric
    based on visual information fidelity", Information Fusion 14(2), 2013;
    constants as in Han's code distributed with VIFB). K sources: the
    smallest gain over all K (ties go to the later source, as in Han's code).

    Colour: evaluated on luma (Han's code uses CIELAB L*; documented
    deviation). 1 when F equals identical sources; can exceed 1 where F
    amplifies a source's local contrast (g > 1).

    Parameters
    ----------
    sources : sequence of K >= 2 arrays (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array

    Returns
    -------
    float
    """
    grey, out = prepare(sources, fused)
    refs = list(grey)
    dist = out
    total = 0.0
    for scale in range(1, 5):
        size, sigma = _scale_window(scale)
        if scale > 1:
            refs = [gaussian_filter(r, size, sigma, valid=True)[::2, ::2] for r in refs]
            dist = gaussian_filter(dist, size, sigma, valid=True)[::2, ::2]
        per_source = [_vid_vind_gain(r, dist, size, sigma) for r in refs]
        gains = np.stack([g for _, _, g in per_source])
        # argmin over the reversed stack picks the last source among equal gains.
        chosen = len(refs) - 1 - np.argmin(gains[::-1], axis=0)
        vid = np.take_along_axis(np.stack([v for v, _, _ in per_source]), chosen[None], axis=0)[0]
        vind = np.take_along_axis(np.stack([v for _, v, _ in per_source]), chosen[None], axis=0)[0]
        score = (vid + RATIO_CONSTANT).sum() / (vind + RATIO_CONSTANT).sum()
        total += SCALE_WEIGHTS[scale - 1] * score
    return float(total)
