"""The crash-safe SQLite ledger of a workflow's work.

One row per *job*: a set of input series of one study, processed once per
(input UIDs, workflow, medfuse version, parameters hash) — the :func:`job_key`.
Every state change is its own committed transaction (WAL journal,
``synchronous=FULL``), and is appended to an ``events`` history, so a run
killed at any instant leaves the ledger saying exactly how far each job got.

States: ``pending`` → ``fetching`` → ``fusing`` → ``delivering`` → ``done``;
``failed`` after an error (retried while ``attempts < max_attempts``);
``held`` when the fused study was not delivered because its registration is
doubtful (:mod:`medfuse.volume.alignment_check`): kept for review, never
retried or delivered by later runs.
A job found in an in-progress state at the start of a run was interrupted
(crash, SIGKILL); it is simply run again, which is safe because every
delivery is idempotent (see :mod:`medfuse.workflow.runner`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from medfuse.errors import WorkflowError

IN_PROGRESS = ("fetching", "fusing", "delivering")
STATES = ("pending", *IN_PROGRESS, "done", "failed", "held")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    input_uids TEXT NOT NULL,
    medfuse_version TEXT NOT NULL,
    parameters_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    output_series_uid TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    duration_s REAL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid);
"""


def job_key(study_uid: str, input_uids: list[str], workflow: str, version: str, parameters_hash: str) -> str:
    """The ledger key: sha256 over the sorted input UIDs, workflow, version and parameters hash."""
    payload = json.dumps([study_uid, sorted(input_uids), workflow, version, parameters_hash])
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    """One ledger row."""

    key: str
    workflow: str
    study_uid: str
    input_uids: tuple[str, ...]
    medfuse_version: str
    parameters_hash: str
    state: str
    attempts: int
    reason: str
    output_series_uid: str
    outputs: dict
    created: float
    updated: float
    duration_s: float | None

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> "Job":
        d = dict(row)
        d["input_uids"] = tuple(json.loads(d["input_uids"]))
        d["outputs"] = json.loads(d["outputs"])
        return cls(**d)


class Ledger:
    """The jobs of one workflow, stored in ``<state_dir>/ledger.sqlite``.

    Parameters
    ----------
    path : Path
        The SQLite file (created with its folder when missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise WorkflowError(f"cannot open the ledger {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading

    def get(self, key: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return Job._from_row(row) if row else None

    def jobs(self) -> list[Job]:
        return [Job._from_row(r) for r in self._db.execute("SELECT * FROM jobs ORDER BY created, key")]

    def output_series_uids(self) -> set[str]:
        """Series this workflow produced or intends to produce (loop guard)."""
        return {r[0] for r in self._db.execute("SELECT output_series_uid FROM jobs WHERE output_series_uid != ''")}

    def events(self, key: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM events ORDER BY id", ()
        if key is not None:
            sql, args = "SELECT * FROM events WHERE key = ? ORDER BY id", (key,)
        return [dict(r) for r in self._db.execute(sql, args)]

    # -- writing (each call is one committed transaction)

    def ensure(self, key: str, *, workflow: str, study_uid: str, input_uids: list[str], version: str,
               parameters_hash: str) -> Job:
        """Insert *key* as ``pending`` unless it is already known; return its row."""
        now = time.time()
        with self._transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (key, workflow, study_uid, input_uids, medfuse_version, parameters_hash,"
                " state, created, updated) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (key, workflow, study_uid, json.dumps(sorted(input_uids)), version, parameters_hash, now, now),
            )
            if cur.rowcount:
                self._event(key, "pending", now)
        return self.get(key)

    def start_attempt(self, key: str) -> Job:
        """Count a new attempt and move to ``fetching`` (noting an interrupted previous attempt)."""
        now = time.time()
        with self._transaction():
            job = self.get(key)
            if job.state in IN_PROGRESS:
                self._event(key, "interrupted", now, f"previous attempt stopped while {job.state}")
            self._db.execute(
                "UPDATE jobs SET state = 'fetching', attempts = attempts + 1, updated = ? WHERE key = ?", (now, key)
            )
            self._event(key, "fetching", now)
        return self.get(key)

    def advance(self, key: str, state: str, *, output_series_uid: str | None = None, detail: str = "") -> None:
        """Record that *key* reached *state* (an in-progress state)."""
        if state not in IN_PROGRESS:
            raise ValueError(f"advance() takes an in-progress state, not {state!r}")
        now = time.time()
        with self._transaction():
            if output_series_uid is not None:
                self._db.execute("UPDATE jobs SET output_series_uid = ? WHERE key = ?", (output_series_uid, key))
            self._db.execute("UPDATE jobs SET state = ?, updated = ? WHERE key = ?", (state, now, key))
            self._event(key, state, now, detail)

    def finish(self, key: str, outputs: dict, duration_s: float) -> None:
        now = time.time()
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET state = 'done', reason = '', outputs = ?, duration_s = ?, updated = ? WHERE key = ?",
                (json.dumps(outputs, sort_keys=True), duration_s, now, key),
            )
            self._event(key, "done", now)

    def hold(self, key: str, reason: str, outputs: dict, duration_s: float) -> None:
        """Record that *key* was fused but is held for review, not delivered (*reason* says why)."""
        now = time.time()
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET state = 'held', reason = ?, outputs = ?, duration_s = ?, updated = ? WHERE key = ?",
                (reason, json.dumps(outputs, sort_keys=True), duration_s, now, key),
            )
            self._event(key, "held", now, reason)

    def reset_attempts(self, key: str) -> Job:
        """Give a failed job a fresh set of attempts (its history stays in ``events``)."""
        now = time.time()
        with self._transaction():
            self._db.execute("UPDATE jobs SET attempts = 0, updated = ? WHERE key = ?", (now, key))
            self._event(key, "retry-requested", now)
        return self.get(key)

    def fail(self, key: str, reason: str, duration_s: float) -> None:
        now = time.time()
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, duration_s = ?, updated = ? WHERE key = ?",
                (reason, duration_s, now, key),
            )
            self._event(key, "failed", now, reason)

    def _event(self, key: str, state: str, at: float, detail: str = "") -> None:
        self._db.execute("INSERT INTO events (key, state, at, detail) VALUES (?, ?, ?, ?)", (key, state, at, detail))

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
