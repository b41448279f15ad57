"""CLI: ``medfuse convert INPUT -o out.nii.gz`` — DICOM series or NIfTI to NIfTI (issue 4)."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.errors import InputError


def register(app: typer.Typer) -> None:
    """Add ``convert`` to *app*."""
    app.command("convert")(convert_command)


def convert_command(
    source: Path = typer.Argument(..., help="DICOM series folder, DICOM file, or NIfTI file."),
    output: Path = typer.Option(..., "-o", "--output", help="Output .nii or .nii.gz."),
    volume_index: int = typer.Option(None, "--volume-index", help="0-based volume of a 4-D input."),
    series: str = typer.Option(None, "--series", help="Series number or UID when the folder holds several."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Write one 3-D volume as NIfTI (RAS affine); NaN/Inf voxels are reported and replaced."""
    from medfuse.io.dicom.index import scan_folder
    from medfuse.io.dicom.read import read_series
    from medfuse.io.nifti import is_nifti_path, write_nifti
    from medfuse.io.select import find_series
    from medfuse.io.volumes import load_volume, replace_non_finite

    if not is_nifti_path(output):
        raise InputError(f"{output}: output must end in .nii or .nii.gz")
    if output.exists() and not overwrite:
        raise InputError(f"{output}: exists; pass --overwrite to replace it")
    if series is not None:
        volume = read_series(find_series(scan_folder(source), series), volume_index=volume_index)
    else:
        volume = load_volume(source, volume_index=volume_index)
    volume, report = replace_non_finite(volume)
    if report.total:
        typer.echo(f"medfuse: warning: {report.message()}", err=True)
    write_nifti(volume, output)
    x, y, z = volume.image.GetSize()
    spacing = "x".join(f"{s:.4g}" for s in volume.image.GetSpacing())
    typer.echo(f"wrote {output} ({x}x{y}x{z}, {spacing} mm) from {volume.label}")
