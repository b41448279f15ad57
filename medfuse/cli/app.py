"""The `medfuse` command: a thin Typer layer over the library.

Each command group lives in its own module exposing ``register(app)``.
Errors the user can cause (:class:`medfuse.errors.MedfuseError`) become one
line on stderr and the error's exit code; nothing prints a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from medfuse import __version__
from medfuse.cli import (
    convert,
    evaluate,
    fuse_cohort,
    fuse_images,
    fuse_study,
    models,
    register,
    scan,
    workflow,
)
from medfuse.errors import MedfuseError, one_line

app = typer.Typer(
    name="medfuse",
    help="DICOM-aware zero-learning medical image fusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """DICOM-aware zero-learning medical image fusion."""


for _module in (fuse_images, fuse_study, fuse_cohort, scan, convert, register, evaluate, models, workflow):
    _module.register(app)


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler stopping the job): unwind so every clean-up runs."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return (and exit with) the process exit code.

    SIGTERM (how cron, systemd and batch schedulers stop a job) is turned into
    an exception for the run's duration, so the clean-ups of an interrupted
    run happen as for Ctrl-C: partial and scratch folders removed, local Dask
    workers closed. Exit code 143 (128 + SIGTERM), as a shell reports it.
    """
    previous = _install(signal.SIGTERM, _terminate)
    try:
        # Standalone mode lets Typer handle usage errors and --help; our own
        # errors pass through it untouched and are reported here in one line.
        app(args=argv, prog_name="medfuse", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MedfuseError as exc:
        typer.echo(f"medfuse: error: {one_line(exc)}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        typer.echo("medfuse: interrupted", err=True)
        code = 130
    except Terminated:
        typer.echo("medfuse: terminated (SIGTERM)", err=True)
        code = 128 + signal.SIGTERM
    except Exception as exc:
        # A bug or an unforeseen system error: still one line, never a
        # traceback for the user; MEDFUSE_DEBUG=1 shows it to a developer.
        if os.environ.get("MEDFUSE_DEBUG"):
            raise
        typer.echo(f"medfuse: internal error: {type(exc).__name__}: {one_line(exc)} (set MEDFUSE_DEBUG=1 for details)", err=True)
        code = 70
    finally:
        _install(signal.SIGTERM, previous)
    if argv is None:
        sys.exit(code)
    return code


def _install(signum: int, handler):
    """Set a signal handler where Python allows it (the main thread); returns the previous one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)

