"""The model registry file (``manifest.toml``): typed entries, reading, writing, search order.

A manifest describes ONNX trunks: per model its architecture, input
normalisation, licence, where the weights came from and the command that
wrote the files; per depth the file, its sha256, output stride and channels.

Where manifests are found (first match wins for a model name):

1. the **shipped** registry: ``models/manifest.toml`` of a source checkout
   (clone or editable install), else the copy a ``pip install`` put under
   ``<prefix>/share/medfuse/models/`` (setuptools data-files);
2. the **user** registry, where ``medfuse models export`` writes:
   ``$MEDFUSE_MODELS_DIR`` if set, else ``$XDG_DATA_HOME/medfuse/models``
   (default ``~/.local/share/medfuse/models``).

A model file is always looked up next to the manifest that lists it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfuse.errors import ModelError

#: Marker every medfuse manifest carries, so an unrelated ``models/`` folder is never mistaken for ours.
REGISTRY_MARKER = "medfuse"
MANIFEST_NAME = "manifest.toml"
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Normalisation:
    """Input normalisation: ``model_input = (x * scale - mean) / std`` per RGB channel, x in [0, 1]."""

    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        if not self.scale > 0 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"invalid normalisation scale={self.scale} mean={self.mean} std={self.std}")

    def apply(self, images: np.ndarray) -> np.ndarray:
        """The model input of grey images: each replicated to the 3 channels and normalised.

        Parameters
        ----------
        images : ndarray, shape (N, H, W), float32 in [0, 1]

        Returns
        -------
        ndarray, shape (N, 3, H, W), float32
        """
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        inv_std = (1.0 / np.asarray(self.std, np.float32)).reshape(1, 3, 1, 1)
        return ((images[:, None] * np.float32(self.scale) - mean) * inv_std).astype(np.float32, copy=False)

    def describe(self) -> str:
        """One-line human description, e.g. ``(x*255 - 127) / 128``."""
        mean = self.mean[0] if len(set(self.mean)) == 1 else list(self.mean)
        std = self.std[0] if len(set(self.std)) == 1 else list(self.std)
        scale = "x" if self.scale == 1 else f"x*{self.scale:g}"
        return f"({scale} - {mean}) / {std}"


@dataclass(frozen=True)
class DepthEntry:
    """One exported trunk: the network cut at ``depth``, stored in ``file``."""

    depth: int
    file: str
    sha256: str
    stride: int
    channels: int
    block: str

    def __post_init__(self):
        if self.depth < 1 or self.stride < 1 or self.channels < 1:
            raise ValueError(f"invalid depth entry {self}")
        if not _SHA256_PATTERN.match(self.sha256):
            raise ValueError(f"sha256 of {self.file} is not 64 lowercase hex digits")
        if Path(self.file).name != self.file or not self.file.endswith(".onnx"):
            raise ValueError(f"model file must be a plain '.onnx' file name, got {self.file!r}")


@dataclass(frozen=True)
class ModelEntry:
    """A model of the registry with all its exported depths."""

    name: str
    architecture: str
    normalisation: Normalisation
    licence: str
    weights_source: str
    export_command: str
    torch_version: str
    default_depth: int
    depths: dict[int, DepthEntry]
    notes: str = ""
    directory: Path | None = field(default=None, compare=False)
    origin: str = field(default="", compare=False)

    def __post_init__(self):
        if not _NAME_PATTERN.match(self.name):
            raise ValueError(f"model name {self.name!r} must be lowercase letters, digits, '-', '_' or '.'")
        if self.default_depth not in self.depths:
            raise ValueError(f"model {self.name}: default depth {self.default_depth} is not among its depths "
                             f"{sorted(self.depths)}")

    def path(self, depth: int) -> Path:
        """Absolute path of the file for *depth* (next to the manifest that lists it)."""
        if self.directory is None:
            raise ModelError(f"model {self.name} has no directory (entry not read from a manifest)")
        return self.directory / self.depths[depth].file


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.toml``: its models and (for the shipped one) the default model name."""

    path: Path
    models: dict[str, ModelEntry]
    default: str | None = None


