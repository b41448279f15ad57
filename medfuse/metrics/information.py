"""Information-theoretic metrics: EN, MI and QMI (all in bits).

All three work on the 256 integer grey levels (see
:mod:`medfuse.metrics._common` for how inputs are converted and rounded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfuse.metrics._common import prepare, quantize, to_gray255


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log2(p)).sum())


def _joint_histogram(a_levels: np.ndarray, b_levels: np.ndarray) -> np.ndarray:
    return np.bincount((a_levels * 256 + b_levels).ravel(), minlength=256 * 256).reshape(256, 256)


def _mutual_information_terms(a_levels: np.ndarray, f_levels: np.ndarray) -> tuple[float, float, float]:
    """Return (MI(a, f), H(a), H(f)) in bits from 256x256 joint counts."""
    joint = _joint_histogram(a_levels, f_levels)
    h_a = _entropy_bits(joint.sum(axis=1))
    h_f = _entropy_bits(joint.sum(axis=0))
    h_af = _entropy_bits(joint)
    return h_a + h_f - h_af, h_a, h_f


def en(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Entropy EN of the fused image, in bits.

    ``EN = -sum_i p_i log2 p_i`` over the 256-bin histogram of the fused
    image's grey levels (van Aardt, "Assessment of image fusion procedures
    using entropy, image quality, and multispectral classification", J. Appl.
    Remote Sens. 2(1), 2008; VIFB ``metricsEntropy``). Range [0, 8].

    Parameters
    ----------
    sources : sequence of (H, W) or (H, W, 3) arrays
        Only validated (EN looks at the fused image alone).
    fused : (H, W) or (H, W, 3) array
        uint8, other integer (scaled by dtype range) or float in [0, 1].

    Returns
    -------
    float
    """
    _, out = prepare(sources, fused)
    return _entropy_bits(np.bincount(quantize(out).ravel(), minlength=256))


def image_entropy(image: np.ndarray) -> float:
    """Entropy in bits of one image's 256-level histogram (used to check MI)."""
    return _entropy_bits(np.bincount(quantize(to_gray255(image)).ravel(), minlength=256))


def mi(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Mutual information MI = sum_k MI(S_k, F), in bits.

    Each term is ``H(S_k) + H(F) - H(S_k, F)`` from a 256x256 joint histogram
    of grey levels (Qu, Zhang & Yan, "Information measure for performance of
    image fusion", Electronics Letters 38(7), 2002). For K sources the sum
    runs over all K (Qu et al.'s definition for two is the K = 2 case). Range
    [0, K * 8]; ``MI([A, A], A) = 2 H(A)``.

    Conventions: bits (log2), as Liu's toolbox ``mutual_info``; VIFB's
    ``metricsMutinf`` uses natural logarithms (nats) instead. No per-image
    min-max stretch is applied: for integer 8-bit images Liu's and VIFB's
    stretch maps grey levels one-to-one and leaves MI unchanged.

    Parameters
    ----------
    sources : sequence of K >= 2 arrays (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array

    Returns
    -------
    float
    """
    grey, out = prepare(sources, fused)
    f_levels = quantize(out)
    return float(sum(_mutual_information_terms(quantize(s), f_levels)[0] for s in grey))


def qmi(sources: Sequence[np.ndarray], fused: np.ndarray) -> float:
    """Hossny's normalised mutual information QMI.

    ``QMI = 2 * sum_k MI(S_k, F) / (H(S_k) + H(F))`` (Hossny, Nahavandi &
    Creighton, "Comments on 'Information measure for performance of image
    fusion'", Electronics Letters 44(18), 2008; Liu's toolbox ``metricMI`` with
    ``sw=1``). Range [0, 2] for two sources, [0, K] for K (each term is at
    most 1/2 because MI(S, F) <= min(H(S), H(F))). A term whose entropies are
    both 0 (two constant images) contributes 0.

    Parameters
    ----------
    sources : sequence of K >= 2 arrays (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array

    Returns
    -------
    float
    """
    grey, out = prepare(sources, fused)
    f_levels = quantize(out)
    total = 0.0
    for s in grey:
        info, h_s, h_f = _mutual_information_terms(quantize(s), f_levels)
        if h_s + h_f > 0:
            total += info / (h_s + h_f)
    return 2.0 * total
