"""A workflow pass on Dask: each planned job is one study-level task; the ledger stays here.

:func:`run_plans_on_dask` hands the admitted jobs of a pass to a
:class:`~medfuse.study.cohort.executor.StudyExecutor` (an existing scheduler
or N local worker processes). Each task (:func:`run_job`, in a child process
of the worker with one thread and a time limit) opens the workflow's source
itself (credentials resolved on the worker: the same environment variable
or credentials file must exist there; a watched folder must be the same
path there), asks it for its study again, fetches the series, runs fuse-study
and delivers, exactly as the one-process pass does (:func:`medfuse.workflow.runner._process`).

**The ledger is written by this (the coordinating) process only.** The task
reports its steps as events (``fetching``, ``fusing``, ``delivering`` with the
output series UID), which arrive here and are committed before the outcome
is: ``fetching`` starts the attempt (a job waiting in Dask's queue is still
``pending`` and costs no attempt), the outcome finishes or fails it. Events
of a job whose outcome is already recorded are ignored.

Faults: a worker killed mid-job: Dask runs the task again on another worker;
its ``fetching`` event then counts a new attempt and records the previous one
as interrupted, and the delivery is idempotent (UIDs derived from the job
key; the PACS is asked before storing), so nothing is stored twice. A
scheduler that goes away: every started job is recorded as failed
(``interrupted (Dask scheduler lost)``, retried by the next pass) and the
pass stops with :class:`~medfuse.errors.WorkflowError`. Ctrl-C / SIGTERM: the
same, then the interruption goes on.
"""

from __future__ import annotations

import dataclasses
import shutil
import time

from medfuse.errors import WorkflowError, os_error_reason
from medfuse.study.cohort.executor import StudyExecutor
from medfuse.workflow.config import Workflow
from medfuse.workflow.ledger import IN_PROGRESS, Ledger
from medfuse.workflow.runner import JobPlan, RunSummary, StudyLog, _process, record_hold


def run_plans_on_dask(plans: list[JobPlan], workflow: Workflow, ledger: Ledger, log: StudyLog, summary: RunSummary,
                      *, scheduler: str | None, jobs: int | None, timeout_s: float) -> None:
    """Run *plans* (admitted: their ledger rows exist) as Dask tasks; record every outcome in *ledger*."""
    if not plans:
        return
    by_key = {plan.key: plan for plan in plans}
    attempts: dict[str, int] = {}  # jobs whose attempt has started in this pass -> attempt number
    open_keys = set(by_key)  # jobs whose outcome is not recorded yet
    started = time.monotonic()

    def on_event(event: dict) -> None:
        key, state = event.get("key"), event.get("state")
        if key not in open_keys:
            return  # late news of a job already recorded
        if state == "fetching":
            attempts[key] = ledger.start_attempt(key).attempts
        elif state in IN_PROGRESS:
            if key not in attempts:
                attempts[key] = ledger.start_attempt(key).attempts
            ledger.advance(key, state, output_series_uid=event.get("output_series_uid"),
                           detail=event.get("detail", ""))

    try:
        with StudyExecutor(scheduler=scheduler, jobs=jobs, timeout_s=timeout_s) as executor:
            for plan in plans:
                executor.submit(plan.key[:16], run_job, {"workflow": workflow, "plan": plan})
            names = {plan.key[:16]: plan.key for plan in plans}
            for name, outcome in executor.outcomes(on_event):
                key = names[name]
                if key not in attempts:  # the task ended before its first event arrived
                    attempts[key] = ledger.start_attempt(key).attempts
                open_keys.discard(key)
                _record(by_key[key], outcome, attempts[key], workflow, ledger, log, summary)
    except BaseException as exc:  # scheduler lost, Ctrl-C, SIGTERM: started jobs are interrupted attempts
        reason = "Dask scheduler lost" if isinstance(exc, WorkflowError) else type(exc).__name__
        for key in sorted(open_keys):
            job = ledger.get(key)
            if job is not None and job.state in IN_PROGRESS:
                ledger.fail(key, f"interrupted ({reason})", time.monotonic() - started)
        raise


def _record(plan: JobPlan, outcome: dict, attempt: int, workflow: Workflow, ledger: Ledger, log: StudyLog,
            summary: RunSummary) -> None:
    study, duration = plan.candidate.study_uid, outcome["seconds"]
    if outcome["ok"] and record_hold(plan, outcome["result"]["outputs"], attempt, duration, workflow, ledger, log,
                                     summary):
        return
    if outcome["ok"]:
        result = outcome["result"]
        ledger.finish(plan.key, result["outputs"], duration)
        summary.done += 1
        summary.outcomes[study] = "done"
        log.study(workflow.name, plan.candidate, "done", duration, attempt=attempt,
                  output_series_uid=result["series_uid"])
    else:
        ledger.fail(plan.key, outcome["message"], duration)
        summary.failed += 1
        summary.outcomes[study] = "failed"
        log.study(workflow.name, plan.candidate, "failed", duration, attempt=attempt, reason=outcome["message"])


class _EventLedger:
    """What :func:`~medfuse.workflow.runner._process` needs of a ledger, as events to the coordinator."""

    def __init__(self, emit) -> None:
        self._emit = emit

    def advance(self, key: str, state: str, *, output_series_uid: str | None = None, detail: str = "") -> None:
        self._emit(key=key, state=state, output_series_uid=output_series_uid, detail=detail)


def run_job(workflow: Workflow, plan: JobPlan, emit) -> dict:
    """One job on a worker (in a child process): fetch, fuse, deliver; report each step with *emit*."""
    from medfuse.workflow.credentials import resolve_credentials
    from medfuse.workflow.sources import open_source

    emit(key=plan.key, state="fetching")
    # One thread per study task: no Dask cluster of fuse-study's own inside a Dask task (the pixels are the
    # same whatever runs the fusion, and the job key was made from the workflow file's own settings).
    fusion = {k: v for k, v in workflow.fusion.items() if k not in ("workers", "scheduler")}
    workflow = dataclasses.replace(workflow, fusion={**fusion, "workers": 1})
    credentials = resolve_credentials(workflow.source.get("auth"), workflow.path.resolve().parent)
    source = open_source(workflow.source_kind, workflow.source, credentials)
    source.find_studies({**workflow.query, "study_uid": plan.candidate.study_uid})  # a folder source indexes here
    work = workflow.state_dir / "work" / plan.key[:24]
    try:
        work.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        outputs, series_uid = _process(plan, workflow, _EventLedger(emit), source, work)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)  # no patient images left behind
        if isinstance(exc, OSError):
            raise WorkflowError(os_error_reason(exc)) from exc
        raise
    return {"outputs": outputs, "series_uid": series_uid}

