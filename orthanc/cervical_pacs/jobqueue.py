"""Persistent job queue: one SQLite file in WAL mode in the Orthanc data folder.

Standard library only: imported both by the Orthanc plugin (Debian's embedded Python) and by
the worker (the project's venv). Every change is one short ``BEGIN IMMEDIATE`` transaction,
so the plugin (inside Orthanc) and any number of worker threads/processes can share the file.

State machine of a job (one row per source series *content*, i.e. per fingerprint of its
sorted instance IDs; the worker claims the jobs of one *study* together, see
:meth:`JobQueue.claim_study`)::

    queued --claim_study--> running --ok--> done
      ^                 |  \\--app says nothing to enhance (exit 3/4)--> skipped
      |                 |   \\--permanent error / attempts exhausted----> failed
      +--transient------+  (backoff: not_before = now + base * 2**(attempts-1))
      +--lease expired or worker process gone (recover_stale)
    done --another series of the study claimed (the study is run again)--> running
    queued --the series grew (new fingerprint enqueued)--> superseded
    queued/done/failed/skipped --the series (study) was deleted from Orthanc--> superseded
    failed/skipped/done --POST .../retry--> queued (attempts reset)

Non-candidate series (not MR, not cervical, localizer, ...) get a ``skipped`` row at once
from the plugin, with the one-line reason. Our own outputs get no row at all.
Idempotency: ``UNIQUE(series_id, fingerprint)``; a STABLE_SERIES event for content that
already has a job (any state but superseded), or that a job already processed, adds nothing.

Other tables: ``pending_series`` (instances arrived, STABLE_SERIES not yet seen: evaluated
after a restart, and a study with one is not started), ``workers`` (heartbeats behind
``/cervical-dl/health``), ``meta``.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def instance_fingerprint(instance_ids) -> str:
    """The content key of a series in the queue: SHA-1 of its sorted Orthanc instance IDs."""
    return hashlib.sha1("\n".join(sorted(instance_ids)).encode()).hexdigest()

SCHEMA_VERSION = "2"
STATES = ("queued", "running", "done", "failed", "skipped", "superseded")
FINAL_STATES = ("done", "failed", "skipped", "superseded")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_id TEXT NOT NULL,                 -- Orthanc ID of the source series
    study_id TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    series_number TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL,               -- sha1 of the sorted instance IDs when enqueued
    n_instances INTEGER NOT NULL DEFAULT 0,
    processed_fingerprint TEXT NOT NULL DEFAULT '',  -- content the last attempt really fetched
    state TEXT NOT NULL CHECK (state IN ('queued','running','done','failed','skipped','superseded')),
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    uploaded TEXT NOT NULL DEFAULT '[]',     -- JSON [[instance_id, series_id], ...] not yet committed
    derived_series TEXT NOT NULL DEFAULT '[]',
    model_version TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    started REAL NOT NULL DEFAULT 0,
    finished REAL NOT NULL DEFAULT 0,
    batch INTEGER NOT NULL DEFAULT 0,        -- id of the lead job of the study run that took it last
    UNIQUE (series_id, fingerprint)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_by_series ON jobs (series_id);
CREATE TABLE IF NOT EXISTS pending_series (   -- instances arrived (NEW_INSTANCE), STABLE_SERIES not yet
    series_id TEXT PRIMARY KEY,
    seen REAL NOT NULL,
    study_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS workers (
    owner TEXT PRIMARY KEY,
    heartbeat REAL NOT NULL,
    running INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


_LATEST_OF_EACH_SERIES = ("SELECT * FROM jobs j WHERE study_id=? AND state!='superseded' AND id=(SELECT MAX(id)"
                          " FROM jobs k WHERE k.series_id=j.series_id AND k.state!='superseded') ORDER BY id")
_ADDED_COLUMNS = (("jobs", "batch", "INTEGER NOT NULL DEFAULT 0"),
                  ("pending_series", "study_id", "TEXT NOT NULL DEFAULT ''"))


def backoff_delay(base: float, attempts: int, cap: float = 3600.0) -> float:
    """Exponential backoff after the ``attempts``-th failed attempt (1, 2, 3, ...)."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


