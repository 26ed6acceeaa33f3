"""The SQLite database: connections, WAL mode, schema migrations.

One connection per worker thread (SQLite connections must not be shared
across threads), all in WAL mode with a generous busy timeout, so concurrent
writers queue instead of failing with "database is locked". Callers run every
method of the stores in a worker thread, never on the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 30_000


def _schema_v1(db: sqlite_utils.Database) -> None:
    db.table("packages").create(
        {
            "id": int,
            "code": str,
            "module": str,
            "version": str,
            "package_name": str,
            "package_size": int,
            "sha256": str,
            "blob_key": str,
            "format": str,
            "file_name": str,
            "origin": str,
            "source_url": str,
            "is_deleted": int,
            "revived": int,
            "deleted_at": str,
            "created": str,
            "updated": str,
            "operator": str,
        },
        pk="id",
        not_null={"code", "module", "version", "package_name", "package_size", "sha256",
                  "blob_key", "format", "is_deleted", "created", "updated", "operator"},
        defaults={"is_deleted": 0, "revived": 0, "origin": "", "source_url": "", "file_name": ""},
    )
    # The guard that lets only one of two concurrent uploads of a version win.
    db.table("packages").create_index(["code", "module", "version"], unique=True)
    db.table("packages").create_index(["code", "module", "created"])
    db.table("packages").create_index(["blob_key"], unique=True)
    db.table("credentials").create(
        {
            "id": int,
            "kind": str,
            "name": str,
            "secret_hash": str,
            "hint": str,
            "apps": str,
            "read_only": int,
            "created": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"kind", "name", "secret_hash", "apps", "read_only", "created"},
        defaults={"read_only": 0, "apps": "[]", "hint": ""},
    )
    db.table("credentials").create_index(["secret_hash"], unique=True)


def _integrity_marks_v2(db: sqlite_utils.Database) -> None:
    """The marks ``registry fsck --repair`` and ``registry gc`` leave on records.

    - ``broken``: NULL, or why the record's blob failed ``fsck`` (missing,
      wrong size, wrong sha256); download of a broken record answers 503.
    - ``purged_at``: NULL, or when ``gc`` removed a soft-deleted record's blob;
      such a record can no longer be restored, only uploaded again.
    """
    db.table("packages").add_column("broken", str)
    db.table("packages").add_column("purged_at", str)


def _jobs_and_uploads_v3(db: sqlite_utils.Database) -> None:
    """Background jobs and resumable uploads (see :mod:`registry.jobstore`).

    ``holder``/``lease_until`` are the claim: which process works on the row,
    and until when its lease holds without a heartbeat.
    """
    db.execute(
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            code TEXT NOT NULL,
            module TEXT NOT NULL,
            state TEXT NOT NULL,
            package_url TEXT NOT NULL,
            request TEXT NOT NULL,
            operator TEXT NOT NULL,
            bytes_received INTEGER NOT NULL DEFAULT 0,
            bytes_total INTEGER,
            result TEXT,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            holder TEXT,
            lease_until REAL,
            attempts INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE INDEX jobs_state_created ON jobs (state, created)")
    db.execute(
        """CREATE TABLE uploads (
            id TEXT PRIMARY KEY,
            code TEXT NOT NULL,
            module TEXT NOT NULL,
            length INTEGER NOT NULL,
            upload_offset INTEGER NOT NULL DEFAULT 0,
            metadata TEXT NOT NULL,
            operator TEXT NOT NULL,
            state TEXT NOT NULL,
            storage_state TEXT NOT NULL DEFAULT '{}',
            result TEXT,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            expires REAL NOT NULL,
            holder TEXT,
            lease_until REAL
        )"""
    )
    db.execute("CREATE INDEX uploads_expires ON uploads (expires)")


#: Migrations in order; PRAGMA user_version records how many have run.
#: Append only: a database records how many of these it has applied.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _schema_v1, _integrity_marks_v2, _jobs_and_uploads_v3,
]


class Database:
    """Thread-local SQLite connections to one file, migrated on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._migrate_lock = threading.Lock()
        self._migrated = False

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use :meth:`transaction` to write)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        if not self._migrated:
            self._migrate(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._migrate_lock:
            if self._migrated:
                return
            with self.transaction(conn):
                done = conn.execute("PRAGMA user_version").fetchone()[0]
                db = sqlite_utils.Database(conn)
                for number, migration in enumerate(MIGRATIONS[done:], start=done + 1):
                    migration(db)
                    conn.execute(f"PRAGMA user_version = {number}")
            self._migrated = True

    @contextmanager
    def transaction(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock is taken up front,
        so a read-then-write inside cannot race another writer."""
        conn = conn or self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def check(self) -> None:
        """Raise ``sqlite3.Error`` unless the database answers."""
        self.connection().execute("SELECT 1 FROM packages LIMIT 1").fetchall()

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
