"""Run one study's work in a fresh Python process, with a time limit (the study task's sandbox).

A study task (one study of a cohort, one job of a workflow) runs as a child
process of the Dask worker thread, or of the coordinating process when there
are no workers. That gives each task what a thread cannot:

* **a hard time limit**: a study still running after ``timeout_s`` is killed
  and reported as failed with that reason, instead of holding a worker for ever;
* **isolation**: a crash in a native library (or the OOM killer) fails that
  study only; its memory goes back to the system when it ends;
* **one thread**: the child runs with one OpenMP/BLAS/numba thread
  (:data:`ONE_THREAD`); medfuse's registration and in-process fusion use one
  thread already, so N workers keep N cores busy, not more.

Protocol: the parent pickles ``(function, kwargs)`` to the child's stdin; the
child calls ``function(**kwargs, emit=emit)`` and writes JSON lines on its
original stdout: ``{"event": {...}}`` for each ``emit(...)`` and one final
``{"result": ...}`` or ``{"error": {"kind", "message"}}``. Anything else the
child prints goes to its stderr. The child gets SIGKILL when the thread that
started it dies (``PR_SET_PDEATHSIG``): a worker killed mid-study leaves no
orphan fusing on.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from medfuse import errors
from medfuse.errors import FusionError, MedfuseError, one_line

#: Environment of a study process: one thread per numeric library.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                     "NUMBA_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}
_PR_SET_PDEATHSIG = 1
try:  # resolved here, not between fork and exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _PRCTL = None


def run_in_child(function: Callable, kwargs: dict, timeout_s: float,
                 on_event: Callable[[dict], None] | None = None):
    """Call ``function(**kwargs, emit=...)`` in a new Python process; return its (JSON) result.

    Parameters
    ----------
    function : callable
        A module-level function (pickled by reference), JSON-serialisable result.
    kwargs : dict
        Its arguments (pickled).
    timeout_s : float
        The child is killed after this many seconds.
    on_event : callable, optional
        Called with each dict the child passes to ``emit``, as it arrives.

    Raises
    ------
    MedfuseError
        The child's own error, with its kind (e.g. ``RegistrationError``);
        ``FusionError`` when it timed out or died without a result.
    """
    env = {**os.environ, **ONE_THREAD, "PYTHONSAFEPATH": "1"}  # import medfuse as this process did, not from the cwd
    process = subprocess.Popen([sys.executable, "-m", "medfuse.study.cohort.child"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)
    timer = threading.Timer(timeout_s, process.kill)
    timer.daemon = True
    started = time.monotonic()
    timer.start()
    outcome = None
    try:
        try:
            process.stdin.write(pickle.dumps((function, kwargs)))
            process.stdin.close()
        except BrokenPipeError:
            pass
        for line in process.stdout:
            message = json.loads(line)
            if "event" in message:
                if on_event is not None:
                    on_event(message["event"])
            else:
                outcome = message
        process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    if outcome is None:
        if time.monotonic() - started >= timeout_s:
            raise FusionError(f"timed out after {timeout_s:g} s (the study task's limit); killed")
        raise FusionError(f"the study process died without a result ({_exit_reason(process.returncode)})")
    if "error" in outcome:
        raise _error_of(outcome["error"])
    return outcome["result"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (", out of memory?" if name == "SIGKILL" else "")
    return f"exit status {code}"


def _error_of(error: dict) -> MedfuseError:
    kind = getattr(errors, error.get("kind", ""), None)
    if not (isinstance(kind, type) and issubclass(kind, MedfuseError)):
        kind = MedfuseError
    return kind(error["message"])


def _main() -> int:
    """The child's side of the protocol (``python -m medfuse.study.cohort.child``)."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints go to stderr, not into the protocol
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        channel.write(json.dumps(message, default=str) + "\n")
        channel.flush()

    try:
        function, kwargs = pickle.loads(sys.stdin.buffer.read())  # imports the task's module
        result = function(**kwargs, emit=lambda **event: send({"event": event}))
    except MedfuseError as exc:
        send({"error": {"kind": type(exc).__name__, "message": one_line(exc)}})
    except MemoryError:
        send({"error": {"kind": "FusionError", "message": "out of memory"}})
    except Exception as exc:  # a bug or an unforeseen library failure: still one line, with its type
        send({"error": {"kind": "MedfuseError", "message": f"internal error: {type(exc).__name__}: {one_line(exc)}"}})
    else:
        send({"result": result})
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
