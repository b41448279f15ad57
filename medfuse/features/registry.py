"""The model registry: list, verify and load ONNX trunks by name and depth.

``load_extractor()`` returns the shipped default (the model and depth named
in ``models/manifest.toml``).  Every load checks the file's sha256 against the
manifest before onnxruntime sees a byte of it, and sessions are cached per
(file, hash, threads) per process, so repeated calls are free.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from medfuse.errors import ModelError
from medfuse.features.extractor import OnnxActivityExtractor
from medfuse.features.manifest import Manifest, ModelEntry, load_registry

#: Architectures users can add with ``medfuse models export`` (not shipped).
EXPORT_ONLY = {
    "resnet50": "the paper's network; export it from a torchvision ImageNet checkpoint with "
                "'medfuse models export resnet50 --weights resnet50.pth --depth 3'",
}

#: Accelerated onnxruntime providers used when installed, before the CPU provider.
_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider",
                        "DmlExecutionProvider")

_sessions: dict[tuple[str, str, int | None], object] = {}
_sessions_lock = threading.Lock()


@dataclass(frozen=True)
class ModelRow:
    """One row of ``medfuse models list``: a registered model at one depth, or an export-only model."""

    name: str
    depth: int | None
    stride: int | None
    channels: int | None
    file: str
    origin: str
    is_default: bool
    architecture: str
    normalisation: str
    weights_source: str
    licence: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one model file against its manifest hash."""

    name: str
    depth: int
    path: Path
    ok: bool
    reason: str


def _models() -> tuple[dict[str, ModelEntry], Manifest]:
    shipped, user = load_registry()
    models = dict(shipped.models)
    if user is not None:
        for name, entry in user.models.items():
            # The shipped registry wins: a user export cannot silently replace the default.
            models.setdefault(name, entry)
    return models, shipped


def _read_verified(entry: ModelEntry, depth: int) -> bytes:
    row = entry.depths[depth]
    path = entry.path(depth)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path} is missing ({entry.name} depth {depth}; "
                         f"re-run: {entry.export_command})") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != row.sha256:
        raise ModelError(f"model file {path} does not match its manifest: sha256 {actual}, "
                         f"expected {row.sha256}; the file is corrupt or was replaced")
    return data


def _providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in _PREFERRED_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def _session(entry: ModelEntry, depth: int, threads: int | None):
    key = (str(entry.path(depth)), entry.depths[depth].sha256, threads)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            import onnxruntime

            data = _read_verified(entry, depth)
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.inter_op_num_threads = 1
            # Errors only: the int8 trunk's graph optimiser reports the constants it
            # folded away as warnings on every load, which no user can act on.
            options.log_severity_level = 3
            if threads is not None:
                options.intra_op_num_threads = threads
            try:
                session = onnxruntime.InferenceSession(data, sess_options=options, providers=_providers())
            except Exception as exc:  # onnxruntime's own error types
                raise ModelError(f"onnxruntime cannot load {entry.path(depth)}: "
                                 f"{' '.join(str(exc).split())[:200]}") from exc
            _sessions[key] = session
    return session


def load_extractor(model: str | None = None, depth: int | None = None, *,
                   threads: int | None = None) -> OnnxActivityExtractor:
    """The activity extractor for *model* at *depth* (None: the shipped default model / its default depth).

    Parameters
    ----------
    model : str, optional
        Registry name (``medfuse models list``); None = the shipped default.
    depth : int, optional
        Network depth (end of a convolution block); None = the model's default depth.
    threads : int, optional
        onnxruntime intra-op threads (1 in Dask workers, one per core); None = onnxruntime's default.

    Raises
    ------
    ModelError
        Unknown model or depth, missing file, or a file whose sha256 differs from the manifest.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ModelError(f"threads must be a positive integer, got {threads!r}")
    models, shipped = _models()
    name = model if model is not None else shipped.default
    if name is None:
        raise ModelError(f"{shipped.path} names no default model")
    entry = models.get(name)
    if entry is None:
        hint = f" ({EXPORT_ONLY[name]})" if name in EXPORT_ONLY else ""
        raise ModelError(f"unknown model {name!r}{hint}; registered: {', '.join(sorted(models))}")
    chosen = entry.default_depth if depth is None else depth
    if chosen not in entry.depths:
        raise ModelError(f"model {name!r} has no exported depth {chosen}; available: "
                         f"{', '.join(map(str, sorted(entry.depths)))} (export others with: {entry.export_command})")
    row = entry.depths[chosen]
    return OnnxActivityExtractor(_session(entry, chosen, threads), model=name, depth=chosen, stride=row.stride,
                                 channels=row.channels, normalisation=entry.normalisation, threads=threads,
                                 sha256=row.sha256, reload=load_extractor)


def list_models() -> list[ModelRow]:
    """Every registered model and depth (shipped, then user), plus the export-only architectures."""
    models, shipped = _models()
    rows = []
    for name in sorted(models, key=lambda n: (models[n].origin != "shipped", n)):
        entry = models[name]
        for depth in sorted(entry.depths):
            row = entry.depths[depth]
            rows.append(ModelRow(name=name, depth=depth, stride=row.stride, channels=row.channels, file=row.file,
                                 origin=entry.origin,
                                 is_default=name == shipped.default and depth == entry.default_depth,
                                 architecture=entry.architecture, normalisation=entry.normalisation.describe(),
                                 weights_source=entry.weights_source, licence=entry.licence))
    for name, how in EXPORT_ONLY.items():
        if name not in models:
            rows.append(ModelRow(name=name, depth=None, stride=None, channels=None, file="", origin="export only",
                                 is_default=False, architecture=how, normalisation="", weights_source="",
                                 licence=""))
    return rows


def verify_models() -> list[VerifyResult]:
    """Check every registered file against its manifest sha256 (nothing raises for a bad file)."""
    models, _ = _models()
    results = []
    for name in sorted(models):
        entry = models[name]
        for depth in sorted(entry.depths):
            path = entry.path(depth)
            try:
                _read_verified(entry, depth)
                results.append(VerifyResult(name, depth, path, True, "sha256 matches"))
            except ModelError as exc:
                results.append(VerifyResult(name, depth, path, False, str(exc)))
    return results
