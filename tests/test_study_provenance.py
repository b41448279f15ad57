"""Provenance details of the fuse-study pipeline that need no full run."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medfuse.core.config import FusionConfig
from medfuse.features.registry import load_extractor, verify_models
from medfuse.study.pipeline import _model_identity


def test_model_identity_is_the_verified_hash_of_the_file_in_use():
    config = FusionConfig()
    name, sha = _model_identity(config)
    extractor = load_extractor(config.model, config.depth, threads=1)
    assert name == extractor.name
    (path,) = [r.path for r in verify_models() if r.name == extractor.model and r.depth == extractor.depth]
    assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_model_identity_is_empty_without_cnn_weights():
    assert _model_identity(FusionConfig(decision="energy")) == (None, None)
    assert _model_identity(FusionConfig.photo().replace(detail_rule="max-abs")) == (None, None)
    assert _model_identity(FusionConfig())[0] is not None  # the default's decision uses the CNN