class JobQueue:
    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            for table, column, ddl in _ADDED_COLUMNS:  # a queue file of schema 1 (series jobs)
                if column not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
            con.execute("CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs (study_id, state)")
            con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION,))
            con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            con.execute("PRAGMA synchronous=FULL")
            yield con
        finally:
            con.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for key in ("uploaded", "derived_series"):
            job[key] = json.loads(job[key] or "[]")
        return job

    # -- plugin side --------------------------------------------------------------------------
    def enqueue(self, series_id: str, fingerprint: str, *, state: str = "queued", reason: str = "",
                n_instances: int = 0, study_id: str = "", series_uid: str = "", series_number: str = "",
                role: str = "") -> tuple[dict[str, Any], bool]:
        """Record a job for this content of the series; returns (job, created). Idempotent."""
        assert state in ("queued", "skipped")
        now = time.time()
        with self._tx() as con:
            existing = con.execute(
                "SELECT * FROM jobs WHERE series_id=? AND (fingerprint=? OR processed_fingerprint=?) "
                "AND state!='superseded' ORDER BY id DESC LIMIT 1", (series_id, fingerprint, fingerprint)).fetchone()
            if existing is not None:
                return self._row(existing), False
            con.execute("UPDATE jobs SET state='superseded', reason=?, updated=? WHERE series_id=? AND state='queued'",
                        (f"series changed ({n_instances} instances now)", now, series_id))
            finished = now if state in FINAL_STATES else 0
            con.execute(
                "INSERT INTO jobs (series_id, study_id, series_uid, series_number, role, fingerprint, n_instances,"
                " state, reason, created, updated, finished) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (series_id, fingerprint) DO UPDATE SET state=excluded.state, reason=excluded.reason,"
                " attempts=0, not_before=0, updated=excluded.updated, finished=excluded.finished",
                (series_id, study_id, series_uid, series_number, role, fingerprint, n_instances, state, reason,
                 now, now, finished))
            row = con.execute("SELECT * FROM jobs WHERE series_id=? AND fingerprint=?", (series_id, fingerprint)).fetchone()
            return self._row(row), True

    def add_pending(self, series_id: str, study_id: str = "") -> None:
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO pending_series (series_id, seen, study_id) VALUES (?, ?, ?)",
                        (series_id, time.time(), study_id))

    def remove_pending(self, series_id: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM pending_series WHERE series_id=?", (series_id,))

    def pending(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT series_id FROM pending_series ORDER BY seen")]

    def forget(self, *, series_id: str = "", study_id: str = "") -> int:
        """The series (or every series of the study) was deleted from Orthanc: its jobs that are
        not running become ``superseded``, so that a copy sent again is new work. Returns how many."""
        column, value = ("series_id", series_id) if series_id else ("study_id", study_id)
        if not value:
            return 0
        with self._tx() as con:
            cur = con.execute(f"UPDATE jobs SET state='superseded', reason='deleted from Orthanc', updated=? "
                              f"WHERE {column}=? AND state IN ('queued','done','failed','skipped')", (time.time(), value))
            con.execute(f"DELETE FROM pending_series WHERE {column}=?", (value,))
            return cur.rowcount

    def retry(self, series_id: str) -> dict[str, Any] | None:
        """Requeue the latest job of a series unless it is queued or running already."""
        now = time.time()
        with self._tx() as con:
            row = con.execute("SELECT * FROM jobs WHERE series_id=? ORDER BY id DESC LIMIT 1", (series_id,)).fetchone()
            if row is None:
                return None
            if row["state"] in FINAL_STATES:
                con.execute("UPDATE jobs SET state='queued', reason='manual retry', attempts=0, not_before=0,"
                            " updated=?, finished=0 WHERE id=?", (now, row["id"]))
            return self._row(con.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())

    # -- worker side --------------------------------------------------------------------------
    def claim_study(self, owner: str, lease_s: float, quiet_s: float = 0.0,
                    pending_wait_s: float = 300.0) -> list[dict[str, Any]]:
        """Take the jobs of one quiet study: [] if none is due.

        The study of the oldest due queued job whose study has no running job, whose newest
        queued job is at least ``quiet_s`` old and that has no series still arriving (a
        ``pending_series`` row younger than ``pending_wait_s``: an older one, whose
        STABLE_SERIES was lost, does not hold the study back for ever). Claimed together, in
        one transaction: every due queued job of that study, and the latest ``done`` job of
        each of its other series, so that the application sees the whole study (the Dixon
        pair, one QC report) and its results replace the previous ones. The first job of the
        list is the lead: the upload plan lives in its row, its id is the run's ``batch``.
        """
        now = time.time()
        with self._tx() as con:
            row = con.execute(
                "SELECT * FROM jobs j WHERE state='queued' AND not_before<=? "
                "AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.state='running' AND (r.series_id=j.series_id"
                "  OR (j.study_id!='' AND r.study_id=j.study_id))) "
                "AND NOT EXISTS (SELECT 1 FROM jobs q WHERE j.study_id!='' AND q.study_id=j.study_id"
                "  AND q.state='queued' AND q.created>?) "
                "AND NOT EXISTS (SELECT 1 FROM pending_series p WHERE j.study_id!='' AND p.study_id=j.study_id"
                "  AND p.seen>?) "
                "ORDER BY not_before, id LIMIT 1", (now, now - quiet_s, now - pending_wait_s)).fetchone()
            if row is None:
                return []
            if row["study_id"]:
                queued = con.execute("SELECT * FROM jobs WHERE study_id=? AND state='queued' AND not_before<=? "
                                     "ORDER BY id", (row["study_id"], now)).fetchall()
                latest = con.execute(_LATEST_OF_EACH_SERIES, (row["study_id"],)).fetchall()
                taken = {r["series_id"] for r in queued}
                companions = [r for r in latest if r["state"] == "done" and r["series_id"] not in taken]
            else:
                queued, companions = [row], []
            ids = [row["id"]] + [r["id"] for r in [*queued, *companions] if r["id"] != row["id"]]
            again = {r["id"] for r in companions}
            for job_id in ids:  # a done job taken again starts a new run: its first attempt
                con.execute("UPDATE jobs SET state='running', attempts=COALESCE(?, attempts+1), lease_owner=?, lease_until=?, started=?,"
                            " updated=?, finished=0, batch=? WHERE id=?",
                            (1, owner, now + lease_s, now, now, row["id"], job_id) if job_id in again else
                            (None, owner, now + lease_s, now, now, row["id"], job_id))
            return [self._row(con.execute("SELECT * FROM jobs WHERE id=?", (i,)).fetchone()) for i in ids]

    def heartbeat(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when the job is no longer ours (then stop working on it)."""
        now = time.time()
        with self._tx() as con:
            cur = con.execute("UPDATE jobs SET lease_until=?, updated=? WHERE id=? AND lease_owner=? AND state='running'",
                              (now + lease_s, now, job_id, owner))
            return cur.rowcount == 1

    def update(self, job_id: int, owner: str, **fields: Any) -> bool:
        """Set columns of a running job we own (uploaded, processed_fingerprint, ...)."""
        fields = {k: (json.dumps(v) if k in ("uploaded", "derived_series") else v) for k, v in fields.items()}
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as con:
            cur = con.execute(f"UPDATE jobs SET {cols} WHERE id=? AND lease_owner=? AND state='running'",
                              (*fields.values(), job_id, owner))
            return cur.rowcount == 1

    def finish(self, job_id: int, owner: str, state: str, reason: str = "", **fields: Any) -> bool:
        assert state in ("done", "failed", "skipped", "superseded")
        return self.update(job_id, owner, state=state, reason=reason, lease_owner="", lease_until=0,
                           finished=time.time(), **fields)

    def requeue(self, job_id: int, owner: str, delay_s: float, reason: str, count_attempt: bool = True) -> bool:
        """Back to queued after a transient failure (``count_attempt=False``: not the job's fault)."""
        now = time.time()
        with self._tx() as con:
            cur = con.execute(
                "UPDATE jobs SET state='queued', reason=?, not_before=?, lease_owner='', lease_until=0, updated=?,"
                " attempts=attempts-? WHERE id=? AND lease_owner=? AND state='running'",
                (reason, now + delay_s, now, 0 if count_attempt else 1, job_id, owner))
            return cur.rowcount == 1

    def recover_stale(self, owner_is_dead: Callable[[str], bool]) -> list[int]:
        """Requeue running jobs whose lease expired or whose worker process is gone."""
        now = time.time()
        recovered = []
        with self._tx() as con:
            for row in con.execute("SELECT id, lease_owner, lease_until FROM jobs WHERE state='running'").fetchall():
                if row["lease_until"] < now or owner_is_dead(row["lease_owner"]):
                    con.execute("UPDATE jobs SET state='queued', reason='worker lost during the job: requeued',"
                                " lease_owner='', lease_until=0, not_before=0, updated=? WHERE id=?", (now, row["id"]))
                    recovered.append(row["id"])
        return recovered

    def with_uncommitted_uploads(self) -> list[dict[str, Any]]:
        """Jobs not running that still list uploaded instances (an interrupted attempt)."""
        with self._connect() as con:
            return [self._row(r) for r in con.execute(
                "SELECT * FROM jobs WHERE state!='running' AND uploaded!='[]'").fetchall()]

    def clear_uploaded(self, job_id: int) -> None:
        with self._tx() as con:
            con.execute("UPDATE jobs SET uploaded='[]' WHERE id=? AND state!='running'", (job_id,))

    def worker_heartbeat(self, owner: str, running: int) -> None:
        with self._tx() as con:
            con.execute("INSERT INTO workers (owner, heartbeat, running) VALUES (?,?,?) ON CONFLICT (owner) DO UPDATE"
                        " SET heartbeat=excluded.heartbeat, running=excluded.running", (owner, time.time(), running))

    def worker_gone(self, owner: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM workers WHERE owner=?", (owner,))

    # -- reading --------------------------------------------------------------------------------
    def get(self, job_id: int) -> dict[str, Any] | None:
        with self._connect() as con:
            return self._row(con.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())

    def jobs_for_study(self, study_id: str) -> list[dict[str, Any]]:
        """The latest job of each series of the study (superseded ones left out)."""
        with self._connect() as con:
            return [self._row(r) for r in con.execute(_LATEST_OF_EACH_SERIES, (study_id,))]

    def jobs_for_series(self, series_id: str) -> list[dict[str, Any]]:
        with self._connect() as con:
            return [self._row(r) for r in con.execute("SELECT * FROM jobs WHERE series_id=? ORDER BY id", (series_id,))]

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._connect() as con:
            if state:
                rows = con.execute("SELECT * FROM jobs WHERE state=? ORDER BY id DESC LIMIT ?", (state, limit))
            else:
                rows = con.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
            return [self._row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._connect() as con:
            counts = {s: 0 for s in STATES}
            counts.update({r[0]: r[1] for r in con.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")})
            return counts

    def workers(self) -> list[dict[str, Any]]:
        with self._connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM workers ORDER BY heartbeat DESC")]
