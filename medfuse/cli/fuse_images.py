"""CLI: ``medfuse fuse-images A B [C ...] -o out.png`` — fuse pre-registered 2-D images (issue 2)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from medfuse.atomic import atomic_open, check_writable
from medfuse.core.config import PRESETS, FusionConfig
from medfuse.errors import InputError, WriteError


def _describe(config: FusionConfig) -> str:
    """The parameters that differ between the presets, as 'box 7, r_b 7, ...' (for --help)."""
    if config.rule == "pyramid":
        return (
            f"pyramid rule, {config.decision} decision (radius {config.decision_radius}), "
            f"{config.pyramid_levels} levels, envelope clip {'on' if config.envelope_clip else 'off'}"
        )
    clipped = "clipped" if config.clip_detail_weights else "unclipped"
    return (
        f"two-scale rule, {config.decomposition} {config.decomposition_size}, r_b {config.r_b}, eps_b {config.eps_b:g}, "
        f"r_d {config.r_d}, eps_d {config.eps_d:g}, {clipped} detail weights"
    )


_PRESET_HELP = (
    f"Starting configuration, by the kind of images. 'default' assumes medical slices (CT, MR, PET, SPECT: "
    f"a black background, each source bright where it has information): {_describe(FusionConfig())}; "
    f"chosen in docs/metrics.md. 'photo' for photographs (infrared-visible, multi-focus, multi-exposure): "
    f"{_describe(FusionConfig.photo())}. 'paper' is the paper's method exactly: {_describe(FusionConfig.paper())}."
)


_TWO_SCALE_OPTIONS = ("base_rule", "detail_rule", "features_on", "decomposition", "clip_detail_weights", "detail_temperature")


def fuse_images(
    inputs: list[Path] = typer.Argument(..., metavar="A B [C ...]", help="Two or more pre-registered images (PNG, TIFF, JPEG; 8/16-bit) of the same size."),
    output: Path = typer.Option(..., "--output", "-o", help="Fused image to write (.png, .tif, .jpg)."),
    save_weights: Path = typer.Option(None, "--save-weights", help="Folder for the base/detail weight maps (16-bit PNG previews + exact weights.npz)."),
    preset: str = typer.Option("default", "--preset", help=_PRESET_HELP),
    rule: str = typer.Option(None, "--rule", help="Fusion rule: pyramid (medfuse's default) | two-scale (the paper's)."),
    decision: str = typer.Option(None, "--decision", help="Pyramid rule: what decides each pixel, cnn-energy | energy (no CNN)."),
    envelope_clip: bool = typer.Option(None, "--envelope-clip/--no-envelope-clip", help="Keep each fused pixel within the sources' values at that pixel (no halos)."),
    model: str = typer.Option(None, "--model", help="Feature extractor model name (medfuse models list); default: the shipped model."),
    depth: int = typer.Option(None, "--depth", min=1, help="Network depth of the features; default: the model's default."),
    base_rule: str = typer.Option(None, "--base-rule", help="Base weights: saliency | average."),
    detail_rule: str = typer.Option(None, "--detail-rule", help="Detail weights: cnn | max-abs."),
    features_on: str = typer.Option(None, "--features-on", help="CNN input: source (paper) | detail (authors' code: detail layers, no detail guided filter)."),
    decomposition: str = typer.Option(None, "--decomposition", help="Base/detail split: box | gaussian | guided."),
    clip_detail_weights: bool = typer.Option(None, "--clip-detail-weights/--no-clip-detail-weights", help="Clip refined detail weights to [0, 1] before renormalising."),
    detail_temperature: float = typer.Option(None, "--detail-temperature", help="Divide the CNN activity by T before the softmax (1 = the paper; large T -> equal detail weights)."),
) -> None:
    """Fuse two or more pre-registered 2-D images (medical by default; --preset photo for photographs).

    Colour images are fused on luma with their chroma kept; the output is RGB
    when any input is colour, and 16-bit when a grey output has a 16-bit input.
    """
    from medfuse.api import fuse
    from medfuse.io.images import image_format, read_image, write_image

    started = time.perf_counter()
    if len(inputs) < 2:
        raise InputError(f"fuse-images needs at least two input images, got {len(inputs)}")
    image_format(output)
    _check_destination(output, inputs)
    if save_weights is not None:
        _check_weights_folder(save_weights)

    if preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    config = FusionConfig.preset(preset)
    overrides = {
        "rule": rule,
        "decision": decision,
        "envelope_clip": envelope_clip,
        "model": model,
        "depth": depth,
        "base_rule": base_rule,
        "detail_rule": detail_rule,
        "features_on": features_on,
        "decomposition": decomposition,
        "clip_detail_weights": clip_detail_weights,
        "detail_temperature": detail_temperature,
    }
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    if config.rule == "pyramid":
        # These only shape the two-scale rule: accepting them silently would
        # let a user believe they changed the result.
        ignored = [f"--{name.replace('_', '-')}" for name in _TWO_SCALE_OPTIONS if overrides[name] is not None]
        if ignored:
            raise InputError(f"{', '.join(ignored)} apply to the two-scale rule only; add --rule two-scale or --preset photo/paper")

    images = [read_image(path) for path in inputs]
    sixteen_bit = any(image.dtype.name == "uint16" for image in images)
    result = fuse(images, config=config)

    bit_depth = 16 if sixteen_bit and result.fused.ndim == 2 and 16 in image_format(output)[1] else 8
    if save_weights is not None:
        _write_weights(save_weights, result)
    write_image(output, result.fused, bit_depth=bit_depth)
    kind = "colour" if result.fused.ndim == 3 else "grey"
    height, width = result.fused.shape[:2]
    features = result.extractor_name or (config.decision if config.rule == "pyramid" else config.detail_rule)
    typer.echo(f"fused {len(inputs)} images ({width}x{height}, {kind}, {bit_depth}-bit, {features}) -> {output} "
               f"in {time.perf_counter() - started:.2f} s")


def _check_destination(output: Path, inputs: list[Path]) -> None:
    check_writable(output)
    target = output.resolve()
    for path in inputs:
        if path.exists() and path.resolve() == target:
            raise InputError(f"output {output} is also an input; choose another output path")


def _check_weights_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"cannot save weights to {folder}: not a folder")
    existing = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"cannot save weights to {folder}: {existing} is not writable")


def _write_weights(folder: Path, result) -> None:
    """16-bit PNG previews (clipped to [0, 1]) and the exact float32 weights in weights.npz."""
    import numpy as np

    from medfuse.io.images import write_image

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create {folder}: {exc.strerror or exc}") from None
    for label, weights in (("base", result.base_weights), ("detail", result.detail_weights)):
        for index, weight in enumerate(weights, start=1):
            write_image(folder / f"{label}_weight_{index}.png", np.clip(weight, 0.0, 1.0), bit_depth=16)
    with atomic_open(folder / "weights.npz", "wb") as stream:
        np.savez(stream, base=result.base_weights, detail=result.detail_weights)


def register(app: typer.Typer) -> None:
    """Add ``fuse-images`` to *app*."""
    app.command("fuse-images")(fuse_images)
