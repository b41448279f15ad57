"""medfuse: DICOM-aware zero-learning medical image fusion.

The core entry point is :func:`medfuse.fuse`, which fuses K >= 2
pre-registered 2-D images with the two-scale method of Lahoud & Süsstrunk.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "fuse", "FusionConfig", "FusionResult"]


def __getattr__(name: str):
    # Lazy, so that `import medfuse` (and the CLI start-up) does not pay for
    # onnxruntime, SimpleITK or dask unless the caller needs them.
    if name == "fuse":
        from medfuse.api import fuse

        return fuse
    if name in ("FusionConfig", "FusionResult"):
        from medfuse.core import config, fusion

        return getattr(config, name, None) or getattr(fusion, name)
    raise AttributeError(name)
