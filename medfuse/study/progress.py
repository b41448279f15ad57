"""Stage progress for the fuse-study pipeline: bars on a terminal, lines otherwise.

A :class:`Progress` reports each stage's start and end (with seconds) and,
for the fusion stage, slices done. Modes:

* ``"rich"``: a rich progress bar per stage (for an interactive terminal);
* ``"plain"``: one log line per stage start/end on stderr (scheduled jobs, pipes);
* ``"json"``: one JSON object per event on stderr (``--json-log``);
* ``"quiet"``: nothing.

:func:`auto_mode` picks ``rich`` when stderr is a TTY, else ``plain``.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager

MODES = ("rich", "plain", "json", "quiet")


def auto_mode(*, quiet: bool = False, json_log: bool = False) -> str:
    """The mode the CLI flags and the terminal call for."""
    if quiet:
        return "quiet"
    if json_log:
        return "json"
    return "rich" if sys.stderr.isatty() else "plain"


class Progress:
    """Reports stages and slice progress in one of :data:`MODES`."""

    def __init__(self, mode: str = "quiet", stream=None):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stderr
        self._bar = None
        self._task = None

    @contextmanager
    def stage(self, name: str, total: int | None = None):
        """Context for one stage; yields a ``advance(done, total)`` callable."""
        started = time.perf_counter()
        self._emit({"event": "start", "stage": name}, f"medfuse: {name} ...")
        if self.mode == "rich":
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(TextColumn(f"{name:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                     TimeElapsedColumn(), console=_console(self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(name, total=total or 1)
        done = [0]

        def advance(step: int, of: int) -> None:
            done[0] += step
            if self._bar is not None:
                self._bar.update(self._task, completed=done[0], total=of)
            elif self.mode == "json":
                self._emit({"event": "progress", "stage": name, "done": done[0], "total": of}, None)

        try:
            yield advance
        except BaseException:
            self._stop_bar()
            self._emit({"event": "failed", "stage": name, "seconds": round(time.perf_counter() - started, 3)},
                       f"medfuse: {name} failed")
            raise
        if self._bar is not None:
            self._bar.update(self._task, completed=total or 1, total=total or 1)
        self._stop_bar()
        seconds = time.perf_counter() - started
        self._emit({"event": "done", "stage": name, "seconds": round(seconds, 3)}, f"medfuse: {name} done in {seconds:.1f} s")

    def info(self, message: str, **fields) -> None:
        """A free-form line (plain/rich) or ``{"event": "info", ...}`` (json)."""
        if self.mode == "rich":
            print(f"medfuse: {message}", file=self.stream, flush=True)
        self._emit({"event": "info", "message": message, **fields}, f"medfuse: {message}")

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _emit(self, record: dict, line: str | None) -> None:
        if self.mode == "json":
            print(json.dumps(record, sort_keys=True), file=self.stream, flush=True)
        elif self.mode == "plain" and line is not None:
            print(line, file=self.stream, flush=True)


def _console(stream):
    from rich.console import Console

    return Console(file=stream)
