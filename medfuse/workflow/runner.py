"""One pass of a workflow: find candidate studies, fuse each once, deliver, summarise.

Crash safety and idempotency, step by step for one job (one study's input series):

1. The job's ledger key is derived from its input series UIDs, the
   workflow, the medfuse version and the parameters hash; a ``done`` key is
   never redone.
2. Every step is recorded in the ledger *before* its side effects can be
   seen: ``fetching`` → ``fusing`` → ``delivering`` (with the output series
   UID, i.e. the intent to push) → ``done``.
3. fuse-study is given the ledger key as ``uid_entropy``, so the fused
   series' UIDs are derived from it (``derived_uid(key, "series")`` and
   ``derived_uid(key, "instance", str(z))``) and a rerun after a crash at any
   point produces the very same series. Before storing, the PACS is asked how
   many instances of that series it already holds; a complete series is not
   sent again, a partial one is completed (same SOP Instance UIDs, so nothing
   is duplicated).
4. Folder outputs are written to a temporary sibling and renamed into place.
5. A failing job is recorded with its reason and retried on later runs until
   ``max_attempts``; it never stops the other jobs of the pass.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pydicom

from medfuse import __version__
from medfuse.atomic import run_folder_in_use
from medfuse.errors import MedfuseError, PacsError, WorkflowError, one_line, os_error_reason
from medfuse.io.dicom.write import derived_uid
from medfuse.workflow.config import Workflow, orientation_of
from medfuse.workflow.credentials import resolve_credentials
from medfuse.workflow.ledger import Ledger, job_key
from medfuse.workflow.lock import workflow_lock
from medfuse.workflow.loopguard import is_medfuse_output, is_medfuse_series_description
from medfuse.workflow.sources import RemoteSeries, Source, StudyCandidate, open_source


@dataclass(frozen=True)
class JobPlan:
    """What one job will fuse: the study, its fixed and moving candidate series, the ledger key.

    One candidate per role is the usual case: fuse-study is told both
    series. Several candidates (a repeated or a second matching series) are
    all fetched and fuse-study's :func:`medfuse.io.select.select_series`
    chooses among them by the workflow's rules (the largest axial series) or
    fails the job listing the tied candidates; the workflow never guesses.
    """

    candidate: StudyCandidate
    fixed: tuple[RemoteSeries, ...]
    moving: tuple[RemoteSeries, ...]
    key: str

    @property
    def by_rules(self) -> bool:
        """True when fuse-study chooses the pair among several candidates."""
        return len(self.fixed) > 1 or len(self.moving) > 1

    @property
    def series(self) -> list[RemoteSeries]:
        """Every input series, once each, by UID."""
        return sorted({s.series_uid: s for s in (*self.fixed, *self.moving)}.values(), key=lambda s: s.series_uid)

    @property
    def input_uids(self) -> list[str]:
        return [s.series_uid for s in self.series]


@dataclass
class RunSummary:
    """Counts of one pass (``outcomes`` maps study UID to its outcome)."""

    workflow: str
    dry_run: bool
    candidates: int = 0
    done: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_gave_up: int = 0
    held: int = 0
    not_matching: int = 0
    planned: list[dict] = field(default_factory=list)
    outcomes: dict = field(default_factory=dict)
    duration_s: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class StudyLog:
    """One line per study on *stream*: JSON or ``key=value`` text; PHI only when asked."""

    def __init__(self, stream: TextIO | None = None, *, json_lines: bool = False, log_phi: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.json_lines = json_lines
        self.log_phi = log_phi

    def study(self, workflow: str, candidate: StudyCandidate, outcome: str, duration_s: float, **extra) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": "study", "workflow": workflow,
                  "study_uid": candidate.study_uid, "outcome": outcome, "duration_s": round(duration_s, 3)}
        record.update({k: v for k, v in extra.items() if v not in (None, "")})
        if self.log_phi:
            record["patient_id"] = candidate.patient_id
            record["patient_name"] = candidate.patient_name
        self._emit(record)

    def summary(self, summary: RunSummary) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": "run", **{
            k: v for k, v in summary.to_dict().items() if k not in ("planned", "outcomes")}}
        self._emit(record)

    def _emit(self, record: dict) -> None:
        if self.json_lines:
            line = json.dumps(record, sort_keys=False)
        else:
            line = " ".join(f"{k}={_text(v)}" for k, v in record.items())
        print(line, file=self.stream, flush=True)


def _text(value) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() for c in text) or '"' in text) else text


# --------------------------------------------------------------------------- planning


def plan_jobs(workflow: Workflow, candidates: list[StudyCandidate], own_outputs: set[str]) -> tuple[list[JobPlan], int]:
    """Match each study's series to the workflow's fixed/moving rules.

    Series that are medfuse output (by description or because this
    workflow's ledger produced them) never count as inputs. A study whose
    rules allow more than one (fixed, moving) pair of distinct series is
    planned with every candidate, and fuse-study's selection decides or
    reports the ambiguity (see :class:`JobPlan`).

    Returns
    -------
    plans : list of JobPlan
    not_matching : int
        Studies without a distinct fixed and moving series.
    """
    plans, not_matching = [], 0
    for candidate in candidates:
        inputs = [s for s in candidate.series
                  if s.series_uid not in own_outputs and not is_medfuse_series_description(s.description)]
        fixed = [s for s in inputs if workflow.fixed.matches(s.modality, s.description, s.body_part, s.orientation)]
        moving = [s for s in inputs if workflow.moving.matches(s.modality, s.description, s.body_part, s.orientation)]
        pairs = [(f, m) for f in fixed for m in moving if f.series_uid != m.series_uid]
        if not pairs:
            not_matching += 1
            continue
        fixed = tuple(s for s in fixed if any(f is s for f, _ in pairs))
        moving = tuple(s for s in moving if any(m is s for _, m in pairs))
        if len(pairs) == 1:
            fixed, moving = (pairs[0][0],), (pairs[0][1],)
        uids = [s.series_uid for s in (*fixed, *moving)]
        key = job_key(candidate.study_uid, uids, workflow.name, __version__, workflow.parameters_hash)
        plans.append(JobPlan(candidate, fixed, moving, key))
    return plans, not_matching


# --------------------------------------------------------------------------- running


def run_workflow(workflow: Workflow, *, dry_run: bool = False, study_uid: str | None = None, wait_s: float = 0.0,
                 retry_failed: bool = False, log: StudyLog | None = None, source: Source | None = None,
                 scheduler: str | None = None, jobs: int | None = None, task_timeout_s: float = 3600.0) -> RunSummary:
    """Run one pass of *workflow* under its lock; return the summary.

    Parameters
    ----------
    workflow : Workflow
    dry_run : bool
        Query the source and report what would be done; fetch, fuse, store
        and record nothing.
    study_uid : str, optional
        Only consider this study (what the PACS trigger passes).
    wait_s : float
        How long to wait for another run of the same workflow to finish.
    retry_failed : bool
        Give studies that used up ``max_attempts`` a fresh set of attempts.
    log : StudyLog, optional
    source : Source, optional
        A connector to use instead of the one the workflow names.
    scheduler, jobs : optional
        Run the jobs as study-level Dask tasks on this scheduler, or on this
        many local worker processes (:mod:`medfuse.workflow.parallel`);
        neither: one after another in this process.
    task_timeout_s : float
        With ``scheduler``/``jobs``: how long one job may take before it is failed.
    """
    log = log or StudyLog()
    start = time.monotonic()
    summary = RunSummary(workflow.name, dry_run)
    with workflow_lock(workflow.state_dir, workflow.name, wait_s=wait_s):
        db = workflow.state_dir / "ledger.sqlite"
        # A dry run reads the ledger when there is one and never creates it.
        ledger = Ledger(db if (db.exists() or not dry_run) else Path(":memory:"))
        try:
            if not dry_run:
                sweep_abandoned_work(workflow.state_dir / "work")
            if source is None:
                credentials = resolve_credentials(workflow.source.get("auth"), workflow.path.resolve().parent)
                source = open_source(workflow.source_kind, workflow.source, credentials)
            query = {**workflow.query, "study_uid": study_uid} if study_uid else workflow.query
            candidates = [c for c in source.find_studies(query) if not study_uid or c.study_uid == study_uid]
            summary.candidates = len(candidates)
            plans, summary.not_matching = plan_jobs(workflow, candidates, ledger.output_series_uids())
            if (scheduler is None and jobs is None) or dry_run:
                for plan in plans:
                    _run_plan(plan, workflow, ledger, source, log, summary, dry_run, retry_failed)
            else:
                from medfuse.workflow.parallel import run_plans_on_dask

                admitted = [p for p in plans if _admit(p, workflow, ledger, log, summary, False, retry_failed)]
                run_plans_on_dask(admitted, workflow, ledger, log, summary, scheduler=scheduler, jobs=jobs,
                                  timeout_s=task_timeout_s)
        finally:
            ledger.close()
    summary.duration_s = round(time.monotonic() - start, 3)
    log.summary(summary)
    return summary


def sweep_abandoned_work(work_root: Path) -> list[Path]:
    """Remove the job folders a killed pass left in *work_root* (fetched images, fuse-study's scratch).

    Called under the workflow's lock, so no other pass of this workflow is
    running; a job folder is kept only while a fuse-study inside it still
    holds its scratch folder's lock (a job process that outlived its pass).
    Returns the folders removed.
    """
    removed = []
    if not work_root.is_dir():
        return removed
    for job in sorted(p for p in work_root.iterdir() if p.is_dir() and not p.is_symlink()):
        if any(run_folder_in_use(p) for p in job.glob(".output.fusion-*")):
            continue  # a live fuse-study's scratch folder
        shutil.rmtree(job, ignore_errors=True)
        removed.append(job)
    return removed


def _run_plan(plan: JobPlan, workflow: Workflow, ledger: Ledger, source: Source, log: StudyLog,
              summary: RunSummary, dry_run: bool, retry_failed: bool) -> None:
    if not _admit(plan, workflow, ledger, log, summary, dry_run, retry_failed):
        return
    study = plan.candidate.study_uid
    job = ledger.start_attempt(plan.key)
    started = time.monotonic()
    work = workflow.state_dir / "work" / plan.key[:24]
    try:
        outputs, series_uid = _process(plan, workflow, ledger, source, work)
    except Exception as exc:  # a poisoned study must not stop the others: record and go on
        shutil.rmtree(work, ignore_errors=True)  # no patient images left behind
        reason = _one_line(exc) if isinstance(exc, MedfuseError) else f"internal error: {type(exc).__name__}: {_one_line(exc)}"
        duration = time.monotonic() - started
        ledger.fail(plan.key, reason, duration)
        summary.failed += 1
        summary.outcomes[study] = "failed"
        log.study(workflow.name, plan.candidate, "failed", duration, attempt=job.attempts, reason=reason)
        return
    except BaseException as exc:  # Ctrl-C or SIGTERM (medfuse.cli.app): clean up, record the attempt, stop the pass
        shutil.rmtree(work, ignore_errors=True)
        ledger.fail(plan.key, f"interrupted ({type(exc).__name__})", time.monotonic() - started)
        raise
    duration = time.monotonic() - started
    if record_hold(plan, outputs, job.attempts, duration, workflow, ledger, log, summary):
        return
    ledger.finish(plan.key, outputs, duration)
    summary.done += 1
    summary.outcomes[study] = "done"
    log.study(workflow.name, plan.candidate, "done", duration, attempt=job.attempts, output_series_uid=series_uid)


def _admit(plan: JobPlan, workflow: Workflow, ledger: Ledger, log: StudyLog, summary: RunSummary, dry_run: bool,
           retry_failed: bool) -> bool:
    """Whether *plan* is to run now (its ledger row then exists); counts and logs the studies that are not."""
    job = ledger.get(plan.key)
    if job is not None and retry_failed and job.state == "failed" and not dry_run:
        job = ledger.reset_attempts(plan.key)
    study = plan.candidate.study_uid
    if job is not None and job.state == "done":
        summary.skipped_done += 1
        summary.outcomes[study] = "already-done"
        return False
    if job is not None and job.state == "held":
        summary.outcomes[study] = "held"
        return False
    if job is not None and job.state != "pending" and job.attempts >= workflow.max_attempts:
        summary.skipped_gave_up += 1
        summary.outcomes[study] = "gave-up"
        log.study(workflow.name, plan.candidate, "gave-up", 0.0, attempts=job.attempts, reason=job.reason)
        return False
    if dry_run:
        summary.planned.append({"study_uid": study, "fixed": [s.series_uid for s in plan.fixed],
                                "moving": [s.series_uid for s in plan.moving], "key": plan.key,
                                "attempts_so_far": job.attempts if job else 0})
        summary.outcomes[study] = "would-fuse"
        log.study(workflow.name, plan.candidate, "would-fuse", 0.0, fixed=" | ".join(s.description for s in plan.fixed),
                  moving=" | ".join(s.description for s in plan.moving), chosen_by="rules" if plan.by_rules else "")
        return False
    ledger.ensure(plan.key, workflow=workflow.name, study_uid=study, input_uids=plan.input_uids,
                  version=__version__, parameters_hash=workflow.parameters_hash)
    return True


def _one_line(exc: BaseException) -> str:
    return os_error_reason(exc) if isinstance(exc, OSError) else one_line(exc)


def _process(plan: JobPlan, workflow: Workflow, ledger: Ledger, source: Source, work: Path) -> tuple[dict, str]:
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted attempt left
    inputs = work / "input"
    if plan.by_rules:  # fuse-study's selection checks each candidate's orientation against the rules
        folders = [(f"series{i}", series, None) for i, series in enumerate(plan.series)]
    else:
        folders = [("fixed", plan.fixed[0], workflow.fixed.orientation),
                   ("moving", plan.moving[0], workflow.moving.orientation)]
    for name, series, orientation in folders:
        n = source.fetch_series(plan.candidate.study_uid, series.series_uid, inputs / name)
        dropped = drop_medfuse_output(inputs / name)
        if n - dropped <= 0:
            raise WorkflowError(f"{name} series {series.series_uid} has no images to fuse (medfuse output or empty)")
        check_orientation(inputs / name, name, orientation)
    ledger.advance(plan.key, "fusing")
    result = fuse_inputs(inputs, work / "output", workflow, plan)
    series_uid = output_series_uid(plan.key)
    if result.series_instance_uid != series_uid:
        raise WorkflowError(f"fuse-study wrote series {result.series_instance_uid}, not the UID derived from the "
                            f"job key ({series_uid})")
    held = hold_for_review(result, workflow, work / "output", plan)
    if held is not None:
        shutil.rmtree(work, ignore_errors=True)
        return held, series_uid
    files = sorted(p for p in Path(result.dicom_dir).iterdir() if p.is_file())
    ledger.advance(plan.key, "delivering", output_series_uid=series_uid, detail=f"{len(files)} instances")
    delivered: dict = {"output_series_uid": series_uid, "instances": len(files)}
    if workflow.outputs.get("folder"):
        delivered["folder"] = str(deliver_to_folder(work / "output", workflow, plan))
    if workflow.outputs.get("pacs"):
        delivered["pacs"] = push_idempotent(source, plan.candidate.study_uid, series_uid, files)
    shutil.rmtree(work, ignore_errors=True)
    return delivered, series_uid


def hold_for_review(result, workflow: Workflow, output: Path, plan: JobPlan) -> dict | None:
    """The job's outputs record when the fused study is held instead of delivered; None to deliver it.

    A study whose registration the alignment check doubts (``result.alignment_warnings``) is not
    stored or copied anywhere unless the workflow file says ``outputs.deliver_doubtful_registration:
    true``; its outputs are kept for review in ``<state_dir>/held/<key>/`` (provenance.json says why).
    """
    if not result.alignment_warnings or workflow.outputs.get("deliver_doubtful_registration"):
        return None
    review = workflow.state_dir / "held" / plan.key[:24]
    shutil.rmtree(review, ignore_errors=True)
    review.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.move(str(output), str(review))
    return {"held": "doubtful registration, not delivered: " + "; ".join(result.alignment_warnings),
            "review_folder": str(review)}


def record_hold(plan: JobPlan, outputs: dict, attempt: int, duration: float, workflow: Workflow, ledger: Ledger,
                log: StudyLog, summary: RunSummary) -> bool:
    """Record a held job (see :func:`hold_for_review`) in the ledger, summary and log; False when not held."""
    if "held" not in outputs:
        return False
    ledger.hold(plan.key, outputs["held"], outputs, duration)
    summary.held += 1
    summary.outcomes[plan.candidate.study_uid] = "held"
    log.study(workflow.name, plan.candidate, "held", duration, attempt=attempt, reason=outputs["held"])
    return True


def drop_medfuse_output(folder: Path) -> int:
    """Delete files in *folder* that are medfuse's own output (loop guard); return how many."""
    dropped = 0
    for file in sorted(folder.glob("*")):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:
            continue
        if is_medfuse_output(ds):
            file.unlink()
            dropped += 1
    return dropped


def check_orientation(folder: Path, role: str, wanted: str | None) -> None:
    """Refuse a retrieved series whose slice plane is not the rule's (when the query could not tell)."""
    if not wanted:
        return
    first = min(folder.glob("*"))
    found = orientation_of(pydicom.dcmread(first, stop_before_pixels=True).get("ImageOrientationPatient"))
    if found and found != wanted:
        raise WorkflowError(f"the {role} series is {found}, but select.{role}.orientation asks for {wanted}")


def study_options(workflow: Workflow, plan: JobPlan):
    """fuse-study's ``StudyOptions`` for one job: the workflow's ``fusion`` mapping plus the series or rules.

    With one candidate per role both series are given by UID; with several,
    the workflow's modality/description/orientation rules go to
    :func:`medfuse.io.select.select_series` (``body_part`` was applied when
    planning, from the query answers).
    """
    from medfuse.study.pipeline import StudyOptions
    from medfuse.workflow.config import nested_option_classes

    kwargs = dict(workflow.fusion)
    for key, cls in nested_option_classes().items():
        if isinstance(kwargs.get(key), dict):
            kwargs[key] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs[key].items()})
    formats = ("dicom", "nifti") if workflow.outputs.get("nifti") else ("dicom",)
    try:
        if plan.by_rules:
            rules = {role: {k: v for k, v in rule.to_dict().items() if k != "body_part"}
                     for role, rule in (("fixed", workflow.fixed), ("moving", workflow.moving))}
            return StudyOptions(rules=rules, formats=formats, uid_entropy=plan.key, **kwargs)
        return StudyOptions(fixed=plan.fixed[0].series_uid, moving=(plan.moving[0].series_uid,), formats=formats,
                            uid_entropy=plan.key, **kwargs)
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"{workflow.path}: fusion options rejected by fuse-study: {_one_line(exc)}") from exc


