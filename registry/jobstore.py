"""Persistence of background jobs and resumable uploads: every query they need.

Two tables (migration 3 in :mod:`registry.db`):

- ``jobs``: background link uploads. A job is ``queued`` until a process
  claims it; a claim sets ``holder`` (which process) and ``lease_until`` (an
  epoch time) and makes it ``running``. The runner renews the lease with each
  progress update (its heartbeat). A ``running`` job whose lease ran out, or
  whose holder is a process of this host that no longer exists, may be claimed
  again by any process and is run from the start: a job is never lost, and
  since a claim and every later write are conditional on ``holder``, it never
  runs twice at once.
- ``uploads``: tus uploads. ``upload_offset`` is the number of bytes stored
  durably; ``storage_state`` is what the storage's resumable-upload capability
  keeps between requests (an S3 multipart upload id and its parts). Writers
  take the same kind of lease, so two PATCH requests never append at once.

Every method blocks (SQLite); callers run them in worker threads. The class
is deliberately self-contained so it can move behind another record store.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from registry.db import Database
from registry.records import utc_now

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)

#: upload states: bytes still arriving, being ingested by the completing PATCH, or done
RECEIVING = "receiving"
COMPLETING = "completing"


def make_holder() -> str:
    """A name for this process, unique across restarts: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def holder_is_dead(holder: str | None) -> bool:
    """True when ``holder`` names a process of this host that no longer exists.

    Holders on other hosts are never judged dead here: their leases expire.
    """
    if not holder:
        return True
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this very process holds it: alive by definition
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Job:
    """One background link upload, as stored.

    :param request: the upload's fields (version, allow_overwrite, sha256) and
        ``sealed_url``, the full ``package_url`` sealed (see :mod:`registry.seal`).
    :param package_url: the URL with secrets redacted, for display.
    :param result: the record JSON plus ``status`` when succeeded, the error
        ``{"code","detail_zh","detail_en",...}`` when failed, else None.
    """

    id: str
    code: str
    module: str
    state: str
    package_url: str
    request: dict[str, Any]
    operator: str
    bytes_received: int
    bytes_total: int | None
    result: dict[str, Any] | None
    created: str
    updated: str
    holder: str | None
    lease_until: float
    attempts: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"], code=row["code"], module=row["module"], state=row["state"],
            package_url=row["package_url"], request=json.loads(row["request"]), operator=row["operator"],
            bytes_received=row["bytes_received"], bytes_total=row["bytes_total"],
            result=json.loads(row["result"]) if row["result"] else None,
            created=row["created"], updated=row["updated"], holder=row["holder"],
            lease_until=row["lease_until"] or 0.0, attempts=row["attempts"],
        )


@dataclass(frozen=True)
class Upload:
    """One tus upload, as stored.

    :param metadata: the validated ``Upload-Metadata`` (filename, version,
        allow_overwrite, sha256).
    :param storage_state: the storage capability's own bookkeeping.
    :param result: as for :class:`Job`, once the completing PATCH ran.
    """

    id: str
    code: str
    module: str
    length: int
    offset: int
    metadata: dict[str, Any]
    operator: str
    state: str
    storage_state: dict[str, Any]
    result: dict[str, Any] | None
    created: str
    updated: str
    expires: float
    holder: str | None
    lease_until: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Upload:
        return cls(
            id=row["id"], code=row["code"], module=row["module"], length=row["length"],
            offset=row["upload_offset"], metadata=json.loads(row["metadata"]), operator=row["operator"],
            state=row["state"], storage_state=json.loads(row["storage_state"] or "{}"),
            result=json.loads(row["result"]) if row["result"] else None,
            created=row["created"], updated=row["updated"], expires=row["expires"],
            holder=row["holder"], lease_until=row["lease_until"] or 0.0,
        )