def read_manifest(path: Path, *, origin: str = "") -> Manifest:
    """Parse and validate the manifest at *path*; raise :class:`ModelError` naming the file if it is bad."""
    path = Path(path)
    try:
        data = _read_toml(path)
    except OSError as exc:
        raise ModelError(f"cannot read model manifest {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid TOML: {exc}") from exc
    if data.get("registry") != REGISTRY_MARKER:
        raise ModelError(f"{path} is not a medfuse model manifest (no registry = \"{REGISTRY_MARKER}\")")
    models = {}
    try:
        for name, raw in data.get("models", {}).items():
            depths = {int(key): DepthEntry(depth=int(key), **row) for key, row in raw["depths"].items()}
            models[name] = ModelEntry(
                name=name,
                architecture=raw["architecture"],
                normalisation=Normalisation(float(raw["input_scale"]), tuple(map(float, raw["input_mean"])),
                                            tuple(map(float, raw["input_std"]))),
                licence=raw["licence"],
                weights_source=raw["weights_source"],
                export_command=raw["export_command"],
                torch_version=raw["torch_version"],
                default_depth=int(raw["default_depth"]),
                depths=depths,
                notes=raw.get("notes", ""),
                directory=path.parent,
                origin=origin,
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model manifest {path} has an invalid entry: {exc}") from exc
    default = data.get("default")
    if default is not None and default not in models:
        raise ModelError(f"model manifest {path}: default model {default!r} is not listed")
    return Manifest(path=path, models=models, default=default)


def _toml_value(value) -> str:
    # TOML basic strings use JSON's escapes for everything medfuse writes.
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def format_manifest(models: dict[str, ModelEntry], *, default: str | None = None, header: str = "") -> str:
    """TOML text of a manifest listing *models* (sorted, so the same entries give the same bytes)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append(f"registry = {_toml_value(REGISTRY_MARKER)}")
    if default is not None:
        lines.append(f"default = {_toml_value(default)}")
    for name in sorted(models):
        entry = models[name]
        norm = entry.normalisation
        lines += ["", f"[models.{name}]"]
        for key, value in (("architecture", entry.architecture), ("default_depth", entry.default_depth),
                           ("input_scale", norm.scale), ("input_mean", list(norm.mean)),
                           ("input_std", list(norm.std)), ("licence", entry.licence),
                           ("weights_source", entry.weights_source), ("export_command", entry.export_command),
                           ("torch_version", entry.torch_version)):
            lines.append(f"{key} = {_toml_value(value)}")
        if entry.notes:
            lines.append(f"notes = {_toml_value(entry.notes)}")
        for depth in sorted(entry.depths):
            row = entry.depths[depth]
            lines += ["", f"[models.{name}.depths.{depth}]"]
            for key in ("file", "sha256", "stride", "channels", "block"):
                lines.append(f"{key} = {_toml_value(getattr(row, key))}")
    return "\n".join(lines) + "\n"


def write_manifest(path: Path, models: dict[str, ModelEntry], *, default: str | None = None,
                   header: str = "") -> None:
    """Write a manifest atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(format_manifest(models, default=default, header=header), encoding="utf-8")
    tmp.replace(path)


def _read_toml(path: Path) -> dict:
    """The parsed TOML of *path*, parsed once per process while the file keeps its size and modification
    time: the registry is consulted on every ``load_extractor`` call, one per fused chunk of a volume.

    The returned dict is shared between callers and must not be modified.
    """
    stat = path.stat()
    return _parsed_toml(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _parsed_toml(path: str, mtime_ns: int, size: int) -> dict:  # noqa: ARG001 (the stat is the cache key)
    return tomllib.loads(Path(path).read_text(encoding="utf-8"))


def _source_checkout_manifest() -> Path | None:
    candidate = Path(__file__).resolve().parents[2] / "models" / MANIFEST_NAME
    return candidate if candidate.is_file() else None


def _installed_manifest() -> Path | None:
    try:
        files = importlib.metadata.distribution("medfuse").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for item in files:
        if item.as_posix().endswith(f"share/medfuse/models/{MANIFEST_NAME}"):
            located = Path(item.locate()).resolve()
            if located.is_file():
                return located
    return None


def shipped_manifest_path() -> Path:
    """The shipped ``manifest.toml`` (source checkout first, then the installed data files)."""
    # Located lazily: the installed copy's lookup reads the distribution's file list.
    for locate in (_source_checkout_manifest, _installed_manifest):
        candidate = locate()
        if candidate is not None:
            try:
                if _read_toml(candidate).get("registry") == REGISTRY_MARKER:
                    return candidate
            except (OSError, tomllib.TOMLDecodeError):
                continue
    raise ModelError("the shipped model manifest was not found (expected models/manifest.toml in the "
                     "source tree or share/medfuse/models/ in the installation); reinstall medfuse")


def user_models_dir() -> Path:
    """Where exported models are registered: ``$MEDFUSE_MODELS_DIR`` or ``$XDG_DATA_HOME/medfuse/models``."""
    explicit = os.environ.get("MEDFUSE_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "medfuse" / "models"


def load_registry() -> tuple[Manifest, Manifest | None]:
    """The shipped manifest and, where one exists, the user manifest."""
    shipped = read_manifest(shipped_manifest_path(), origin="shipped")
    user_path = user_models_dir() / MANIFEST_NAME
    user = read_manifest(user_path, origin="user") if user_path.is_file() else None
    return shipped, user
