"""CLI: ``medfuse register FIXED MOVING -o moved.nii.gz`` — bring MOVING onto FIXED's grid (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medfuse.errors import InputError


def register(app: typer.Typer) -> None:
    """Add ``register`` to *app*."""
    app.command("register")(register_command)


def register_command(
    fixed: Path = typer.Argument(..., help="Fixed volume: DICOM series folder or NIfTI file (its grid is kept)."),
    moving: Path = typer.Argument(..., help="Moving volume: DICOM series folder or NIfTI file."),
    output: Path = typer.Option(..., "-o", "--output", help="Moving volume resampled onto the fixed grid (.nii/.nii.gz)."),
    transform_out: Path = typer.Option(None, "--transform", help="Write the transform (.tfm, ITK: fixed -> moving points)."),
    transform_in: Path = typer.Option(None, "--transform-in", help="Re-apply a saved .tfm instead of registering."),
    affine: bool = typer.Option(False, "--affine", help="Add an affine stage after the rigid one."),
    initialization: str = typer.Option("auto", "--init", help="auto, geometry, moments or none (world coordinates)."),
    interpolation: str = typer.Option("linear", "--interpolation", help="linear, bspline, or nearest (label maps)."),
    coverage_out: Path = typer.Option(None, "--coverage", help="Write the mask of where moving data exist (.nii/.nii.gz)."),
    overlay: Path = typer.Option(None, "--overlay", help="Write a checkerboard/edge overlay PNG of three mid-slices."),
    threads: int = typer.Option(1, "--threads", help="ITK threads; 1 is bit-reproducible, 0 uses all cores."),
    as_json: bool = typer.Option(False, "--json", help="Print the registration report as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Register MOVING to FIXED (rigid Mattes MI, optionally affine) and resample it onto FIXED's grid.

    Same FrameOfReferenceUID: no optimisation, resampling only (the report says so).
    """
    from medfuse.io.images import write_image
    from medfuse.io.nifti import is_nifti_path, write_nifti
    from medfuse.io.volumes import load_volume
    from medfuse.volume.overlay import registration_overlay
    from medfuse.volume.registration import RegistrationConfig, evaluate_transform, register
    from medfuse.volume.resampling import resample_onto
    from medfuse.volume.transforms import read_transform, write_transform

    _check_outputs(output, transform_out, coverage_out, overlay, overwrite, is_nifti_path)
    config = RegistrationConfig(
        initialization=initialization, affine=affine, interpolation=interpolation, threads=threads
    )
    given = read_transform(transform_in) if transform_in is not None else None
    fixed_volume = load_volume(fixed)
    moving_volume = load_volume(moving)
    if given is not None:
        result = evaluate_transform(fixed_volume, moving_volume, given, config)
    else:
        result = register(fixed_volume, moving_volume, config)
    moved, coverage = resample_onto(
        fixed_volume, moving_volume, result.transform, interpolation=config.interpolation,
        default_value=config.default_value,
    )

    written = {"moved": str(write_nifti(moved, output))}
    if transform_out is not None:
        written["transform"] = str(write_transform(result.transform, transform_out))
    if coverage_out is not None:
        written["coverage"] = str(write_nifti(coverage, coverage_out))
    if overlay is not None:
        written["overlay"] = str(write_image(overlay, registration_overlay(fixed_volume.image, moved.image, coverage)))

    report = result.to_dict()
    report["fixed"] = fixed_volume.label or str(fixed)
    report["moving"] = moving_volume.label or str(moving)
    report["outputs"] = written
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in _summary_lines(result, report):
        typer.echo(line)
    for warning in result.warnings:
        typer.echo(f"medfuse: warning: {warning}", err=True)


def _check_outputs(output, transform_out, coverage_out, overlay, overwrite, is_nifti_path) -> None:
    """Refuse bad or existing output paths before any work is done."""
    if not is_nifti_path(output):
        raise InputError(f"{output}: output must end in .nii or .nii.gz")
    if coverage_out is not None and not is_nifti_path(coverage_out):
        raise InputError(f"{coverage_out}: coverage mask must end in .nii or .nii.gz")
    if transform_out is not None and transform_out.suffix.lower() not in (".tfm", ".txt"):
        raise InputError(f"{transform_out}: transform file must end in .tfm")
    if overlay is not None and overlay.suffix.lower() != ".png":
        raise InputError(f"{overlay}: overlay must end in .png")
    paths = [p for p in (output, transform_out, coverage_out, overlay) if p is not None]
    if len({p.resolve() for p in paths}) != len(paths):
        raise InputError("output paths must differ from each other")
    for path in paths:
        if path.exists() and not overwrite:
            raise InputError(f"{path}: exists; pass --overwrite to replace it")
        if not path.parent.is_dir():
            raise InputError(f"{path}: folder {path.parent} does not exist")


def _summary_lines(result, report: dict) -> list[str]:
    summary = result.summary
    lines = []
    if result.optimised:
        levels = ", ".join(
            f"{level.stage} 1/{level.shrink_factor}: {level.iterations} it {level.seconds:.1f} s" for level in result.levels
        )
        lines.append(f"registered ({result.initialization} initialisation) in {result.seconds:.1f} s: {levels}")
    else:
        lines.append(f"no optimisation: {result.reason}")
    lines.append(
        f"Mattes MI {result.metric_before:.4f} -> {result.metric_after:.4f} (lower is better); "
        f"rotation {summary.rotation_angle_deg:.2f} deg "
        f"(x {summary.rotation_deg[0]:.2f}, y {summary.rotation_deg[1]:.2f}, z {summary.rotation_deg[2]:.2f}), "
        f"translation {summary.translation_norm_mm:.2f} mm "
        f"({', '.join(f'{t:.2f}' for t in summary.translation_mm)})"
    )
    for name, path in report["outputs"].items():
        lines.append(f"wrote {name}: {path}")
    return lines
