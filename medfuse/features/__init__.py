"""CNN feature extractors run by onnxruntime, and the model registry.

Importing this package never imports torch (export-time only, in
:mod:`medfuse.features.export`) nor creates an onnxruntime session.
"""

from medfuse.features.registry import list_models, load_extractor, verify_models

__all__ = ["list_models", "load_extractor", "verify_models"]
