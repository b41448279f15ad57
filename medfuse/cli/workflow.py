"""CLI: ``medfuse workflow validate|run|status`` — scheduled fusion jobs (issue 6)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import typer

from medfuse.errors import WorkflowError

workflow_app = typer.Typer(
    name="workflow",
    help="Scheduled workflows: find studies in a folder or PACS, fuse each once, deliver the result.",
    no_args_is_help=True,
)


@workflow_app.command("validate")
def validate(file: Path = typer.Argument(..., help="Workflow YAML file.")) -> None:
    """Check a workflow file; print what it does or the first problem with its line."""
    from medfuse.workflow.config import load_workflow

    wf = load_workflow(file)
    target = ", ".join(k for k in ("folder", "nifti", "pacs") if wf.outputs.get(k)) or "nothing"
    typer.echo(f"{file}: valid workflow '{wf.name}' — source {wf.source_kind}, "
               f"fixed {wf.fixed.to_dict()}, moving {wf.moving.to_dict()}, outputs {target}, "
               f"schedule {wf.schedule or 'none'}, state {wf.state_dir}")


@workflow_app.command("run")
def run(
    file: Path = typer.Argument(..., help="Workflow YAML file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Query the source and list what would be fused; change nothing."),
    study: str = typer.Option(None, "--study", help="Only this StudyInstanceUID (used by the PACS trigger)."),
    wait: float = typer.Option(0.0, "--wait", min=0, help="Seconds to wait for a running pass of this workflow."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Give studies that used up their attempts new ones."),
    json_logs: bool = typer.Option(False, "--json", help="One JSON object per line instead of key=value text."),
    log_phi: bool = typer.Option(False, "--log-phi", help="Include patient ID and name in log lines."),
    scheduler: str = typer.Option(None, "--scheduler", help="Run the studies as tasks on this Dask scheduler "
                                  "(tcp://host:8786); the ledger stays with this process."),
    jobs: int = typer.Option(None, "--jobs", min=1, help="Run the studies on this many local Dask worker processes."),
    task_timeout: float = typer.Option(3600.0, "--task-timeout", min=1,
                                       help="With --scheduler/--jobs: seconds one study may take before it fails."),
) -> None:
    """Run one pass: find candidate studies, fuse each once, deliver, print a summary.

    Exits 0 when every study of the pass succeeded (or nothing was to do),
    8 when at least one failed (recorded in the ledger, retried next run).
    """
    from medfuse.workflow.config import load_workflow
    from medfuse.workflow.runner import StudyLog, run_workflow

    if scheduler is not None and jobs is not None:
        raise WorkflowError("give either --scheduler or --jobs, not both")
    wf = load_workflow(file)
    summary = run_workflow(wf, dry_run=dry_run, study_uid=study, wait_s=wait, retry_failed=retry_failed,
                           log=StudyLog(json_lines=json_logs, log_phi=log_phi), scheduler=scheduler, jobs=jobs,
                           task_timeout_s=task_timeout)
    if summary.held:
        typer.secho(f"medfuse: WARNING: {summary.held} studies held for review (doubtful registration, not delivered); "
                    f"see medfuse workflow status {file}", err=True, fg="red", bold=True)
    if summary.failed:
        raise WorkflowError(
            f"{summary.failed} of {summary.done + summary.failed} studies fused in this pass failed in workflow '{wf.name}' "
            f"(reasons: medfuse workflow status {file})"
        )


@workflow_app.command("status")
def status(
    file: Path = typer.Argument(..., help="Workflow YAML file."),
    json_out: bool = typer.Option(False, "--json", help="Print the ledger as JSON."),
) -> None:
    """Show what the workflow did: each study, its state, attempts, when, and why it failed or is held."""
    from medfuse.workflow.config import load_workflow
    from medfuse.workflow.ledger import Ledger

    wf = load_workflow(file)
    db = wf.state_dir / "ledger.sqlite"
    if not db.exists():
        typer.echo(f"workflow '{wf.name}' has not run yet (no ledger at {db})")
        return
    with Ledger(db) as ledger:
        jobs = ledger.jobs()
    if json_out:
        typer.echo(json.dumps([{**j.__dict__, "input_uids": list(j.input_uids)} for j in jobs], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"workflow {wf.name} — {len(jobs)} job(s), ledger {db}")
    for column in ("study", "state", "tries", "updated (UTC)", "seconds", "fused series / reason"):
        table.add_column(column)
    for j in jobs:
        when = _dt.datetime.fromtimestamp(j.updated, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        detail = j.reason if j.state in ("failed", "held") else j.output_series_uid
        seconds = f"{j.duration_s:.1f}" if j.duration_s is not None else ""
        table.add_row(j.study_uid, j.state, f"{j.attempts}/{wf.max_attempts}", when, seconds, detail)
    Console(width=200).print(table)


def register(app: typer.Typer) -> None:
    """Add the ``workflow`` command group to *app*."""
    app.add_typer(workflow_app, name="workflow")
