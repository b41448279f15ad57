"""The run-time ONNX activity extractor on real images (no torch needed)."""

from __future__ import annotations

import hashlib
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medfuse.errors import InputError
from medfuse.features import load_extractor
from medfuse.features.manifest import read_manifest, shipped_manifest_path
from medfuse.features.registry import _sessions


def _grey(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), np.float32) / 255


@pytest.fixture(scope="module")
def extractor():
    return load_extractor(threads=1)


@pytest.fixture(scope="module")
def ct_mri(shared_data):
    pair = shared_data / "pairs2d" / "ct-mri" / "ivrl_1"
    return np.stack([_grey(pair / "a.png"), _grey(pair / "b.png")])


def test_default_is_the_shipped_int8_trunk(extractor):
    assert extractor.name == "efficientnet-lite0-int8@3"
    assert extractor.stride == 8 and extractor.channels == 40
    shipped = read_manifest(shipped_manifest_path())
    entry = shipped.models["efficientnet-lite0-int8"]
    row = entry.depths[3]
    assert extractor.sha256 == row.sha256 == hashlib.sha256(entry.path(3).read_bytes()).hexdigest()


def test_paper_preset_loads_the_float32_trunk():
    from medfuse.core.config import FusionConfig

    paper = FusionConfig.paper()
    extractor = load_extractor(paper.model, paper.depth)
    assert extractor.name == "efficientnet-lite0@3"
    shipped = read_manifest(shipped_manifest_path())
    assert extractor.sha256 == shipped.models["efficientnet-lite0"].depths[3].sha256


def test_int8_trunk_changes_the_default_fusion_by_a_fraction_of_a_grey_level(shared_data):
    """The int8 trunk against the float32 one, default rule, one pair per medical task.

    Measured on all 72 shared medical pairs (docs/models.md, "Int8 trunk"): mean absolute
    difference 0.08 grey levels (at most 0.17 per pair), at most 1.8 % of the pixels
    more than 2 grey levels apart.
    """
    import medfuse
    from medfuse.core.config import FusionConfig

    for pair in ("ct-mri/ivrl_1", "pet-mri/cdd_21", "spect-mri/cdd_28", "t1-t2/ifcnn_c04"):
        folder = shared_data / "pairs2d" / pair
        sources = [_grey(path) for path in sorted(folder.iterdir())]
        int8 = medfuse.fuse(sources).fused
        fp32 = medfuse.fuse(sources, config=FusionConfig(model="efficientnet-lite0")).fused
        grey = np.abs(int8.astype(np.float64) - fp32) * 255
        assert grey.mean() < 0.5, (pair, grey.mean())
        assert np.mean(grey > 2) < 0.05, (pair, np.mean(grey > 2))


def test_activity_shape_dtype_and_sign_on_a_medical_pair(extractor, ct_mri):
    activity = extractor.activity(ct_mri)
    assert activity.shape == (2, 32, 32) and activity.dtype == np.float32
    assert activity.min() >= 0
    # Both sources carry structure: neither activity map is empty.
    assert (activity.reshape(2, -1).max(axis=1) > 0).all()


def test_activity_is_the_l1_norm_of_the_relu_features(extractor, ct_mri):
    features = extractor.features(ct_mri)
    assert features.shape == (2, 40, 32, 32) and features.min() >= 0
    np.testing.assert_allclose(extractor.activity(ct_mri), np.abs(features).sum(axis=1), rtol=1e-6)


