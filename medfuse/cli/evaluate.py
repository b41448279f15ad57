"""``medfuse evaluate``: objective fusion metrics for one result or a folder of pairs.

Two modes:

* ``medfuse evaluate --sources A.png B.png --fused F.png [--json]`` prints the
  eight metrics of one fused image.
* ``medfuse evaluate --pairs DIR [--method M ...] -o OUTDIR`` fuses every pair
  under DIR (laid out ``<task>/<pair>/{a,b,c}.*``: every folder holding two or
  more images is a pair, its images sorted by name are the sources) with each
  method and writes ``per_pair.csv``/``.md``, ``mean.csv``/``.md`` and
  ``methods.json`` (each method's full configuration) to OUTDIR.

Methods: the baselines ``average``, ``max``, ``avg-max``, ``gff``, and
``ours[:PRESET][:KEY=VALUE,...]`` — medfuse's fusion with the ``default`` or
``paper`` preset and any FusionConfig fields overridden, e.g.
``ours:paper:clip_detail_weights=true,features_on=detail``.

All methods fuse the sources' luma (BT.601) and the metrics are taken on
luma, so colour pairs (PET/SPECT pseudo-colour) are compared on equal terms.
Fused images are rounded to 8 bits before scoring, exactly as writing them
to an 8-bit PNG would, so scores equal those of the written files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from medfuse.atomic import atomic_open
from medfuse.core.config import PRESETS
from medfuse.errors import InputError, WriteError

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}
DEFAULT_METHODS = ("ours:paper", "ours", "average", "max", "avg-max", "gff")


@dataclass(frozen=True)
class Method:
    """A named fusion method: a baseline or medfuse with a FusionConfig."""

    label: str
    baseline: str | None = None
    config: Any = None  # FusionConfig for 'ours'

    def describe(self) -> dict:
        if self.baseline is not None:
            return {"kind": "baseline", "name": self.baseline}
        return {"kind": "medfuse", "config": self.config.to_dict()}

    def fuse(self, luma: np.ndarray) -> np.ndarray:
        """Fuse (K, H, W) float32 luma in [0, 1]; (H, W) float32 in [0, 1]."""
        if self.baseline is not None:
            from medfuse.core.baselines import BASELINES

            return BASELINES[self.baseline](luma)
        from medfuse.api import fuse

        return fuse(list(luma), config=self.config).fused


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_method(spec: str) -> Method:
    """Parse a method name (see the module docstring); InputError if unknown."""
    from medfuse.core.baselines import BASELINES

    spec = spec.strip()
    if spec in BASELINES:
        return Method(label=spec, baseline=spec)
    parts = spec.split(":")
    if parts[0] != "ours" or len(parts) > 3:
        raise InputError(f"unknown method {spec!r}: use ours[:default|paper|photo][:key=value,...] or one of {', '.join(BASELINES)}")
    from medfuse.core.config import FusionConfig

    preset = "default"
    overrides_text = ""
    for part in parts[1:]:
        if part in PRESETS:
            preset = part
        elif "=" in part:
            overrides_text = part
        else:
            raise InputError(f"method {spec!r}: {part!r} is neither a preset ({', '.join(PRESETS)}) nor key=value overrides")
    config = FusionConfig.preset(preset)
    optional = {f.name for f in dataclasses.fields(config) if "None" in str(f.type)}
    overrides = {}
    for item in filter(None, (p.strip() for p in overrides_text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"method {spec!r}: override {item!r} is not key=value")
        # 'none' means None only where the field allows it ('none' is also a
        # legitimate choice, e.g. saliency_normalisation=none).
        overrides[key] = None if key in optional and value.strip().lower() == "none" else _parse_value(value)
    if overrides:
        config = config.replace(**overrides)
    return Method(label=spec, config=config)


def find_pairs(root: Path) -> list[tuple[str, str, list[Path]]]:
    """Every folder under *root* (itself included) holding >= 2 images.

    Returns
    -------
    list of (task, pair, source paths sorted by name)
        ``task`` is the folder's parent relative to *root* (*root*'s own
        name when that parent is *root*, and *root*'s parent's name when *root*
        is itself a pair), ``pair`` the folder's name; sorted by (task, pair).
    """
    if not root.is_dir():
        raise InputError(f"--pairs {root}: not a folder")
    found = []
    for folder, _, files in os.walk(root):
        images = sorted(f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith("."))
        if len(images) >= 2:
            path = Path(folder)
            if path == root:
                task = root.resolve().parent.name
            elif path.parent == root:
                task = root.resolve().name
            else:
                task = str(path.parent.relative_to(root))
            found.append((task, path.name, [path / f for f in images]))
    if not found:
        raise InputError(f"--pairs {root}: no folder with two or more images found")
    return sorted(found, key=lambda item: (item[0], item[1]))


def _read(path: Path) -> np.ndarray:
    from medfuse.io.images import read_image

    return read_image(path)


def _luma_stack(images: list[np.ndarray], where: str) -> np.ndarray:
    from medfuse.metrics import to_gray255

    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        raise InputError(f"{where}: sources differ in size ({', '.join(f'{w}x{h}' for h, w in sorted(shapes))})")
    return np.stack([to_gray255(im) / 255.0 for im in images]).astype(np.float32)


def _to_uint8(fused: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(fused, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def evaluate_pairs(root: Path, methods: list[Method], out_dir: Path, *, save_fused: bool = False, echo=None) -> list[dict]:
    """Fuse and score every pair under *root*; write the tables to *out_dir*.

    Returns the per-pair rows (task, pair, method, metrics, seconds).
    """
    from medfuse.metrics import METRIC_NAMES, compute_all
    from medfuse.metrics.tables import mean_rows, to_csv, to_markdown

    pairs = find_pairs(root)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    rows = []
    for task, pair, paths in pairs:
        sources = [_read(p) for p in paths]
        luma = _luma_stack(sources, f"{task}/{pair}")
        for method in methods:
            started = time.perf_counter()
            fused = _to_uint8(method.fuse(luma))
            seconds = time.perf_counter() - started
            if save_fused:
                from medfuse.io.images import write_image

                target = out_dir / "fused" / task / pair
                target.mkdir(parents=True, exist_ok=True)
                write_image(target / f"{method.label.replace(':', '_').replace(',', '_').replace('=', '-')}.png", fused)
            values = compute_all(sources, fused)
            rows.append({"task": task, "pair": pair, "method": method.label, **values, "fuse_s": seconds})
        if echo:
            echo(f"{task}/{pair}: {len(paths)} sources, {len(methods)} methods")
    columns = ["task", "pair", "method", *METRIC_NAMES]
    means = mean_rows(rows)
    _write_text_atomic(out_dir / "per_pair.csv", to_csv(rows, columns))
    _write_text_atomic(out_dir / "per_pair.md", to_markdown(rows))
    _write_text_atomic(out_dir / "mean.csv", to_csv(means, ["task", "method", "pairs", *METRIC_NAMES]))
    _write_text_atomic(out_dir / "mean.md", to_markdown(means))
    described = {m.label: m.describe() for m in methods}
    _write_text_atomic(out_dir / "methods.json", json.dumps(described, indent=2, sort_keys=True) + "\n")
    return rows


def _print_single(values: dict[str, float], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({k: (None if math.isnan(v) else v) for k, v in values.items()}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from medfuse.metrics.tables import DECIMALS

    table = Table(title="fusion metrics (higher is better)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in values.items():
        table.add_row(name, f"{value:.{DECIMALS[name]}f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to *app*."""

    @app.command(
        "evaluate",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def evaluate(
        ctx: typer.Context,
        sources: list[Path] = typer.Option(None, "--sources", help="Source images (A first; more may follow the flag)."),
        fused: Path = typer.Option(None, "--fused", help="Fused image to score against --sources."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
        pairs: Path = typer.Option(None, "--pairs", help="Folder of <task>/<pair>/{a,b,...} images to fuse and score."),
        method: list[str] = typer.Option(
            None, "--method", "-m", help="Method to run on --pairs (repeatable): ours[:default|paper][:k=v,...], average, max, avg-max, gff."
        ),
        out_dir: Path = typer.Option(None, "--out", "-o", help="Folder for the --pairs tables."),
        save_fused: bool = typer.Option(False, "--save-fused", help="Also write each fused image under OUT/fused/."),
    ) -> None:
        """Score fused images with EN, MI, VIFF, QMI, QG, QY, QC and QP."""
        extra = list(ctx.args)
        unknown = [a for a in extra if a.startswith("-")]
        if unknown:
            raise InputError(f"unknown option(s): {' '.join(unknown)}")
        all_sources = list(sources or []) + [Path(a) for a in extra]
        if pairs is not None:
            if all_sources or fused is not None:
                raise InputError("use either --pairs or --sources/--fused, not both")
            if out_dir is None:
                raise InputError("--pairs needs an output folder: -o OUTDIR")
            methods = [parse_method(m) for m in (method or DEFAULT_METHODS)]
            labels = [m.label for m in methods]
            if len(set(labels)) != len(labels):
                raise InputError("each --method may be given once")
            evaluate_pairs(pairs, methods, out_dir, save_fused=save_fused, echo=lambda s: typer.echo(s, err=True))
            typer.echo(f"wrote {out_dir / 'mean.md'} and {out_dir / 'per_pair.csv'}")
            return
        if method or out_dir is not None or save_fused:
            raise InputError("--method, -o and --save-fused apply to --pairs only")
        if fused is None or len(all_sources) < 2:
            raise InputError("give --sources A B [...] and --fused F, or --pairs DIR -o OUTDIR")
        from medfuse.metrics import compute_all

        values = compute_all([_read(p) for p in all_sources], _read(fused))
        _print_single(values, as_json)
