"""Errors medfuse raises on bad input or a failed stage.

Every error a user can cause is a :class:`MedfuseError`; the CLI prints its
message on one line and exits with its ``exit_code``, never a traceback.
The exit code says which stage failed, so a scheduled job can tell a bad
input folder from a failed registration without parsing text.
"""

from __future__ import annotations


class MedfuseError(Exception):
    """Base class: a problem the user can act on, reported in one line."""

    exit_code = 1


class InputError(MedfuseError):
    """Bad arguments or unreadable, inconsistent input files."""

    exit_code = 2


class ScanError(MedfuseError):
    """A DICOM folder could not be indexed, or no usable series was found."""

    exit_code = 3


class SelectionError(ScanError):
    """The series to fuse cannot be chosen without a guess."""


class SeriesReadError(ScanError):
    """A series was found but cannot be read as a volume (with the reason)."""


class RegistrationError(MedfuseError):
    """Registration failed or its result is unusable."""

    exit_code = 4


class DoubtfulRegistrationError(RegistrationError):
    """The independent alignment check doubts a registration, and the run was strict (``--strict``).

    Its own exit code, so a scheduled job can hold the study for review instead
    of retrying it or reporting a broken input.
    """

    exit_code = 9


class FusionError(MedfuseError):
    """The fusion stage failed."""

    exit_code = 5


class WriteError(MedfuseError):
    """Outputs could not be written; nothing half-written is left."""

    exit_code = 6


class ModelError(MedfuseError):
    """A model file is missing, unknown, or does not match its manifest hash."""

    exit_code = 7


class WorkflowError(MedfuseError):
    """A workflow file is invalid or a workflow run failed."""

    exit_code = 8


class PacsError(WorkflowError):
    """A PACS could not be reached or refused a request."""


def one_line(exc: BaseException) -> str:
    """The message of *exc* on one line (its type name when it has none), for error reports."""
    return " ".join(str(exc).split()) or type(exc).__name__


def os_error_reason(exc: BaseException) -> str:
    """The operating system's reason behind *exc*, on one line (e.g. ``No space left on device``).

    Libraries re-raise OSErrors with their own text around them (pydicom puts
    the whole traceback of the original error into the message and drops its
    errno); the first OSError with an ``strerror`` in the chain of causes is
    the one a user can act on. Falls back to the message of *exc* itself.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"{seen.strerror}: {seen.filename}" if seen.filename else seen.strerror
        seen = seen.__cause__ or seen.__context__
    return one_line(exc)
