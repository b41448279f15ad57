"""The interface through which a CNN enters the fusion core.

The core never imports onnxruntime: anything with a ``name`` and an
``activity`` method of the shape below can drive the detail weights
(``medfuse.features`` ships the ONNX implementations).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["ActivityExtractor"]


@runtime_checkable
class ActivityExtractor(Protocol):
    """Per-pixel activity of a pre-trained CNN (paper eqs. 9–10).

    Attributes
    ----------
    name : str
        Model name and depth, recorded in provenance.
    stride : int
        Output stride s of the network at the chosen depth: the extractor pads
        an (H, W) image bottom/right to a multiple of s and returns one
        activity cell per s×s block, ``ceil(H / s) × ceil(W / s)`` cells. The
        core maps cell (i, j) back onto pixels [i·s, (i+1)·s) × [j·s, (j+1)·s).
        (An extractor without it is still accepted; the core then infers
        ``ceil(H / h)``, which is wrong for some sizes, e.g. H = 20, s = 8.)
    """

    name: str
    stride: int

    def activity(self, images: np.ndarray) -> np.ndarray:
        """Channel-wise L1 norm of the ReLU feature maps at the chosen depth.

        Parameters
        ----------
        images : ndarray, shape (N, H, W), float32
            N grey images in [0, 1]. With ``FusionConfig.features_on='detail'``
            they are detail layers shown around mid-grey, ``clip(D + 0.5, 0, 1)``.

        Returns
        -------
        ndarray, shape (N, h, w), float32, >= 0
            ``h, w = ceil(H / stride), ceil(W / stride)`` for the network's
            ``stride`` at that depth. The core upsamples it (nearest, by
            ``stride``) to (H, W).
        """
        ...
