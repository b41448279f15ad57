"""CLI: ``medfuse scan DIR`` — index a DICOM folder and judge every series (issue 4)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medfuse.errors import ScanError


def register(app: typer.Typer) -> None:
    """Add ``scan`` to *app*."""
    app.command("scan")(scan_command)


def scan_command(
    folder: Path = typer.Argument(..., help="Folder to index (recursively), or one DICOM file."),
    as_json: bool = typer.Option(False, "--json", help="Print the index as JSON instead of a table."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Show patient IDs unmasked."),
) -> None:
    """List studies and series with their usability verdict; skipped files are named with the reason."""
    from medfuse.io.dicom.index import scan_folder
    from medfuse.io.dicom.series import mask_identifier, skipped_note

    index = scan_folder(folder)
    if as_json:
        typer.echo(json.dumps(index.to_dict(show_phi=show_phi), indent=2))
    else:
        _print_table(index, show_phi, mask_identifier)
    if not index.series:
        raise ScanError(f"{folder}: no DICOM series found{skipped_note(index) or ' (no files)'}")


def _print_table(index, show_phi: bool, mask) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 160))
    table = Table(title=f"DICOM series under {index.root}")
    for column in ("patient", "date", "mod", "#", "description", "inst/frames", "dims", "spacing mm",
                   "orient", "verdict"):
        table.add_column(column, overflow="fold")
    for series in index.series:
        patient = series.patient_id if show_phi else mask(series.patient_id)
        dims = "x".join(str(d) for d in series.dimensions) if series.volumes else "-"
        spacing = "x".join(f"{s:.3g}" for s in series.spacing) if series.volumes else "-"
        verdict = "usable" if series.usable else f"[red]{series.reason}[/red]"
        if series.split_rule:
            verdict += f" (split by {series.split_rule}: {series.split_value})"
        if series.notes:
            verdict += f" ({'; '.join(series.notes)})"
        table.add_row(patient, series.study_date, series.modality,
                      "" if series.series_number is None else str(series.series_number),
                      series.series_description, f"{series.n_instances}/{series.n_frames}", dims, spacing,
                      series.orientation, verdict)
    console.print(table)
    for path, reason in index.skipped:
        console.print(f"skipped {path}: {reason}", highlight=False, markup=False)