class JobStore:
    """The ``jobs`` and ``uploads`` tables of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- jobs ---------------------------------------------------------------

    def create_job(self, job_id: str, code: str, module: str, package_url: str,
                   request: dict[str, Any], operator: str) -> Job:
        """Insert a ``queued`` job and return it."""
        now = utc_now()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, code, module, state, package_url, request, operator, bytes_received,"
                " created, updated, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0)",
                (job_id, code, module, QUEUED, package_url, json.dumps(request), operator, now, now),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row)

    def get_job(self, code: str, module: str, job_id: str) -> Job | None:
        """The job with this id in this module, or None."""
        row = self.db.connection().execute(
            "SELECT * FROM jobs WHERE id = ? AND code = ? AND module = ?", (job_id, code, module)
        ).fetchone()
        return None if row is None else Job.from_row(row)

    def claim_job(self, holder: str, lease_seconds: float) -> Job | None:
        """Take the oldest runnable job for ``holder`` and mark it ``running``.

        Runnable: ``queued``, or ``running`` with an expired lease or a dead
        holder (its progress starts again from zero). Returns None when none is.
        """
        now = time.time()
        with self.db.transaction() as conn:
            candidates = conn.execute(
                "SELECT id, state, holder, lease_until FROM jobs WHERE state IN (?, ?) ORDER BY created, id LIMIT 50",
                (QUEUED, RUNNING),
            ).fetchall()
            chosen = None
            for row in candidates:
                if row["state"] == QUEUED or (row["lease_until"] or 0) < now or holder_is_dead(row["holder"]):
                    chosen = row["id"]
                    break
            if chosen is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = ?, holder = ?, lease_until = ?, bytes_received = 0, bytes_total = NULL,"
                " attempts = attempts + 1, updated = ? WHERE id = ?",
                (RUNNING, holder, now + lease_seconds, utc_now(), chosen),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (chosen,)).fetchone()
        return Job.from_row(row)

    def heartbeat_job(self, job_id: str, holder: str, lease_seconds: float,
                      bytes_received: int, bytes_total: int | None) -> bool:
        """Record progress and renew the lease; False when the job is no longer
        this holder's to run (cancelled, or taken over after a lost lease)."""
        with self.db.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET bytes_received = ?, bytes_total = ?, lease_until = ?, updated = ?"
                " WHERE id = ? AND holder = ? AND state = ?",
                (bytes_received, bytes_total, time.time() + lease_seconds, utc_now(), job_id, holder, RUNNING),
            ).rowcount
        return changed == 1

    def finish_job(self, job_id: str, holder: str, state: str, result: dict[str, Any] | None,
                   bytes_received: int, bytes_total: int | None) -> bool:
        """End a running job of ``holder`` with ``state`` and ``result``; False
        when it was no longer this holder's (cancelled meanwhile)."""
        assert state in FINISHED_STATES
        with self.db.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET state = ?, result = ?, bytes_received = ?, bytes_total = ?, holder = NULL,"
                " lease_until = NULL, updated = ? WHERE id = ? AND holder = ? AND state = ?",
                (state, json.dumps(result) if result is not None else None, bytes_received, bytes_total,
                 utc_now(), job_id, holder, RUNNING),
            ).rowcount
        return changed == 1

    def cancel_job(self, code: str, module: str, job_id: str) -> Job | None:
        """Mark a queued or running job ``cancelled`` (a finished job is left as
        it is); the job as it is afterwards, or None when there is no such job."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, holder = NULL, lease_until = NULL, updated = ?"
                " WHERE id = ? AND code = ? AND module = ? AND state IN (?, ?)",
                (CANCELLED, utc_now(), job_id, code, module, QUEUED, RUNNING),
            )
            row = conn.execute(
                "SELECT * FROM jobs WHERE id = ? AND code = ? AND module = ?", (job_id, code, module)
            ).fetchone()
        return None if row is None else Job.from_row(row)

    def job_state(self, job_id: str) -> str | None:
        """Just the state (the runner polls it for cancellation)."""
        row = self.db.connection().execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else str(row["state"])

    def count_jobs_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (for the metrics)."""
        rows = self.db.connection().execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({row["state"]: row["n"] for row in rows if row["state"] in counts})
        return counts

    def expire_jobs(self, finished_before: str) -> int:
        """Delete finished jobs last updated before ``finished_before`` (stored time form)."""
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM jobs WHERE state IN (?, ?, ?) AND updated < ?", (*FINISHED_STATES, finished_before)
            ).rowcount

    # -- uploads ------------------------------------------------------------

    def create_upload(self, upload_id: str, code: str, module: str, length: int, metadata: dict[str, Any],
                      operator: str, storage_state: dict[str, Any], expires: float) -> Upload:
        """Insert a ``receiving`` upload at offset 0 and return it."""
        now = utc_now()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO uploads (id, code, module, length, upload_offset, metadata, operator, state,"
                " storage_state, created, updated, expires) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
                (upload_id, code, module, length, json.dumps(metadata), operator, RECEIVING,
                 json.dumps(storage_state), now, now, expires),
            )
            row = conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return Upload.from_row(row)

    def get_upload(self, code: str, module: str, upload_id: str) -> Upload | None:
        """The upload with this id in this module, or None."""
        row = self.db.connection().execute(
            "SELECT * FROM uploads WHERE id = ? AND code = ? AND module = ?", (upload_id, code, module)
        ).fetchone()
        return None if row is None else Upload.from_row(row)

    def lock_upload(self, upload_id: str, holder: str, lease_seconds: float) -> Upload | None:
        """Take the write lease of an upload; None when another live writer holds it."""
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT holder, lease_until FROM uploads WHERE id = ?", (upload_id,)).fetchone()
            if row is None:
                return None
            if row["holder"] and row["holder"] != holder and (row["lease_until"] or 0) >= now \
                    and not holder_is_dead(row["holder"]):
                return None
            conn.execute("UPDATE uploads SET holder = ?, lease_until = ? WHERE id = ?",
                         (holder, now + lease_seconds, upload_id))
            row = conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return Upload.from_row(row)

    def renew_upload_lock(self, upload_id: str, holder: str, lease_seconds: float) -> None:
        """Extend the write lease while a long PATCH body streams in."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE uploads SET lease_until = ? WHERE id = ? AND holder = ?",
                         (time.time() + lease_seconds, upload_id, holder))

    def save_progress(self, upload_id: str, holder: str, offset: int, storage_state: dict[str, Any],
                      expires: float, state: str = RECEIVING, release: bool = False) -> Upload | None:
        """Record the kept offset, the storage's bookkeeping and the new expiry
        time (activity extends it); keep the lease unless ``release`` (one
        transaction for both, as a PATCH ends). The upload as it is now."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET upload_offset = ?, storage_state = ?, state = ?, expires = ?, updated = ?,"
                " holder = CASE WHEN ? THEN NULL ELSE holder END,"
                " lease_until = CASE WHEN ? THEN NULL ELSE lease_until END"
                " WHERE id = ? AND holder = ?",
                (offset, json.dumps(storage_state), state, expires, utc_now(), release, release, upload_id, holder),
            )
            row = conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return None if row is None else Upload.from_row(row)

    def finish_upload(self, upload_id: str, holder: str, state: str, result: dict[str, Any], expires: float) -> None:
        """Store the completing PATCH's outcome (``succeeded`` or ``failed``),
        kept for ``GET`` until ``expires``, and release the lease."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET state = ?, result = ?, storage_state = '{}', holder = NULL, lease_until = NULL,"
                " expires = ?, updated = ? WHERE id = ? AND holder = ?",
                (state, json.dumps(result), expires, utc_now(), upload_id, holder),
            )

    def unlock_upload(self, upload_id: str, holder: str) -> None:
        """Release the write lease."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE uploads SET holder = NULL, lease_until = NULL WHERE id = ? AND holder = ?",
                         (upload_id, holder))

    def delete_upload(self, upload_id: str) -> None:
        """Forget an upload (termination, expiry)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    def expired_uploads(self, now: float, limit: int = 500) -> list[Upload]:
        """Uploads past their expiry time (finished ones included: their answer was given)."""
        rows = self.db.connection().execute(
            "SELECT * FROM uploads WHERE expires < ? ORDER BY expires LIMIT ?", (now, limit)
        ).fetchall()
        return [Upload.from_row(row) for row in rows]

    def count_uploads_in_progress(self) -> int:
        """Uploads still receiving bytes (for the metrics)."""
        row = self.db.connection().execute(
            "SELECT COUNT(*) AS n FROM uploads WHERE state IN (?, ?)", (RECEIVING, COMPLETING)
        ).fetchone()
        return int(row["n"])

