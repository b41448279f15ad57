"""Where study tasks run: an existing Dask scheduler, N local worker processes, or inline.

:class:`StudyExecutor` hands each task (one study) to Dask as one task,
``pure=False`` and with a key of its own, and yields the outcomes as they
come back; the coordinating process is the only one that records them. The
task itself (:func:`run_study_task`) runs the study in a child process with a
time limit (:mod:`medfuse.study.cohort.child`), so a worker thread is one
study at a time and a hung study cannot hold it.

Faults:

* a worker that dies (SIGKILL, OOM) mid-study: the scheduler gives its
  running tasks to other workers (dask's ``allowed-failures``, 3 by default;
  a study that kills its workers more often comes back as failed);
* a scheduler that cannot be reached, or that disappears during the run:
  :class:`~medfuse.errors.WorkflowError` with the address, and the caller
  records the tasks in flight as interrupted.

Events: a task may report progress (``emit(state=...)`` in the child); they
travel as Dask worker events (``Worker.log_event``) on a topic of this
executor and are handed to the caller's ``on_event`` in the coordinating
thread, between outcomes.
"""

from __future__ import annotations

import logging
import queue
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager

from medfuse.errors import MedfuseError, WorkflowError, one_line
from medfuse.study.cohort.child import run_in_child
from medfuse.volume.dispatch import default_workers
from medfuse.volume.local_cluster import LocalWorkers

#: Seconds to wait for an external scheduler to answer.
CONNECT_TIMEOUT_S = 5


def run_study_task(function: Callable, kwargs: dict, timeout_s: float, topic: str | None) -> dict:
    """A Dask task (or an inline call): run ``function`` in a child process; the outcome as a dict.

    Returns ``{"ok": True, "result": ..., "seconds": ...}`` or
    ``{"ok": False, "kind": ..., "message": ..., "exit_code": ..., "seconds": ...}``
    (never raises for the study's own failure, so a failed study is not
    retried by Dask: retries are the caller's decision).
    """
    on_event = None
    if topic is not None:
        from distributed import get_worker

        worker = get_worker()

        def on_event(event: dict) -> None:
            worker.log_event(topic, event)
    return _run_timed(function, kwargs, timeout_s, on_event)


def _run_timed(function: Callable, kwargs: dict, timeout_s: float, on_event) -> dict:
    started = time.monotonic()
    try:
        outcome = {"ok": True, "result": run_in_child(function, kwargs, timeout_s, on_event)}
    except MedfuseError as exc:
        outcome = {"ok": False, "kind": type(exc).__name__, "message": one_line(exc), "exit_code": exc.exit_code}
    return {**outcome, "seconds": round(time.monotonic() - started, 3)}