def fuse_inputs(inputs: Path, out_dir: Path, workflow: Workflow, plan: JobPlan):
    """Run fuse-study on the fetched series (``inputs/fixed`` and ``inputs/moving``, or ``inputs/series<i>``)."""
    from medfuse.study.pipeline import fuse_study

    return fuse_study(inputs, out_dir, study_options(workflow, plan))


def output_series_uid(key: str) -> str:
    """The fused series' UID for a ledger key: what fuse-study derives from ``uid_entropy=key``."""
    return str(derived_uid(key, "series"))


def deliver_to_folder(result_dir: Path, workflow: Workflow, plan: JobPlan) -> Path:
    """Copy the job's outputs to ``<outputs.folder>/<study UID>/<workflow>-<key>/``, atomically."""
    root = Path(workflow.outputs["folder"])
    final = root / plan.candidate.study_uid / f"{workflow.name}-{plan.key[:12]}"
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    ignore = None if workflow.outputs.get("nifti") else shutil.ignore_patterns("*.nii", "*.nii.gz")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(result_dir, tmp, ignore=ignore)
        if final.exists():  # a previous attempt got this far before it was stopped
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WorkflowError(f"cannot write outputs to {final}: {exc.strerror or exc}") from exc
    return final


def push_idempotent(source: Source, study_uid: str, series_uid: str, files: list[Path]) -> str:
    """Store the fused series into its study unless the PACS already holds all of it.

    Returns ``"stored"`` or ``"already-present"``. Raises ``PacsError`` when
    the PACS does not hold the whole series afterwards.
    """
    if not source.can_store:
        raise WorkflowError("outputs.pacs is set but the source cannot store")
    present = source.count_instances(study_uid, series_uid)
    if present >= len(files):
        return "already-present"
    source.store(study_uid, files)
    after = source.count_instances(study_uid, series_uid)
    if after < len(files):
        raise PacsError(f"PACS holds {after} of {len(files)} fused instances after storing series {series_uid}")
    return "stored"
