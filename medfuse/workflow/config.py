"""Load and validate a workflow file into a typed :class:`Workflow`.

Every problem is reported as a :class:`~medfuse.errors.WorkflowError` whose
one-line message names the file and line: an unknown key, a wrong type, a
missing field, a plain-text password, a bad schedule or regular expression.
Line numbers come from PyYAML's node tree, which records where each key and
value starts; the file is read by :mod:`medfuse.workflow.parse` within
limits of size, depth and aliases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from medfuse.errors import InputError, WorkflowError
from medfuse.volume.intensity import parse_window
from medfuse.workflow.parse import parse_workflow_file
from medfuse.workflow.schema import WORKFLOW_SCHEMA

#: Keys that would hold a secret in clear text; a workflow file may only name
#: where the secret lives (``password_env``, ``token_env``, ``credentials_file``).
SECRET_KEYS = frozenset({"password", "passwd", "pass", "secret", "token", "api_key", "apikey", "access_token"})

_CRON_SHORTCUTS = frozenset({"@hourly", "@daily", "@midnight", "@weekly", "@monthly"})
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
DEFAULT_MAX_ATTEMPTS = 3



def orientation_of(image_orientation_patient) -> str:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from ImageOrientationPatient; "" when unknown.

    The slice normal (row x column direction cosines) names the plane when it
    lies within 30 degrees of a patient axis (|component| >= cos 30°).
    """
    try:
        row = [float(v) for v in list(image_orientation_patient)[:3]]
        col = [float(v) for v in list(image_orientation_patient)[3:6]]
    except (TypeError, ValueError):
        return ""
    if len(row) != 3 or len(col) != 3:
        return ""
    normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) < 0.866:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class SeriesRule:
    """How to recognise one input series of a study (all given fields must match).

    A field the source did not report (e.g. no BodyPartExamined, no
    ImageOrientationPatient in a PACS's series-level answer) does not exclude
    the series; the runner checks orientation again on the retrieved images.
    """

    modality: str | None = None
    description: str | None = None
    body_part: str | None = None
    orientation: str | None = None

    def matches(self, modality: str, description: str, body_part: str = "", orientation: str = "") -> bool:
        """True when a series' header values satisfy this rule."""
        if self.modality and modality.upper() != self.modality:
            return False
        if self.description and not re.search(self.description, description or ""):
            return False
        if self.body_part and body_part and body_part.upper() != self.body_part.upper():
            return False
        if self.orientation and orientation and orientation != self.orientation:
            return False
        return True

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Workflow:
    """A validated workflow file.

    Attributes
    ----------
    name : str
        Workflow name (ledger key component, lock and state file names).
    path : Path
        The workflow file.
    source_kind : {"folder", "dicomweb", "dimse"}
    source : dict
        The connector's settings (paths resolved against the workflow file's folder).
    query : dict
        Study-level filters for PACS sources.
    fixed, moving : SeriesRule
    fusion : dict
        Keyword options passed to fuse-study's ``StudyOptions``.
    outputs : dict
        ``folder`` (Path or None), ``nifti`` (bool), ``pacs`` (bool).
    schedule : str or None
    state_dir : Path
    max_attempts : int
    """

    name: str
    path: Path
    source_kind: str
    source: dict
    query: dict
    fixed: SeriesRule
    moving: SeriesRule
    fusion: dict
    outputs: dict
    schedule: str | None
    state_dir: Path
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    description: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def parameters_hash(self) -> str:
        """sha256 of everything that changes what a run produces (not where it reads from)."""
        payload = {
            "select": {"fixed": self.fixed.to_dict(), "moving": self.moving.to_dict()},
            "fusion": self.fusion,
            "outputs": {k: (str(v) if isinstance(v, Path) else v) for k, v in self.outputs.items()},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- loading


def load_workflow(path: str | os.PathLike) -> Workflow:
    """Read, validate and type a workflow file.

    Raises
    ------
    WorkflowError
        With ``<file>:<line>: <what is wrong>`` for the first problem found.
    """
    path = Path(path)
    data, lines = parse_workflow_file(path)
    _check_numbers(data, lines, path)
    _check_secrets(data, lines, path)
    _check_schema(data, lines, path)
    _check_semantics(data, lines, path)
    return _build(data, path)


def _line(lines: dict, where: tuple, *, key: bool = False) -> int:
    if key and ("key",) + where in lines:
        return lines[("key",) + where]
    while where not in lines and where:
        where = where[:-1]
    return lines.get(where, 1)


def _dotted(where: tuple) -> str:
    return ".".join(str(p) for p in where) or "the workflow"


def _walk(data: Any, where: tuple = ()):
    yield where, data
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _walk(v, where + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _walk(v, where + (i,))


def _check_numbers(data: Any, lines: dict, path: Path) -> None:
    """No setting of a workflow makes sense as infinity or NaN (``.inf``, ``.nan``, ``1e999``)."""
    for where, value in _walk(data):
        if isinstance(value, float) and not math.isfinite(value):
            raise WorkflowError(f"{path}:{_line(lines, where)}: '{_dotted(where)}' must be a finite number, "
                                f"got {value}")


def _check_secrets(data: Any, lines: dict, path: Path) -> None:
    for where, value in _walk(data):
        if where and isinstance(where[-1], str) and where[-1].lower() in SECRET_KEYS:
            raise WorkflowError(
                f"{path}:{_line(lines, where, key=True)}: plain-text secret '{_dotted(where)}' is not allowed in a "
                "workflow file; use auth.password_env / auth.token_env (an environment variable) or "
                "auth.credentials_file (a file readable only by its owner, mode 0600)"
            )
        if isinstance(value, str) and re.match(r"^[a-z]+://[^/@\s]+:[^/@\s]*@", value):
            raise WorkflowError(
                f"{path}:{_line(lines, where)}: '{_dotted(where)}' has a password inside the URL; "
                "use auth.password_env or auth.credentials_file instead"
            )


def _check_schema(data: Any, lines: dict, path: Path) -> None:
    validator = jsonschema.Draft202012Validator(WORKFLOW_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: (_line(lines, tuple(e.absolute_path)), str(e.message)))
    if not errors:
        return
    first = errors[0]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise WorkflowError(_describe(first, lines, path) + more)


def _describe(error: jsonschema.ValidationError, lines: dict, path: Path) -> str:
    where = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(k for k in instance if k not in allowed)
        key_where = where + (unknown[0],)
        return (
            f"{path}:{_line(lines, key_where, key=True)}: unknown key '{unknown[0]}' in {_dotted(where)} "
            f"(allowed: {', '.join(allowed)})"
        )
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = missing[0] if missing else error.message
        return f"{path}:{_line(lines, where)}: missing field '{name}' in {_dotted(where)}"
    if error.validator in ("type", "const", "enum"):
        expected = schema.get("type") or schema.get("const") or schema.get("enum")
        return (
            f"{path}:{_line(lines, where)}: '{_dotted(where)}' must be {_expected(error.validator, expected)}, "
            f"got {type(instance).__name__} {instance!r}"
        )
    if error.validator in ("minProperties", "maxProperties") and where == ("source",):
        return f"{path}:{_line(lines, where)}: source must name exactly one of folder, dicomweb, dimse (plus optional query)"
    return f"{path}:{_line(lines, where)}: '{_dotted(where)}': {error.message}"


def _expected(validator: str, expected: Any) -> str:
    if validator == "type":
        return {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
                "object": "a mapping", "array": "a list"}.get(str(expected), str(expected))
    if validator == "const":
        return repr(expected)
    return "one of " + ", ".join(map(str, expected))


def _check_semantics(data: dict, lines: dict, path: Path) -> None:
    kinds = [k for k in ("folder", "dicomweb", "dimse") if k in data["source"]]
    if len(kinds) != 1:
        raise WorkflowError(f"{path}:{_line(lines, ('source',))}: source must name exactly one of folder, dicomweb, dimse")
    if kinds[0] == "folder" and data["outputs"].get("pacs"):
        raise WorkflowError(
            f"{path}:{_line(lines, ('outputs', 'pacs'))}: outputs.pacs needs a PACS source (dicomweb or dimse), not a folder"
        )
    if data["outputs"].get("nifti") and not data["outputs"].get("folder"):
        raise WorkflowError(f"{path}:{_line(lines, ('outputs', 'nifti'))}: outputs.nifti needs outputs.folder (where to write it)")
    schedule = data.get("schedule")
    if schedule is not None:
        problem = schedule_problem(schedule)
        if problem:
            raise WorkflowError(f"{path}:{_line(lines, ('schedule',))}: bad schedule {schedule!r}: {problem}")
    for role in ("fixed", "moving"):
        pattern = data["select"][role].get("description")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise WorkflowError(
                    f"{path}:{_line(lines, ('select', role, 'description'))}: select.{role}.description is not a valid "
                    f"regular expression: {exc}"
                ) from exc
    window = (data.get("fusion") or {}).get("window")
    if window is not None:
        try:
            parse_window(window)
        except InputError as exc:
            raise WorkflowError(f"{path}:{_line(lines, ('fusion', 'window'))}: fusion.{exc}") from None
    for name in data.get("fusion") or {}:
        why = WORKFLOW_CONTROLLED_OPTIONS.get(name) or WORKFLOW_UNSUPPORTED_OPTIONS.get(name)
        if why:
            raise WorkflowError(f"{path}:{_line(lines, ('fusion', name), key=True)}: fusion option '{name}' "
                                f"cannot be set in a workflow file: {why}")
    unknown = unknown_fusion_options(data.get("fusion") or {})
    if unknown:
        where = unknown[0]
        if len(where) == 1:
            allowed = study_option_names()
        else:
            allowed = {f.name for f in dataclasses.fields(nested_option_classes()[where[0]])}
        raise WorkflowError(
            f"{path}:{_line(lines, ('fusion', *where), key=True)}: unknown fusion option "
            f"'{'.'.join(where)}' (accepted here: {', '.join(sorted(allowed))})"
        )


def schedule_problem(schedule: str) -> str | None:
    """Return why *schedule* is not a usable hint, or None when it is.

    Accepted: ``on-stable`` (run by the PACS trigger), a cron shortcut
    (``@hourly``, ``@daily``, ...), or a five-field cron expression.
    """
    text = schedule.strip()
    if text == "on-stable" or text in _CRON_SHORTCUTS:
        return None
    fields = text.split()
    if len(fields) != 5:
        return (f"expected 'on-stable', one of {', '.join(sorted(_CRON_SHORTCUTS))}, "
                f"or 5 cron fields (minute hour day-of-month month day-of-week), got {len(fields)} field(s)")
    for value, (name, low, high) in zip(fields, _CRON_FIELDS):
        for part in value.split(","):
            match = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", part)
            if not match:
                return f"cron {name} field {value!r} is not a number, range, list, '*' or step"
            base, step = match.groups()
            if step is not None and int(step) == 0:
                return f"cron {name} step must be at least 1"
            if base != "*":
                numbers = [int(n) for n in base.split("-")]
                if any(n < low or n > high for n in numbers) or numbers != sorted(numbers):
                    return f"cron {name} field {value!r} is outside {low}-{high}"
    return None


#: StudyOptions fields the workflow sets itself, with where they come from, so a
#: workflow file may not set them under ``fusion``.
WORKFLOW_CONTROLLED_OPTIONS = {
    "fixed": "the fixed series is chosen by select.fixed",
    "moving": "the moving series is chosen by select.moving",
    "rules": "series are chosen by select.fixed and select.moving",
    "formats": "outputs are chosen by outputs (DICOM always, NIfTI with outputs.nifti)",
    "deterministic_uids": "the workflow derives the output UIDs from its job key",
    "uid_entropy": "the workflow derives the output UIDs from its job key",
    "progress": "a workflow logs one line per study instead",
}

#: StudyOptions fields a workflow does not support, with why.
WORKFLOW_UNSUPPORTED_OPTIONS = {
    "colour_series": "workflows deliver only the grey fused series, not dicom_colour/; "
                     "run 'medfuse fuse-study --colour' for an RGB series",
}


def study_option_names() -> frozenset:
    """``fusion:`` keys a workflow accepts: fuse-study's ``StudyOptions`` fields it neither controls nor refuses."""
    from medfuse.study.pipeline import StudyOptions

    return frozenset(f.name for f in dataclasses.fields(StudyOptions)).difference(
        WORKFLOW_CONTROLLED_OPTIONS, WORKFLOW_UNSUPPORTED_OPTIONS)


def nested_option_classes() -> dict:
    """``fusion:`` keys whose value is a mapping of a config dataclass's fields."""
    from medfuse.core.config import FusionConfig
    from medfuse.volume.registration import RegistrationConfig

    return {"fusion": FusionConfig, "registration": RegistrationConfig}


def unknown_fusion_options(fusion: dict) -> list[tuple]:
    """Paths (inside ``fusion``) of keys fuse-study does not know, sorted."""
    allowed = study_option_names()
    unknown = [(k,) for k in fusion if k not in allowed]
    for key, cls in nested_option_classes().items():
        if isinstance(fusion.get(key), dict):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown += [(key, k) for k in fusion[key] if k not in names]
    return sorted(unknown)


# --------------------------------------------------------------------------- typing


def _build(data: dict, path: Path) -> Workflow:
    base = path.resolve().parent
    kind = next(k for k in ("folder", "dicomweb", "dimse") if k in data["source"])
    source = dict(data["source"][kind])
    if kind == "folder":
        source["path"] = _resolve(source["path"], base)
    outputs = dict(data["outputs"])
    outputs["folder"] = _resolve(outputs["folder"], base) if outputs.get("folder") else None
    outputs.setdefault("nifti", False)
    outputs.setdefault("pacs", False)
    if data.get("state_dir"):
        state_dir = _resolve(data["state_dir"], base)
    else:
        root = os.environ.get("MEDFUSE_STATE_DIR") or os.path.join(
            os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "medfuse"
        )
        state_dir = Path(root) / data["name"]
    return Workflow(
        name=data["name"],
        path=path,
        source_kind=kind,
        source=source,
        query=dict(data["source"].get("query") or {}),
        fixed=SeriesRule(**data["select"]["fixed"]),
        moving=SeriesRule(**data["select"]["moving"]),
        fusion=dict(data.get("fusion") or {}),
        outputs=outputs,
        schedule=data.get("schedule"),
        state_dir=state_dir,
        max_attempts=int((data.get("retries") or {}).get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
        description=data.get("description", ""),
        raw=data,
    )


def _resolve(value: str, base: Path) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    return p if p.is_absolute() else (base / p)
