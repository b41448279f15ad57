"""CLI: ``medfuse fuse-cohort ROOT -o OUT`` -- every study under a folder, one Dask task each (issue 15)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from medfuse.errors import InputError, WorkflowError


def register(app: typer.Typer) -> None:
    """Add ``fuse-cohort`` to *app*."""
    app.command("fuse-cohort")(fuse_cohort_command)


def fuse_cohort_command(
    root: Path = typer.Argument(..., help="Folder of studies (every study `medfuse scan` finds is one task)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: one sub-folder per study, cohort.csv."),
    scheduler: str = typer.Option(None, "--scheduler", help="Existing dask.distributed scheduler, e.g. tcp://host:8786."),
    jobs: int = typer.Option(None, "--jobs", min=1, help="Local worker processes (default: one per core; 1: no Dask)."),
    timeout: float = typer.Option(3600.0, "--timeout", min=1, help="Seconds one study may take before it is failed."),
    formats: str = typer.Option("dicom,nifti", "--format", help="Outputs per study, comma-separated: dicom, nifti."),
    window: str = typer.Option(None, "--window", help="CT window: brain, soft-tissue, bone, or C,W in HU."),
    report: bool = typer.Option(False, "--report", help="Also write each study's QC report report.html."),
    json_log: bool = typer.Option(False, "--json-log", help="One JSON line per study on stderr; the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary."),
) -> None:
    """Fuse every study under ROOT into OUT/<patient-or-study>/, as fuse-study writes it; resumable.

    A rerun skips the studies whose output is finished (checked by its
    provenance and input UIDs) and tries the others again. Exits 0 when no
    study failed, 8 when one did (each study's reason and exit code are in
    OUT/cohort.csv).
    """
    from medfuse.study.cohort.run import CohortOptions, run_cohort

    if quiet and json_log:
        raise InputError("--quiet and --json-log exclude each other")
    if scheduler is not None and jobs is not None:
        raise InputError("give either --scheduler or --jobs, not both")
    options = CohortOptions(formats=tuple(f.strip().lower() for f in formats.split(",") if f.strip()), window=window,
                            report=report, scheduler=scheduler, jobs=jobs, timeout_s=timeout)
    reporter = _Reporter("json" if json_log else "quiet" if quiet else "rich" if sys.stderr.isatty() else "plain")
    try:
        summary = run_cohort(root, out, options, on_outcome=reporter.outcome, on_start=reporter.start)
    finally:
        reporter.stop()
    if json_log:
        typer.echo(json.dumps({"event": "cohort", **summary.to_dict()}, sort_keys=True))
    else:
        _print_table(summary)
    failed = summary.count("failed")
    if failed:
        raise WorkflowError(f"{failed} of {summary.total} studies failed (reasons in {summary.out / 'cohort.csv'})")


class _Reporter:
    """Progress: a bar (done / failed / left, rate, ETA) on a terminal, else a line or JSON line per study."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._bar = self._task = None
        self._started = time.monotonic()
        self._to_run = self._seen = self._before = 0

    def start(self, summary, to_run: int) -> None:
        self._started, self._to_run, self._before = time.monotonic(), to_run, len(summary.outcomes)
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("studies"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                 TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("cohort", total=max(to_run, 1), counts=self._counts(summary))
        elif self.mode == "plain":
            print(f"medfuse: {summary.total} studies, {to_run} to fuse", file=sys.stderr, flush=True)

    def outcome(self, outcome, summary) -> None:
        self._seen += 1
        if self.mode == "json":
            print(json.dumps({"event": "study", "study": outcome.study, "status": outcome.status,
                              "seconds": round(outcome.seconds, 3), "reason": outcome.reason, "code": outcome.code,
                              **self._numbers(summary)}, sort_keys=True), file=sys.stderr, flush=True)
        elif self.mode == "plain":
            reason = f": {outcome.reason}" if outcome.reason and outcome.status == "failed" else ""
            print(f"medfuse: {outcome.study} {outcome.status} ({outcome.seconds:.1f} s){reason} "
                  f"[{self._counts(summary)}]", file=sys.stderr, flush=True)
        elif self._bar is not None and self._seen > self._before:
            self._bar.update(self._task, advance=1, counts=self._counts(summary))

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _numbers(self, summary) -> dict:
        ran = max(0, self._seen - self._before)  # studies run in this pass so far
        elapsed = time.monotonic() - self._started
        rate = ran / elapsed * 3600 if elapsed > 0 and ran else 0.0
        left = self._to_run - ran
        return {"done": summary.count("done"), "failed": summary.count("failed"), "left": left,
                "per_hour": round(rate, 1), "eta_s": round(left / rate * 3600, 1) if rate else None}

    def _counts(self, summary) -> str:
        n = self._numbers(summary)
        return f"done {n['done']} failed {n['failed']} left {n['left']} {n['per_hour']:.0f}/h"


def _print_table(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fuse-cohort: {summary.total} studies in {summary.seconds:.1f} s -> {summary.out}")
    for column in ("study", "status", "seconds", "reason"):
        table.add_column(column, overflow="fold")
    for o in sorted(summary.outcomes, key=lambda o: o.study):
        table.add_row(o.study, o.status, f"{o.seconds:.1f}", o.reason)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(f"done {summary.count('done')}, failed {summary.count('failed')}, "
                  f"skipped (finished before) {summary.count('skipped')}; {summary.out / 'cohort.csv'}")
