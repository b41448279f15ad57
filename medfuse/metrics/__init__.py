"""Objective fusion metrics (EN, MI, VIFF, QMI, QG, QY, QC, QP).

Each metric is a function ``f(sources, fused) -> float`` taking K >= 2 source
images and the fused image, all the same size, (H, W) grey or (H, W, 3)
colour (evaluated on luma), uint8 / other integer (scaled by dtype range) or
float in [0, 1]; see :mod:`medfuse.metrics._common` and docs/metrics.md for
the conventions. Higher is better for all eight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medfuse.metrics._common import prepare, to_gray255
from medfuse.metrics.gradient import QG_MAXIMUM, qg
from medfuse.metrics.information import en, image_entropy, mi, qmi
from medfuse.metrics.phase import phase_congruency, qp
from medfuse.metrics.structural import qc, qy
from medfuse.metrics.viff import viff

#: The paper's eight metrics, in the order of its tables.
METRICS: dict[str, Callable[[Sequence[np.ndarray], np.ndarray], float]] = {
    "EN": en,
    "MI": mi,
    "VIFF": viff,
    "QMI": qmi,
    "QG": qg,
    "QY": qy,
    "QC": qc,
    "QP": qp,
}
METRIC_NAMES = tuple(METRICS)


def compute_all(sources: Sequence[np.ndarray], fused: np.ndarray,
                names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """All eight metrics of one fused image (or those named).

    Parameters
    ----------
    sources : sequence of K >= 2 arrays, (H, W) or (H, W, 3)
    fused : (H, W) or (H, W, 3) array, same size
    names : sequence of str, optional
        Which metrics, from :data:`METRIC_NAMES` (default all); a caller can
        spread one image's metrics over threads and get the values a single
        call gives.

    Returns
    -------
    dict
        ``{name: value}`` in *names* order.
    """
    grey, out = prepare(sources, fused)
    # The converted float64 arrays are in [0, 255]; hand them on as [0, 1] so
    # each metric's own conversion is exact and not repeated on colour data.
    unit = [g / 255.0 for g in grey]
    return {name: METRICS[name](unit, out / 255.0) for name in names}


__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "QG_MAXIMUM",
    "compute_all",
    "en",
    "image_entropy",
    "mi",
    "phase_congruency",
    "qc",
    "qg",
    "qmi",
    "qp",
    "qy",
    "to_gray255",
    "viff",
]
