"""CLI: ``medfuse fuse-study`` and ``medfuse fuse-volumes`` -- the main job (issue 5)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medfuse.errors import InputError


def register(app: typer.Typer) -> None:
    """Add ``fuse-study`` and ``fuse-volumes`` to *app*."""
    app.command("fuse-study")(fuse_study_command)
    app.command("fuse-volumes")(fuse_volumes_command)


_OUT = typer.Option(..., "-o", "--out", help="Output folder (created; must not exist or be empty).")
_WINDOW = typer.Option(None, "--window", help="CT window: brain, soft-tissue, bone, or C,W in HU.")
_WORKERS = typer.Option(None, "--workers", min=1, help="Local Dask worker processes (default: one per core; 1 = in-process).")
_SCHEDULER = typer.Option(None, "--scheduler", help="Existing dask.distributed scheduler, e.g. tcp://host:8786.")
_FORMAT = typer.Option(None, "--format", help="Outputs, comma-separated: dicom, nifti (default: both when an input "
                                               "is a DICOM CT or MR series, else nifti).")
_REPORT = typer.Option(False, "--report", help="Also write the QC report report.html.")
_COLOUR = typer.Option(False, "--colour", "--color",
                       help="Also write an RGB Secondary Capture series: CT/MR fused with PET/SPECT in the "
                            "HOT_IRON palette (dicom_colour/).")
_SCOPE = typer.Option("volume", "--saliency-scope",
                      help="Two-scale rule (--preset paper/photo) only: saliency histograms per whole volume or per slice.")
_PRESET = typer.Option("default", "--preset",
                       help="Fusion configuration: default (medfuse's pyramid rule, chosen on medical images in "
                            "docs/metrics.md), paper (the paper's two-scale method exactly), photo (two-scale, "
                            "medfuse's previous default).")
_DETERMINISTIC = typer.Option(False, "--deterministic-uids",
                              help="Derive output UIDs from inputs, options and version (idempotent re-runs).")
_UID_ENTROPY = typer.Option(None, "--uid-entropy",
                            help="Derive output UIDs from this text (e.g. a job key): same text, same UIDs.")
_QUIET = typer.Option(False, "--quiet", "-q", help="Print only the output locations.")
_JSON_LOG = typer.Option(False, "--json-log", help="Progress as JSON lines on stderr; the result as JSON on stdout.")
_STRICT = typer.Option(False, "--strict", help="Write nothing and exit with 9 when the alignment check doubts a "
                                               "registration (default: write, and warn).")


def fuse_study_command(
    patient_dir: Path = typer.Argument(..., help="Patient folder of DICOM files (searched recursively)."),
    out: Path = _OUT,
    fixed: str = typer.Option(None, "--fixed", help="Fixed series: SeriesNumber or SeriesInstanceUID."),
    moving: list[str] = typer.Option(None, "--moving", help="Moving series (repeatable): SeriesNumber or UID."),
    window: str = _WINDOW,
    workers: int = _WORKERS,
    scheduler: str = _SCHEDULER,
    formats: str | None = _FORMAT,
    report: bool = _REPORT,
    colour: bool = _COLOUR,
    saliency_scope: str = _SCOPE,
    preset: str = _PRESET,
    deterministic_uids: bool = _DETERMINISTIC,
    uid_entropy: str = _UID_ENTROPY,
    quiet: bool = _QUIET,
    json_log: bool = _JSON_LOG,
    strict: bool = _STRICT,
) -> None:
    """Fuse the series of a patient folder into a new series of the same study."""
    from medfuse.study.pipeline import fuse_study

    options = _options(fixed=fixed, moving=tuple(moving or ()), window=window, workers=workers, scheduler=scheduler,
                       formats=formats, report=report, colour_series=colour, saliency_scope=saliency_scope,
                       preset=preset, deterministic_uids=deterministic_uids, uid_entropy=uid_entropy, quiet=quiet,
                       json_log=json_log, strict=strict)
    _print_result(fuse_study(patient_dir, out, options), json_log)


def fuse_volumes_command(
    volumes: list[Path] = typer.Argument(..., help="Two or more NIfTI files or DICOM series folders; the first is fixed."),
    out: Path = _OUT,
    window: str = _WINDOW,
    workers: int = _WORKERS,
    scheduler: str = _SCHEDULER,
    formats: str | None = _FORMAT,
    report: bool = _REPORT,
    colour: bool = _COLOUR,
    saliency_scope: str = _SCOPE,
    preset: str = _PRESET,
    deterministic_uids: bool = _DETERMINISTIC,
    uid_entropy: str = _UID_ENTROPY,
    quiet: bool = _QUIET,
    json_log: bool = _JSON_LOG,
    strict: bool = _STRICT,
) -> None:
    """Fuse explicitly given volumes (K >= 2) onto the first one's grid."""
    from medfuse.study.pipeline import fuse_volumes

    options = _options(window=window, workers=workers, scheduler=scheduler, formats=formats, report=report,
                       colour_series=colour, saliency_scope=saliency_scope, preset=preset,
                       deterministic_uids=deterministic_uids,
                       uid_entropy=uid_entropy, quiet=quiet, json_log=json_log, strict=strict)
    _print_result(fuse_volumes(volumes, out, options), json_log)


def _options(*, formats: str | None, quiet: bool, json_log: bool, preset: str, **kw):
    from medfuse.core.config import FusionConfig
    from medfuse.study.pipeline import StudyOptions
    from medfuse.study.progress import Progress, auto_mode

    if quiet and json_log:
        raise InputError("--quiet and --json-log exclude each other")
    chosen = None if formats is None else tuple(f.strip().lower() for f in formats.split(",") if f.strip())
    return StudyOptions(formats=chosen, progress=Progress(auto_mode(quiet=quiet, json_log=json_log)),
                        fusion=FusionConfig.preset(preset), **kw)


def _print_result(result, json_log: bool) -> None:
    outputs = {
        "out_dir": result.out_dir, "dicom": result.dicom_dir, "nifti": result.nifti_path,
        "provenance": result.provenance_path, "report": result.report_path, "colour": result.colour_dir,
        "series_instance_uid": result.series_instance_uid,
    }
    if json_log:  # the doubts are JSON too: "info" events on stderr, alignment_warnings in the result
        typer.echo(json.dumps({k: (str(v) if v is not None else None) for k, v in outputs.items()}
                              | {"timings_s": result.timings, "alignment_warnings": result.alignment_warnings},
                              sort_keys=True))
        return
    _warn_doubtful(result.alignment_warnings)
    typer.echo(f"fused outputs in {result.out_dir}/")
    for name in ("dicom", "colour", "nifti", "provenance", "report"):
        if outputs[name] is not None:
            typer.echo(f"  {name:<10} {outputs[name]}")


def _warn_doubtful(warnings: list[str]) -> None:
    """Say a doubtful registration on stderr, ``--quiet`` too: it must not pass unseen (``--json-log``: as JSON)."""
    if not warnings:
        return
    typer.secho("medfuse: WARNING: DOUBTFUL REGISTRATION -- check the alignment before using these outputs "
                "(recorded in provenance.json; --strict refuses such runs):", err=True, fg="red", bold=True)
    for warning in warnings:
        typer.secho(f"medfuse: WARNING:   {warning}", err=True, fg="red")