class StudyExecutor:
    """Runs study tasks and yields their outcomes; a context manager.

    Parameters
    ----------
    scheduler : str, optional
        ``tcp://host:port`` of a running dask scheduler with workers.
    jobs : int, optional
        Local worker processes (default one per core); 1 runs the tasks one
        after another from this process, without Dask.
    timeout_s : float
        Each task's time limit.
    """

    def __init__(self, *, scheduler: str | None = None, jobs: int | None = None, timeout_s: float = 3600.0) -> None:
        if scheduler is not None and jobs is not None:
            raise WorkflowError("give either a scheduler address or a number of local jobs, not both")
        if scheduler is not None and not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise WorkflowError(f"the scheduler must be an address like tcp://host:8786, got {scheduler!r}")
        if jobs is not None and jobs < 1:
            raise WorkflowError(f"jobs must be at least 1, got {jobs}")
        if timeout_s <= 0:
            raise WorkflowError(f"the task time limit must be positive, got {timeout_s:g} s")
        self.scheduler = scheduler
        self.jobs = jobs if jobs is not None or scheduler is not None else default_workers()
        self.timeout_s = timeout_s
        self.topic = f"medfuse-{secrets.token_hex(6)}"
        self._client = self._local = self._quiet = None
        self._lost_scheduler = False
        self._inline: list[tuple[str, Callable, dict]] = []
        self._futures: dict = {}
        self._events: queue.Queue = queue.Queue()

    def __enter__(self) -> "StudyExecutor":
        import distributed  # noqa: F401 - its first import sets its loggers' levels: before _quiet_dask

        self._quiet = _quiet_dask()
        self._quiet.__enter__()
        try:
            if self.scheduler is not None:
                self._client = _connect(self.scheduler)
            elif self.jobs > 1:
                self._local = LocalWorkers(self.jobs).start()
                self._client = self._local.client()
            if self._client is not None:
                self._client.subscribe_topic(self.topic, lambda event: self._events.put(event[1]))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        elif self._client is not None:
            self._client.close()
        self._client = self._local = None
        if self._quiet is not None and not self._lost_scheduler:
            # (after a lost scheduler the client's reconnection attempts end later, in its own thread, with
            # tracebacks logged at ERROR: those loggers stay quiet then)
            self._quiet.__exit__(None, None, None)
            self._quiet = None

    def submit(self, name: str, function: Callable, kwargs: dict) -> None:
        """Queue ``function(**kwargs)`` (run in a child process) under *name* (unique per executor)."""
        if self._client is None:
            self._inline.append((name, function, kwargs))
            return
        future = self._client.submit(run_study_task, function, kwargs, self.timeout_s, self.topic, pure=False,
                                     key=f"medfuse-study-{name}-{secrets.token_hex(4)}")
        self._futures[future] = name

    def outcomes(self, on_event: Callable[[dict], None] | None = None) -> Iterator[tuple[str, dict]]:
        """Yield ``(name, outcome)`` as tasks end (see :func:`run_study_task` for the outcome).

        Raises
        ------
        WorkflowError
            The scheduler went away (the tasks not yet yielded are lost).
        """
        while self._inline:
            name, function, kwargs = self._inline.pop(0)
            yield name, _run_timed(function, kwargs, self.timeout_s, on_event)
        if self._client is None:
            return
        from distributed import wait

        pending = set(self._futures)
        while pending:
            try:
                done, pending = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            except CancelledError as exc:
                raise self._lost() from exc
            self._drain(on_event)
            for future in done:
                name = self._futures.pop(future)
                yield name, self._outcome(future)
            if self._client.status in ("closing", "closed"):
                raise self._lost()
        self._drain(on_event)

    def _outcome(self, future) -> dict:
        from distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker:
            return {"ok": False, "kind": "FusionError", "exit_code": 5, "seconds": 0.0,
                    "message": "its Dask workers died while running it, several times (out of memory? "
                               "see the workers' logs)"}
        except CancelledError as exc:
            raise self._lost() from exc
        except Exception as exc:  # the task could not run at all on the worker (e.g. medfuse missing there)
            return {"ok": False, "kind": "MedfuseError", "exit_code": 1, "seconds": 0.0,
                    "message": f"the Dask task failed: {type(exc).__name__}: {one_line(exc)}"}

    def _drain(self, on_event) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if on_event is not None:
                on_event(event)

    def _lost(self) -> WorkflowError:
        self._lost_scheduler = True
        where = self.scheduler or "of the local workers"
        return WorkflowError(f"lost the connection to the Dask scheduler {where} during the run; "
                             f"{len(self._futures)} task(s) did not finish (run again to continue)")


def _connect(address: str):
    from distributed import Client

    try:
        return Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as exc:
        raise WorkflowError(f"cannot reach the Dask scheduler {address}: {one_line(exc)}") from exc


@contextmanager
def _quiet_dask():
    """Keep distributed's client-side log lines (reconnect attempts, tracebacks) off the user's terminal."""
    loggers = [logging.getLogger(name) for name in ("distributed.client", "distributed.core", "distributed.comm")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
