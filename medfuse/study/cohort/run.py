"""``fuse-cohort``: fuse every study under a folder, one Dask task per study, resumably.

One pass (:func:`run_cohort`):

1. scan the root (:mod:`medfuse.study.cohort.studies`) — no study: ``ScanError``;
2. check the output folder can be written, reach the executor (scheduler or
   local workers), only then create the output folder; take its lock
   (``OUT/.cohort.lock``: one pass per output folder at a time) and remove
   what a killed pass left (hidden partial and scratch folders);
3. skip the studies whose output is finished (:func:`~medfuse.study.cohort.studies.finished`),
   hand the others to the executor, each fused by :func:`fuse_one` in a child
   process with one thread, ``deterministic_uids`` and the cohort's options;
4. record each outcome as it arrives: the reporter's line or bar, and
   ``OUT/cohort.csv`` (study, status, seconds, reason, code), rewritten
   atomically after every study so that it is right even if the pass is killed.
   A study fused although the alignment check doubts its registration is
   ``done`` with the doubt as its reason (as in its provenance and report).

A study's failure is its row; it never stops the others, and the next pass
tries it again (with everything not finished). Outputs are fuse-study's
own, atomic per study: ``OUT/<name>/`` holds a complete result or nothing.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medfuse.atomic import atomic_open, check_folder_creatable
from medfuse.errors import InputError, WorkflowError, WriteError, os_error_reason
from medfuse.study.cohort.executor import StudyExecutor
from medfuse.study.cohort.studies import INPUT_LINKS, CohortStudy, find_studies, finished, link_inputs

CSV_COLUMNS = ("study", "status", "seconds", "reason", "code")


@dataclass(frozen=True)
class CohortOptions:
    """How every study of the cohort is fused, and where it runs.

    ``formats``, ``window``, ``report`` and ``saliency_scope`` are fuse-study's
    options (stored in ``OUT/cohort.json``); ``scheduler``/``jobs``/``timeout_s``
    as for :class:`~medfuse.study.cohort.executor.StudyExecutor`.
    """

    formats: tuple[str, ...] = ("dicom", "nifti")
    window: str | None = None
    report: bool = False
    saliency_scope: str = "volume"
    scheduler: str | None = None
    jobs: int | None = None
    timeout_s: float = 3600.0

    def fusion_settings(self) -> dict:
        return {"formats": list(self.formats), "window": self.window, "report": self.report,
                "saliency_scope": self.saliency_scope}


@dataclass
class StudyOutcome:
    study: str
    status: str  # done | failed | skipped (finished before this pass)
    seconds: float = 0.0
    reason: str = ""
    code: int = 0


@dataclass
class CohortSummary:
    out: Path
    total: int
    outcomes: list[StudyOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "total": self.total, "done": self.count("done"),
                "failed": self.count("failed"), "skipped": self.count("skipped"), "seconds": round(self.seconds, 3)}


def run_cohort(root: str | os.PathLike, out: str | os.PathLike, options: CohortOptions,
               on_outcome: Callable[[StudyOutcome, CohortSummary], None] | None = None,
               on_start: Callable[[CohortSummary, int], None] | None = None) -> CohortSummary:
    """Fuse every study under *root* into ``out/<name>/``; see the module doc.

    ``on_start(summary, to_run)`` is called once the work is known,
    ``on_outcome(outcome, summary)`` after each study (skipped ones included).
    """
    from medfuse.study.pipeline import StudyOptions

    root, out = Path(root).resolve(), Path(out).resolve()
    StudyOptions(formats=options.formats, window=options.window, saliency_scope=options.saliency_scope)  # checks
    if out == root or out.is_relative_to(root):
        raise InputError(f"the output folder {out} must not be inside the cohort folder {root}")
    studies = find_studies(root)
    if out.exists() and not out.is_dir():
        raise WriteError(f"cannot write {out}: it is not a folder")
    check_folder_creatable(out / "cohort.csv")
    started = time.monotonic()
    with StudyExecutor(scheduler=options.scheduler, jobs=options.jobs, timeout_s=options.timeout_s) as executor:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot create {out}: {os_error_reason(exc)}") from exc
        with _lock(out):
            _check_settings(out, options)
            _remove_leftovers(out)
            summary = CohortSummary(out, len(studies))
            to_run = []
            for study in studies:
                reason = finished(out / study.name, study, options.formats, options.report)
                if reason is None:
                    summary.outcomes.append(StudyOutcome(study.name, "skipped", reason="finished before"))
                elif reason == "missing":
                    to_run.append(study)
                else:
                    summary.outcomes.append(StudyOutcome(study.name, "failed", reason=reason, code=6))
            if on_start is not None:
                on_start(summary, len(to_run))
            for outcome in list(summary.outcomes):
                _record(out, summary, outcome, on_outcome, append=False)
            for study in to_run:
                executor.submit(study.name, fuse_one, {
                    "input_dir": str(link_inputs(study, out)), "out_dir": str(out / study.name), "study": study,
                    "settings": options.fusion_settings()})
            for name, result in executor.outcomes():
                if result["ok"]:
                    doubts = result["result"].get("alignment_warnings") or []
                    outcome = StudyOutcome(name, "done", result["seconds"],
                                           "registration doubtful: " + "; ".join(doubts) if doubts else "")
                else:
                    outcome = StudyOutcome(name, "failed", result["seconds"], result["message"], result["exit_code"])
                shutil.rmtree(out / INPUT_LINKS / name, ignore_errors=True)
                _record(out, summary, outcome, on_outcome)
            _remove_leftovers(out)
    summary.seconds = time.monotonic() - started
    return summary


def fuse_one(input_dir: str, out_dir: str, study: CohortStudy, settings: dict, emit) -> dict:
    """One study's task (in a child process): fuse-study with one worker thread into *out_dir*.

    A finished output already there (a rescheduled task whose first run got
    that far) is kept and reported as done.
    """
    from medfuse.errors import WriteError as _WriteError
    from medfuse.study.pipeline import StudyOptions, fuse_study

    started = time.monotonic()
    out = Path(out_dir)
    formats, report = tuple(settings["formats"]), settings["report"]
    if finished(out, study, formats, report) is None:
        return {"seconds": 0.0, "already": True}
    emit(state="fusing", study=study.name)
    options = StudyOptions(workers=1, deterministic_uids=True, formats=formats, window=settings["window"],
                           report=report, saliency_scope=settings["saliency_scope"])
    try:
        result = fuse_study(input_dir, out, options)
    except _WriteError:
        if finished(out, study, formats, report) is None:  # another run of this task finished first
            return {"seconds": round(time.monotonic() - started, 3), "already": True}
        raise
    return {"seconds": round(time.monotonic() - started, 3), "series_uid": result.series_instance_uid,
            "alignment_warnings": list(result.alignment_warnings)}


def _record(out: Path, summary: CohortSummary, outcome: StudyOutcome, on_outcome, append: bool = True) -> None:
    if append:
        summary.outcomes.append(outcome)
    _write_csv(out, summary)
    if on_outcome is not None:
        on_outcome(outcome, summary)


def _write_csv(out: Path, summary: CohortSummary) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for o in sorted(summary.outcomes, key=lambda o: o.study):
        row = asdict(o)
        writer.writerow([row["study"], row["status"], f"{row['seconds']:.2f}", row["reason"], row["code"]])
    try:
        with atomic_open(out / "cohort.csv", "w", encoding="utf-8") as handle:
            handle.write(text.getvalue())
    except OSError as exc:
        raise WriteError(f"cannot write {out / 'cohort.csv'}: {os_error_reason(exc)}") from exc


def _check_settings(out: Path, options: CohortOptions) -> None:
    """Record the cohort's fusion options in ``OUT/cohort.json``, or refuse other ones than recorded."""
    path = out / "cohort.json"
    wanted = options.fusion_settings()
    if path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WriteError(f"cannot read {path}: {exc}") from exc
        if recorded != wanted:
            raise InputError(f"{out} holds a cohort fused with other options ({recorded}, now {wanted}); "
                             "use another output folder")
        return
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(wanted, handle, sort_keys=True)


def _remove_leftovers(out: Path) -> None:
    """Remove hidden partial/scratch folders and input links a killed pass left (under the lock)."""
    for path in out.iterdir():
        if path.name.startswith(".") and (".partial-" in path.name or ".fusion-" in path.name):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(out / INPUT_LINKS, ignore_errors=True)


class _lock:
    """An exclusive ``fcntl`` lock on ``OUT/.cohort.lock`` (released by the kernel if the pass dies)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".cohort.lock"
        self.handle = None

    def __enter__(self) -> None:
        self.handle = open(self.path, "a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.handle.close()
            raise WorkflowError(f"another fuse-cohort pass is writing to {self.path.parent}") from exc

    def __exit__(self, *exc_info) -> None:
        self.handle.close()