def test_sources_do_not_influence_each_other_in_the_batch(extractor, ct_mri):
    together = extractor.activity(ct_mri)
    alone = np.concatenate([extractor.activity(ct_mri[:1]), extractor.activity(ct_mri[1:])])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5 * together.max())


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (217, 301), (255, 257)])
def test_any_size_gives_ceil_of_size_over_stride(extractor, ct_mri, size):
    images = ct_mri[:, : size[0], : size[1]] if size[0] <= 256 and size[1] <= 256 else \
        np.pad(ct_mri, ((0, 0), (0, max(0, size[0] - 256)), (0, max(0, size[1] - 256))), mode="reflect")[
            :, : size[0], : size[1]]
    activity = extractor.activity(np.ascontiguousarray(images))
    assert activity.shape == (2, math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    assert np.isfinite(activity).all() and activity.min() >= 0


def test_padding_rule_keeps_the_top_left_aligned(extractor, ct_mri):
    """Cropping a multiple-of-stride image by a few pixels changes the map only near the cut."""
    full = extractor.activity(ct_mri)
    cropped = extractor.activity(np.ascontiguousarray(ct_mri[:, :251, :251]))
    assert cropped.shape == (2, 32, 32)
    interior = (slice(None), slice(0, 24), slice(0, 24))  # beyond the receptive field of the mirrored border
    np.testing.assert_allclose(cropped[interior], full[interior], rtol=1e-4, atol=1e-4 * full.max())


def test_activity_follows_focus_on_a_multifocus_pair(extractor, shared_data):
    """Where one source is clearly sharper, its CNN activity is higher (what the detail weights rely on)."""
    pair = shared_data / "pairs2d" / "multifocus" / "lytro_01"
    images = np.stack([_grey(pair / "a.jpg"), _grey(pair / "b.jpg")])
    activity = extractor.activity(images)
    h, w = activity.shape[1:]
    s = extractor.stride

    def sharpness(image):
        energy = ndimage.laplace(image) ** 2
        energy = np.pad(energy, ((0, h * s - image.shape[0]), (0, w * s - image.shape[1])), mode="edge")
        return ndimage.uniform_filter(energy.reshape(h, s, w, s).mean(axis=(1, 3)), 5)

    sharp_a, sharp_b = sharpness(images[0]), sharpness(images[1])
    act_a, act_b = (ndimage.uniform_filter(a, 5) for a in activity)
    clear = np.abs(np.log((sharp_a + 1e-6) / (sharp_b + 1e-6))) > 1.0
    assert clear.mean() > 0.3
    agreement = ((act_a > act_b) == (sharp_a > sharp_b))[clear].mean()
    assert agreement > 0.85


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.float32), "shape"),
    (np.zeros((1, 4, 4), np.uint8), "dtype"),
    (np.full((1, 4, 4), 2.0, np.float32), "[0, 1]"),
    (np.full((1, 4, 4), np.nan, np.float32), "[0, 1]"),
])
def test_bad_input_is_refused_with_a_clear_error(extractor, bad, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        extractor.activity(bad)


def test_sessions_are_cached_per_model_depth_and_threads():
    first = load_extractor(threads=1)
    again = load_extractor(threads=1)
    other = load_extractor(threads=2)
    assert first._session is again._session
    assert other._session is not first._session
    assert len([k for k in _sessions if k[2] in (1, 2)]) >= 2


def test_extractor_pickles_by_name(extractor, ct_mri):
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone.name == extractor.name and clone.threads == extractor.threads
    np.testing.assert_array_equal(clone.activity(ct_mri), extractor.activity(ct_mri))


def test_the_extractor_module_does_not_import_the_registry():
    # The registry builds extractors; the extractor module must not import it back (no import circle),
    # not even inside a function.
    import ast

    import medfuse.features.extractor as module

    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name and name.startswith("medfuse.features.registry") for name in imported), imported
    clone = pickle.loads(pickle.dumps(load_extractor(threads=2)))
    assert clone.threads == 2 and clone._session is load_extractor(threads=2)._session


def test_importing_features_does_not_import_torch():
    code = "import sys, medfuse.features; medfuse.features.load_extractor(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_large_batches_are_split_without_changing_the_result(extractor, ct_mri, monkeypatch):
    import medfuse.features.extractor as module

    stack = np.concatenate([ct_mri, ct_mri[::-1], ct_mri])  # 6 slices
    whole = extractor.activity(stack)
    monkeypatch.setattr(module, "MAX_BATCH_PIXELS", 2 * 256 * 256)  # 3 calls of 2 slices
    np.testing.assert_allclose(extractor.activity(stack), whole, rtol=1e-5, atol=1e-5 * whole.max())
