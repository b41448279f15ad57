"""Export-time checks (need torch): strict checkpoint loading, ONNX/torch parity, reproducible export.

Parity: the onnxruntime output equals the torch output to 1e-4 relative to
the output's magnitude (``|ort - torch| <= 1e-4 * (|torch| + max|torch|)``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="torch is an export-time extra (pip install 'medfuse[export]')")
onnxruntime = pytest.importorskip("onnxruntime")

from medfuse.cli.app import main  # noqa: E402
from medfuse.errors import ModelError  # noqa: E402
from medfuse.features import load_extractor  # noqa: E402
from medfuse.features.export import onnx_export  # noqa: E402
from medfuse.features.export.nets import ResNet50Trunk  # noqa: E402
from medfuse.features.manifest import read_manifest, shipped_manifest_path  # noqa: E402

pytestmark = pytest.mark.torch


def _assert_parity(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def _normalised(images: np.ndarray, entry) -> np.ndarray:
    norm = entry.normalisation
    mean = np.asarray(norm.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(norm.std, np.float32).reshape(1, 3, 1, 1)
    return ((images[:, None] * norm.scale - mean) / std).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint():
    return onnx_export.load_checkpoint(onnx_export.efficientnet_lite0_checkpoint())


@pytest.fixture(scope="module")
def shipped():
    """The float32 trunks exported from torch (the int8 default is quantised from them: test_models_int8.py)."""
    return read_manifest(shipped_manifest_path()).models["efficientnet-lite0"]


@pytest.fixture(scope="module")
def sources(shared_data):
    """A CT/MRI pair (256 x 256) and a natural photo cropped to an odd, non-square size."""
    pair = shared_data / "pairs2d" / "ct-mri" / "ivrl_1"
    medical = np.stack([np.asarray(Image.open(pair / n).convert("L"), np.float32) / 255 for n in ("a.png", "b.png")])
    photo = np.asarray(Image.open(shared_data / "pairs2d" / "multifocus" / "lytro_01" / "a.jpg").convert("L"),
                       np.float32) / 255
    return medical, np.ascontiguousarray(photo[None, :217, :301])


def test_checkpoint_loads_strictly_and_has_no_squeeze_excite(checkpoint):
    onnx_export.check_efficientnet_keys(checkpoint)  # raises on any missing or unexpected key
    assert not any("_se_" in key for key in checkpoint)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        onnx_export.check_efficientnet_keys({**checkpoint, "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    incomplete = dict(checkpoint)
    del incomplete["_blocks.3._bn1.running_var"]
    with pytest.raises(RuntimeError, match="Missing key"):
        onnx_export.check_efficientnet_keys(incomplete)


def test_shipped_trunks_match_torch(checkpoint, shipped, sources):
    medical, photo = sources
    for depth in shipped.depths:
        net = onnx_export.efficientnet_lite0_trunk(depth, checkpoint)
        session = onnxruntime.InferenceSession(str(shipped.path(depth)), providers=["CPUExecutionProvider"])
        batch = _normalised(medical, shipped)
        (ort_out,) = session.run(None, {"images": batch})
        with torch.no_grad():
            torch_out = net(torch.from_numpy(batch)).numpy()
        _assert_parity(ort_out, torch_out)
        assert torch_out.min() >= 0 and torch_out.shape[1] == shipped.depths[depth].channels


def test_extractor_pad_and_crop_rule_matches_torch_on_an_odd_size(checkpoint, shipped, sources):
    _, photo = sources
    for depth, row in shipped.depths.items():
        extractor = load_extractor(shipped.name, depth, threads=1)
        features = extractor.features(photo)
        s = row.stride
        padded = np.pad(photo, ((0, 0), (0, -photo.shape[1] % s), (0, -photo.shape[2] % s)), mode="symmetric")
        with torch.no_grad():
            reference = onnx_export.efficientnet_lite0_trunk(depth, checkpoint)(
                torch.from_numpy(_normalised(padded, shipped))).numpy()
        _assert_parity(features, reference[:, :, : -(-217 // s), : -(-301 // s)])


def test_shipped_export_is_reproducible(shipped, tmp_path):
    if torch.__version__ != shipped.torch_version:
        pytest.skip(f"shipped files were exported with torch {shipped.torch_version}, this is {torch.__version__}")
    entry = onnx_export.export_efficientnet_lite0(tmp_path, sorted(shipped.depths),
                                                  default_depth=shipped.default_depth)
    for depth, row in entry.depths.items():
        assert row.sha256 == shipped.depths[depth].sha256
        assert hashlib.sha256((tmp_path / row.file).read_bytes()).hexdigest() == row.sha256


@pytest.fixture(scope="module")
def random_resnet50(tmp_path_factory):
    """A full torchvision-layout ResNet50 state dict with random weights (incl. the fc head), saved to .pth."""
    torch.manual_seed(7)
    state = ResNet50Trunk(5).state_dict()
    state["fc.weight"] = torch.randn(1000, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    # Non-trivial BatchNorm statistics, so folding them into the convolutions is exercised.
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow
def test_resnet50_export_registers_and_matches_torch(random_resnet50, tmp_path, monkeypatch, capsys,
                                                                sources):
    weights, state = random_resnet50
    models_dir = tmp_path / "user-models"
    monkeypatch.setenv("MEDFUSE_MODELS_DIR", str(models_dir))
    # Depths 4 and 5 (34 MB and 94 MB files) add half a minute for the same code path;
    # test_resnet50_trunk_layout covers their structure.
    assert main(["models", "export", "resnet50", "--weights", str(weights), "--depth", "1..3"]) == 0
    out = capsys.readouterr().out
    assert out.count("exported resnet50 depth") == 3 and f"registered in {models_dir}" in out
    entry = read_manifest(models_dir / "manifest.toml").models["resnet50"]
    assert sorted(entry.depths) == [1, 2, 3] and entry.default_depth == 3
    assert [entry.depths[d].stride for d in range(1, 4)] == [2, 4, 8]
    medical, _ = sources
    small = np.ascontiguousarray(medical[:, 64:160, 32:160])  # 96 x 128 (odd multiples of the strides)
    for depth in range(1, 4):
        net = onnx_export.resnet50_trunk(depth, state)
        with torch.no_grad():
            reference = net(torch.from_numpy(_normalised(small, entry))).numpy()
        extractor = load_extractor("resnet50", depth, threads=1)
        _assert_parity(extractor.features(small), reference)
        assert reference.shape[1] == entry.depths[depth].channels
    assert main(["models", "verify"]) == 0


def test_resnet50_export_refuses_a_foreign_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDFUSE_MODELS_DIR", str(tmp_path / "user-models"))
    weights = onnx_export.efficientnet_lite0_checkpoint()
    assert main(["models", "export", "resnet50", "--weights", str(weights), "--depth", "2"]) == ModelError.exit_code
    assert "is not a torchvision ResNet50 state dict" in capsys.readouterr().err
    assert not (tmp_path / "user-models" / "manifest.toml").exists()


@pytest.mark.parametrize("depth, stride, channels", [(1, 2, 64), (2, 4, 256), (3, 8, 512), (4, 16, 1024),
                                                     (5, 32, 2048)])
def test_resnet50_trunk_layout(random_resnet50, depth, stride, channels):
    """Each depth loads torchvision's keys strictly and ends where the paper's depth says."""
    _, state = random_resnet50
    net = onnx_export.resnet50_trunk(depth, state)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, channels, 64 // stride, 96 // stride)
