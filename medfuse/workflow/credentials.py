"""PACS credentials: from an environment variable or an owner-only file, never the workflow file.

A :class:`Credentials` never shows its secret in ``repr``/``str``, so it
cannot leak into a log line or a traceback.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medfuse.errors import WorkflowError


@dataclass(frozen=True)
class Credentials:
    """A user name and a password or bearer token (either may be empty)."""

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def __str__(self) -> str:
        return f"Credentials(username={self.username!r}, secret={'set' if self.password or self.token else 'none'})"


def resolve_credentials(auth: dict | None, base: Path | None = None) -> Credentials:
    """Read the secret that *auth* (a workflow's ``auth`` mapping) points to.

    Parameters
    ----------
    auth : dict or None
        ``username``, ``password_env``, ``token_env``, ``credentials_file``.
    base : Path, optional
        Folder against which a relative ``credentials_file`` is resolved.

    Raises
    ------
    WorkflowError
        When a named variable is unset, or the file is missing, unreadable,
        malformed, or readable by anyone but its owner.
    """
    if not auth:
        return Credentials()
    username = auth.get("username", "")
    password = token = ""
    if auth.get("credentials_file"):
        data = _read_credentials_file(Path(auth["credentials_file"]) if base is None
                                      else base / os.path.expanduser(auth["credentials_file"]))
        username = data.get("username", username)
        password = data.get("password", "")
        token = data.get("token", "")
    if auth.get("password_env"):
        password = _from_env(auth["password_env"])
    if auth.get("token_env"):
        token = _from_env(auth["token_env"])
    return Credentials(username=str(username), password=str(password), token=str(token))


def _from_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise WorkflowError(f"environment variable {name} (named in the workflow's auth) is not set")
    return value


def _read_credentials_file(path: Path) -> dict:
    try:
        info = path.stat()
    except OSError as exc:
        raise WorkflowError(f"credentials file {path} cannot be read: {exc.strerror}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WorkflowError(
            f"credentials file {path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"credentials file {path} is not a YAML mapping of username/password/token") from exc
    if not isinstance(data, dict) or not set(data) <= {"username", "password", "token"}:
        raise WorkflowError(f"credentials file {path} must be a YAML mapping with keys username, password, token")
    return data
