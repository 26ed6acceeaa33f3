"""Built-in plugin ``store_sqlite``: the record store in one SQLite file (the embedded default).

Chosen when ``[database] url`` is empty; the file is ``[database] path``.
One connection per worker thread (SQLite connections must not be shared
across threads), all in WAL mode, so readers never wait for the writer and
writers queue on SQLite's lock for up to ``[database] timeout`` seconds, then
fail with ``DatabaseUnavailable``. Every write is a ``BEGIN IMMEDIATE``
transaction: the write lock is taken up front, so a read-then-write inside
cannot race another writer, in this process or another.

Times are stored as UTC ``YYYY-MM-DD HH:MM:SS.ffffff`` text (fixed width, so
it sorts like the times it names); databases made before the store became a
plugin open unchanged (their ``PRAGMA user_version`` is migration 1 or 2).
"""

from __future__ import annotations

import builtins
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.catalog import PackageDetails, Summary
from registry.errors import (
    DatabaseUnavailable,
    InsufficientStorage,
    PackageAlreadyExists,
    PackageNotFound,
)
from registry.hookspecs import hookimpl
from registry.leases import local_prefix
from registry.records import (
    CANCELLED,
    COMPLETING,
    DELIVERED,
    FAILED,
    FINISHED_STATES,
    JOB_STATES,
    OUTBOX_STATES,
    PENDING,
    QUEUED,
    RECEIVING,
    RUNNING,
    AuditEvent,
    CommitResult,
    Credential,
    Delivery,
    Job,
    NewCredential,
    NewJob,
    NewOutboxEvent,
    NewPackage,
    NewUpload,
    Order,
    Outcome,
    PageKey,
    Record,
    Upload,
    utc_now,
)
from registry.settings import Settings
from registry.staging import check_free_space
from registry.store import (
    Migration,
    RecordStore,
    decide,
    job_claimable,
    keyset_order,
    upload_lockable,
)
from registry_plugins.sqlite_wal_sync import WalSync

if TYPE_CHECKING:
    import sqlite_utils

TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
#: SQLite virtual-machine steps between deadline checks (well under a millisecond)
PROGRESS_STEPS = 10_000


def to_text(moment: datetime) -> str:
    """A time as stored: UTC, fixed width."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def from_text(stored: str) -> datetime:
    """A stored time back as an aware UTC datetime (also reads ISO 8601 with an offset).

    ``fromisoformat`` reads :data:`TIME_FORMAT` itself, seven times faster
    than ``strptime``: building a page of records is mostly parsing its times,
    and it holds the GIL the event loop needs.
    """
    moment = datetime.fromisoformat(stored)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _optional_time(stored: str | None) -> datetime | None:
    return from_text(stored) if stored is not None else None


def _optional_text(moment: datetime | None) -> str | None:
    return to_text(moment) if moment is not None else None


# -- migrations ----------------------------------------------------------------


def _schema_v1(db: sqlite_utils.Database) -> None:
    db.table("packages").create(
        {
            "id": int, "code": str, "module": str, "version": str, "package_name": str,
            "package_size": int, "sha256": str, "blob_key": str, "format": str, "file_name": str,
            "origin": str, "source_url": str, "is_deleted": int, "revived": int, "deleted_at": str,
            "created": str, "updated": str, "operator": str,
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
            "id": int, "kind": str, "name": str, "secret_hash": str, "hint": str, "apps": str,
            "read_only": int, "created": str, "revoked_at": str,
        },
        pk="id",
        not_null={"kind", "name", "secret_hash", "apps", "read_only", "created"},
        defaults={"read_only": 0, "apps": "[]", "hint": ""},
    )
    db.table("credentials").create_index(["secret_hash"], unique=True)


def _integrity_marks_v2(db: sqlite_utils.Database) -> None:
    """``broken`` (why fsck found the blob bad) and ``purged_at`` (when gc removed it)."""
    db.table("packages").add_column("broken", str)
    db.table("packages").add_column("purged_at", str)


def _events_v3(db: sqlite_utils.Database) -> None:
    """The audit trail, once made by the audit plugin itself: kept if it exists."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
        " time TEXT NOT NULL, operator TEXT NOT NULL, code TEXT NOT NULL, module TEXT NOT NULL,"
        " package_id INTEGER NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " package_size INTEGER NOT NULL, payload TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS events_code ON events (code, id)")


def _browse_v4(db: sqlite_utils.Database) -> None:
    """What browsing reads without touching blobs.

    - ``package_details``: per record, the ``app_desc.yaml`` text (capped) and
      the first member paths, captured at ingest, replaced with the bytes;
    - an index on (code, module, is_deleted, updated) from which the
      per-application and per-module summaries (counts, last upload) are read
      without visiting the table.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS package_details (package_id INTEGER PRIMARY KEY"
        " REFERENCES packages (id), app_desc TEXT, app_desc_truncated INTEGER NOT NULL DEFAULT 0,"
        " member_paths TEXT NOT NULL DEFAULT '[]', members INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS packages_browse ON packages (code, module, is_deleted, updated)")


def _pages_and_search_v5(db: sqlite_utils.Database) -> None:
    """Indexes that answer a module's listing in each order, and a trigram text index for search.

    Partial indexes on live records (``is_deleted = 0``, what a listing shows
    by default) so the count is an index-only scan and any keyset page one
    index seek. ``packages_text`` is an FTS5 trigram index over version and
    package name, kept in step by triggers; a search of three or more
    characters reads its hits instead of scanning the module.
    """
    for column in ("created", "version", "package_size", "updated"):
        db.execute(f"CREATE INDEX IF NOT EXISTS packages_live_{column} ON packages"
                   f" (code, module, {column}) WHERE is_deleted = 0")
    db.execute("CREATE VIRTUAL TABLE packages_text USING fts5(version, package_name, content='packages',"
               " content_rowid='id', tokenize='trigram')")
    db.execute("CREATE TRIGGER packages_text_insert AFTER INSERT ON packages BEGIN"
               " INSERT INTO packages_text (rowid, version, package_name)"
               " VALUES (new.id, new.version, new.package_name); END")
    db.execute("CREATE TRIGGER packages_text_delete AFTER DELETE ON packages BEGIN"
               " INSERT INTO packages_text (packages_text, rowid, version, package_name)"
               " VALUES ('delete', old.id, old.version, old.package_name); END")
    db.execute("CREATE TRIGGER packages_text_update AFTER UPDATE OF version, package_name ON packages BEGIN"
               " INSERT INTO packages_text (packages_text, rowid, version, package_name)"
               " VALUES ('delete', old.id, old.version, old.package_name);"
               " INSERT INTO packages_text (rowid, version, package_name)"
               " VALUES (new.id, new.version, new.package_name); END")
    db.execute("INSERT INTO packages_text (packages_text) VALUES ('rebuild')")


def _credential_expiry_v6(db: sqlite_utils.Database) -> None:
    """``expires_at`` (from when a credential answers 401) and ``last_used``
    (about when it last authenticated a request) on credentials.

    Columns already there are kept: a database from a development build that
    numbered this change 3 has them and reaches here through ``_events_v3``.
    """
    present = set(db.table("credentials").columns_dict)
    for name in ("expires_at", "last_used"):
        if name not in present:
            db.table("credentials").add_column(name, str)


def _jobs_and_uploads_v7(db: sqlite_utils.Database) -> None:
    """Background jobs and resumable uploads. ``holder``/``lease_until`` are
    the claim: which process works on the row, and until when its lease holds."""
    db.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, code TEXT NOT NULL, module TEXT NOT NULL,"
        " state TEXT NOT NULL, package_url TEXT NOT NULL, request TEXT NOT NULL, operator TEXT NOT NULL,"
        " bytes_received INTEGER NOT NULL DEFAULT 0, bytes_total INTEGER, result TEXT,"
        " created TEXT NOT NULL, updated TEXT NOT NULL, holder TEXT, lease_until TEXT,"
        " attempts INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE INDEX jobs_state_created ON jobs (state, created)")
    db.execute(
        "CREATE TABLE uploads (id TEXT PRIMARY KEY, code TEXT NOT NULL, module TEXT NOT NULL,"
        " length INTEGER NOT NULL, upload_offset INTEGER NOT NULL DEFAULT 0, metadata TEXT NOT NULL,"
        " operator TEXT NOT NULL, state TEXT NOT NULL, storage_state TEXT NOT NULL DEFAULT '{}',"
        " result TEXT, created TEXT NOT NULL, updated TEXT NOT NULL, expires TEXT NOT NULL,"
        " holder TEXT, lease_until TEXT)"
    )
    db.execute("CREATE INDEX uploads_expires ON uploads (expires)")


def _module_counts_v8(db: sqlite_utils.Database) -> None:
    """``module_counts``: each module's live and soft-deleted records, so a
    listing's count and the applications and modules summaries read one row
    per module instead of counting the module's records.

    Triggers on ``packages`` keep it in step inside the very transaction of
    every insert, update of ``is_deleted`` (delete, restore, revive) and
    delete, whichever code path writes (commit, import, a restored backup's
    later writes). A module's row exists while it has any record.
    ``application_counts`` (modules per code, a row while the code has any)
    and the one-row ``application_total`` follow it the same way, so the
    applications listing's count is one row too.
    """
    db.execute(
        "CREATE TABLE module_counts (code TEXT NOT NULL, module TEXT NOT NULL,"
        " live INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (code, module)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO module_counts (code, module, live, deleted)"
               " SELECT code, module, SUM(is_deleted = 0), SUM(is_deleted <> 0) FROM packages GROUP BY code, module")
    add = ("INSERT OR IGNORE INTO module_counts (code, module) VALUES (new.code, new.module);"
           " UPDATE module_counts SET live = live + (new.is_deleted = 0), deleted = deleted + (new.is_deleted <> 0)"
           " WHERE code = new.code AND module = new.module;")
    remove = ("UPDATE module_counts SET live = live - (old.is_deleted = 0), deleted = deleted - (old.is_deleted <> 0)"
              " WHERE code = old.code AND module = old.module;"
              " DELETE FROM module_counts WHERE code = old.code AND module = old.module AND live = 0 AND deleted = 0;")
    db.execute(f"CREATE TRIGGER module_counts_insert AFTER INSERT ON packages BEGIN {add} END")
    db.execute(f"CREATE TRIGGER module_counts_delete AFTER DELETE ON packages BEGIN {remove} END")
    db.execute("CREATE TRIGGER module_counts_update AFTER UPDATE OF is_deleted, code, module ON packages"
               " WHEN (old.is_deleted <> 0) IS NOT (new.is_deleted <> 0) OR old.code IS NOT new.code"
               f" OR old.module IS NOT new.module BEGIN {remove} {add} END")
    # an application is a code with a module row: its modules, and how many there are
    db.execute("CREATE TABLE application_counts (code TEXT PRIMARY KEY, modules INTEGER NOT NULL) WITHOUT ROWID")
    db.execute("CREATE TABLE application_total (id INTEGER PRIMARY KEY CHECK (id = 1),"
               " applications INTEGER NOT NULL)")
    db.execute("INSERT INTO application_counts (code, modules) SELECT code, COUNT(*) FROM module_counts GROUP BY code")
    db.execute("INSERT INTO application_total (id, applications) SELECT 1, COUNT(*) FROM application_counts")
    db.execute("CREATE TRIGGER application_counts_add AFTER INSERT ON module_counts BEGIN"
               " INSERT OR IGNORE INTO application_counts (code, modules) VALUES (new.code, 0);"
               " UPDATE application_counts SET modules = modules + 1 WHERE code = new.code; END")
    db.execute("CREATE TRIGGER application_counts_remove AFTER DELETE ON module_counts BEGIN"
               " UPDATE application_counts SET modules = modules - 1 WHERE code = old.code;"
               " DELETE FROM application_counts WHERE code = old.code AND modules = 0; END")
    db.execute("CREATE TRIGGER application_total_add AFTER INSERT ON application_counts BEGIN"
               " UPDATE application_total SET applications = applications + 1; END")
    db.execute("CREATE TRIGGER application_total_remove AFTER DELETE ON application_counts BEGIN"
               " UPDATE application_total SET applications = applications - 1; END")
def _outbox_v9(db: sqlite_utils.Database) -> None:
    """The webhook outbox: one row per event and target (a URL's sha256, never
    the URL). ``holder``/``lease_until`` are the claim of the delivering process."""
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,"
        " target TEXT NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL, updated TEXT NOT NULL,"
        " next_attempt TEXT NOT NULL, holder TEXT, lease_until TEXT, last_error TEXT,"
        " UNIQUE (event_id, target))"
    )
    # the head of each target's queue, read by every claim
    db.execute("CREATE INDEX outbox_pending ON outbox (target, id) WHERE state = 'pending'")
    db.execute("CREATE INDEX outbox_finished ON outbox (updated) WHERE state <> 'pending'")


#: Append only: ``PRAGMA user_version`` records how many have run.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("packages and credentials tables", _schema_v1),
    ("broken and purged_at marks on packages", _integrity_marks_v2),
    ("events table", _events_v3),
    ("package_details table and browse index", _browse_v4),
    ("listing indexes on live records, trigram search index", _pages_and_search_v5),
    ("expires_at and last_used on credentials", _credential_expiry_v6),
    ("jobs and uploads tables", _jobs_and_uploads_v7),
    ("module_counts, application_counts and application_total kept by triggers", _module_counts_v8),
    ("webhook outbox table", _outbox_v9),
]

#: The trigram index finds substrings of at least this many characters;
#: shorter search terms are matched by scanning the module.
TRIGRAM = 3

#: The newest ``updated`` of a live record of the module of counter row ``m``
#: (one seek in the partial index ``packages_live_updated``).
_LAST_LIVE = ("(SELECT MAX(updated) FROM packages AS p WHERE p.code = m.code AND p.module = m.module"
              " AND p.is_deleted = 0)")

#: The file a backup folder holds (``registry backup``).
BACKUP_FILE = "registry.db"


# -- the store --------------------------------------------------------------------



def _record(row: sqlite3.Row) -> Record:
    data = dict(row)
    data.pop("total", None)
    data["is_deleted"] = bool(data["is_deleted"])
    data["revived"] = bool(data["revived"])
    for name in ("created", "updated"):
        data[name] = from_text(data[name])
    for name in ("deleted_at", "purged_at"):
        data[name] = _optional_time(data[name])
    return Record(**data)


def _credential(row: sqlite3.Row) -> Credential:
    return Credential(
        id=row["id"], kind=row["kind"], name=row["name"], secret_hash=row["secret_hash"], hint=row["hint"],
        apps=json.loads(row["apps"]), read_only=bool(row["read_only"]), created=from_text(row["created"]),
        revoked_at=_optional_time(row["revoked_at"]), expires_at=_optional_time(row["expires_at"]),
        last_used=_optional_time(row["last_used"]),
    )


def _event(row: sqlite3.Row) -> AuditEvent:
    return AuditEvent(
        id=row["id"], kind=row["kind"], time=from_text(row["time"]), operator=row["operator"],
        code=row["code"], module=row["module"], package_id=row["package_id"], version=row["version"],
        sha256=row["sha256"], package_size=row["package_size"], payload=json.loads(row["payload"]),
    )


def _details(row: sqlite3.Row) -> PackageDetails:
    return PackageDetails(row["app_desc"], bool(row["app_desc_truncated"]),
                          list(json.loads(row["member_paths"])), int(row["members"]))


def _like(term: str) -> str:
    """A LIKE pattern (``ESCAPE '\\'``) matching ``term`` literally anywhere."""
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _save_details(conn: sqlite3.Connection, package_id: int, details: PackageDetails | None) -> None:
    """Replace record ``package_id``'s details (None: drop them), inside the caller's transaction."""
    if details is None:
        conn.execute("DELETE FROM package_details WHERE package_id = ?", (package_id,))
        return
    conn.execute(
        "INSERT OR REPLACE INTO package_details (package_id, app_desc, app_desc_truncated, member_paths, members)"
        " VALUES (?, ?, ?, ?, ?)",
        (package_id, details.app_desc, int(details.app_desc_truncated),
         json.dumps(details.member_paths, ensure_ascii=False), details.members),
    )


def _optional_json(stored: str | None) -> Any:
    return json.loads(stored) if stored else None


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], code=row["code"], module=row["module"], state=row["state"],
        package_url=row["package_url"], request=json.loads(row["request"]), operator=row["operator"],
        bytes_received=row["bytes_received"], bytes_total=row["bytes_total"],
        result=_optional_json(row["result"]), created=from_text(row["created"]),
        updated=from_text(row["updated"]), holder=row["holder"],
        lease_until=_optional_time(row["lease_until"]), attempts=row["attempts"],
    )


def _upload(row: sqlite3.Row) -> Upload:
    return Upload(
        id=row["id"], code=row["code"], module=row["module"], length=row["length"],
        offset=row["upload_offset"], metadata=json.loads(row["metadata"]), operator=row["operator"],
        state=row["state"], storage_state=json.loads(row["storage_state"] or "{}"),
        result=_optional_json(row["result"]), created=from_text(row["created"]),
        updated=from_text(row["updated"]), expires=from_text(row["expires"]), holder=row["holder"],
        lease_until=_optional_time(row["lease_until"]),
    )


def _job_row(job: Job) -> dict[str, Any]:
    return {**job.__dict__, "request": json.dumps(job.request),
            "result": json.dumps(job.result) if job.result is not None else None,
            "created": to_text(job.created), "updated": to_text(job.updated),
            "lease_until": to_text(job.lease_until) if job.lease_until else None}


def _upload_row(upload: Upload) -> dict[str, Any]:
    values = {**upload.__dict__, "metadata": json.dumps(upload.metadata),
              "storage_state": json.dumps(upload.storage_state),
              "result": json.dumps(upload.result) if upload.result is not None else None,
              "created": to_text(upload.created), "updated": to_text(upload.updated),
              "expires": to_text(upload.expires),
              "lease_until": to_text(upload.lease_until) if upload.lease_until else None}
    values["upload_offset"] = values.pop("offset")
    return values




def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"], event_id=row["event_id"], target=row["target"], payload=json.loads(row["payload"]),
        state=row["state"], attempts=row["attempts"], created=from_text(row["created"]),
        updated=from_text(row["updated"]), next_attempt=from_text(row["next_attempt"]), holder=row["holder"],
        lease_until=_optional_time(row["lease_until"]), last_error=row["last_error"],
    )


def _delivery_row(delivery: Delivery) -> dict[str, Any]:
    return {**delivery.__dict__, "payload": json.dumps(delivery.payload, ensure_ascii=False),
            "created": to_text(delivery.created), "updated": to_text(delivery.updated),
            "next_attempt": to_text(delivery.next_attempt), "lease_until": _optional_text(delivery.lease_until)}


_UNAVAILABLE_HINTS = ("interrupted", "locked", "busy", "unable to open", "disk", "full", "readonly", "i/o")


@contextmanager
def _translated() -> Iterator[None]:
    """Raise the database's own failures as ``DatabaseUnavailable`` (503, retry)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if any(hint in str(exc).lower() for hint in _UNAVAILABLE_HINTS):
            raise DatabaseUnavailable(str(exc)) from exc
        raise
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            raise
        raise DatabaseUnavailable(str(exc)) from exc


#: A wait for this process's writer lock longer than this (seconds) is taken
#: off the wait for SQLite's: shorter ones are not worth a statement.
LOCK_WAIT_NOTED = 0.1


class SQLiteStore(RecordStore):
    """Thread-local connections to one SQLite file."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.description = f"sqlite {path}"
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _connections
        self._migrate_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._migrated = False
        self._wal_sync = WalSync(path)
        # Writers of this process take turns here before BEGIN IMMEDIATE: one
        # that waited on SQLite's own lock would sleep in its busy handler
        # (1, 2, 5 ... 25 ms at a time) however soon the lock came free, while
        # this lock hands over the moment the writer before it commits.
        # Other processes still queue on SQLite's lock (busy_timeout).
        self._writer_lock = threading.Lock()

    def _past_deadline(self) -> int:
        return int(time.monotonic() > getattr(self._local, "deadline", math.inf))

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        """Reads inside may run for ``timeout`` seconds (the statement timeout)."""
        self._local.deadline = time.monotonic() + self.timeout
        try:
            yield
        finally:
            self._local.deadline = math.inf

    # -- connections -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.timeout)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            wal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
            # In WAL mode a COMMIT does not sync; _write syncs the log after
            # it, outside the write lock, one flush for all who committed
            # meanwhile (see plugins/sqlite_wal_sync.py). Any other journal
            # (a file system without shared memory) syncs at COMMIT.
            conn.execute(f"PRAGMA synchronous = {'NORMAL' if wal else 'FULL'}")
            self._local.group_commit = wal
            conn.execute("PRAGMA foreign_keys = ON")
            # a read running past its deadline is interrupted ("interrupted",
            # 503 DATABASE_UNAVAILABLE) instead of holding its thread
            conn.set_progress_handler(self._past_deadline, PROGRESS_STEPS)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, the schema migrated (once per process)."""
        conn = self._connect()
        if not self._migrated:
            self.migrate()
        return conn

    @contextmanager
    def _write(self, durable: bool = True, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` on this thread's connection; rolled back on any error.

        Writers of this process queue on one lock first (at most ``timeout``
        seconds, like SQLite's own), so that only one of them at a time waits
        on the database's write lock.

        :param durable: False for a commit that may be lost to a power failure
            (never half-applied): it returns without waiting for the log to
            reach the disk (the next durable commit's flush takes it along).
            Only for what a crash of the machine makes moot anyway.
        :param wait: False to fail at once when another writer of this process
            holds the lock (the connection's ``busy_timeout`` decides the wait
            for other processes).
        :raises DatabaseUnavailable: the lock stayed taken (``database is locked``).
        """
        with _translated():
            conn = self._conn()
            waited = self._take_writer_lock(wait)
            try:
                if waited > LOCK_WAIT_NOTED:
                    # the whole wait, both locks, stays within the timeout
                    left = max(0.0, self.timeout - waited)
                    conn.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                    finally:
                        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                else:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                self._writer_lock.release()
        if durable:
            self._durable()

    def _take_writer_lock(self, wait: bool) -> float:
        """Take this process's writer lock; the seconds spent waiting for it.

        :raises DatabaseUnavailable: it stayed taken for ``timeout`` seconds,
            or at all when not ``wait``.
        """
        if self._writer_lock.acquire(blocking=False):
            return 0.0
        started = time.monotonic()
        if not wait or not self._writer_lock.acquire(timeout=self.timeout):
            raise DatabaseUnavailable("database is locked (by another writer of this process)")
        return time.monotonic() - started

    def _durable(self) -> None:
        """Return once what this thread just committed is on disk (the WAL flushed)."""
        if not getattr(self._local, "group_commit", False):
            return  # synchronous = FULL: COMMIT synced it
        try:
            self._wal_sync.commit_done()
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot sync the database's log: {exc.strerror}") from exc

    def _rows(self, sql: str, params: tuple[Any, ...] | builtins.list[Any] = ()) -> builtins.list[sqlite3.Row]:
        with _translated(), self._deadline():
            return self._conn().execute(sql, params).fetchall()

    # -- life cycle ----------------------------------------------------------------

    def _applied(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def pending_migrations(self) -> builtins.list[Migration]:
        if not self.path.exists():  # creates nothing: a missing file has every migration pending
            done = 0
        else:
            with _translated():
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout)
                try:
                    done = self._applied(conn)
                finally:
                    conn.close()
        return [Migration(number, name) for number, (name, _) in enumerate(MIGRATIONS, start=1)
                if number > done]

    def migrate(self) -> builtins.list[Migration]:
        # a migration (building an index over every row) is not a query: no deadline
        deadline = getattr(self._local, "deadline", math.inf)
        self._local.deadline = math.inf
        try:
            return self._migrate()
        finally:
            self._local.deadline = deadline

    def _migrate(self) -> builtins.list[Migration]:
        with self._migrate_lock:
            if self._migrated:
                return []
            applied: builtins.list[Migration] = []
            with _translated():
                conn = self._connect()
                # Up to date, as on every start but the first after an upgrade
                # (user_version only grows): no lock to take, nothing to flush.
                if self._applied(conn) >= len(MIGRATIONS):
                    self._migrated = True
                    return applied
                # Only migrations use sqlite-utils: its import (about 20 ms)
                # stays off the start of an up-to-date store.
                import sqlite_utils

                # BEGIN IMMEDIATE: one process at a time; the others wait on the
                # lock, then read the new user_version and find nothing to do.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    done = self._applied(conn)
                    db = sqlite_utils.Database(conn)
                    for number, (name, migration) in enumerate(MIGRATIONS[done:], start=done + 1):
                        migration(db)
                        conn.execute(f"PRAGMA user_version = {number}")
                        applied.append(Migration(number, name))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            self._durable()
            self._migrated = True
            return applied

    def check(self) -> None:
        self._rows("SELECT 1 FROM packages LIMIT 1")
        # a full disk still lets reads through but fails every write: not ready
        try:
            check_free_space(self.path.parent)
        except InsufficientStorage as exc:
            raise DatabaseUnavailable("the database's disk is full") from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- packages -------------------------------------------------------------------

    def _one(self, sql: str, params: tuple[Any, ...], conn: sqlite3.Connection | None = None) -> Record | None:
        if conn is None:
            rows = self._rows(sql, params)
            row = rows[0] if rows else None
        else:
            row = conn.execute(sql, params).fetchone()
        return _record(row) if row else None

    def get(self, code: str, module: str, package_id: int) -> Record | None:
        return self._one("SELECT * FROM packages WHERE id = ? AND code = ? AND module = ?",
                         (package_id, code, module))

    def find_version(self, code: str, module: str, version: str) -> Record | None:
        return self._one("SELECT * FROM packages WHERE code = ? AND module = ? AND version = ?",
                         (code, module, version))

    @staticmethod
    def _by_id(conn: sqlite3.Connection, package_id: int | None) -> Record:
        return _record(conn.execute("SELECT * FROM packages WHERE id = ?", (package_id,)).fetchone())

    def commit(self, new: NewPackage, allow_overwrite: bool) -> CommitResult:
        now = to_text(utc_now())
        with self._write() as conn:
            existing = self._one("SELECT * FROM packages WHERE code = ? AND module = ? AND version = ?",
                                 (new.code, new.module, new.version), conn)
            outcome = decide(existing, new, allow_overwrite)
            if existing is None:
                # the row as stored, in the same statement: each statement
                # inside the write lock is one more turn for the GIL while
                # the other writers of this process wait for the lock
                inserted = _record(conn.execute(
                    "INSERT INTO packages (code, module, version, package_name, package_size, sha256,"
                    " blob_key, format, file_name, origin, source_url, is_deleted, revived, created,"
                    " updated, operator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?) RETURNING *",
                    (new.code, new.module, new.version, new.package_name, new.package_size, new.sha256,
                     new.blob_key, new.format, new.file_name, new.origin, new.source_url, now, now,
                     new.operator),
                ).fetchall()[0])
                if new.details is not None:
                    _save_details(conn, inserted.id, new.details)
                return CommitResult(outcome, inserted, None)
            if outcome is Outcome.IDENTICAL:
                return CommitResult(outcome, existing, new.blob_key)
            conn.execute(
                "UPDATE packages SET package_name = ?, package_size = ?, sha256 = ?, blob_key = ?,"
                " format = ?, file_name = ?, origin = ?, source_url = ?, is_deleted = 0,"
                " revived = ?, deleted_at = NULL, broken = NULL, purged_at = NULL, updated = ?,"
                " operator = ? WHERE id = ?",
                (new.package_name, new.package_size, new.sha256, new.blob_key, new.format,
                 new.file_name, new.origin, new.source_url, int(existing.is_deleted or existing.revived),
                 now, new.operator, existing.id),
            )
            _save_details(conn, existing.id, new.details)
            return CommitResult(outcome, self._by_id(conn, existing.id), existing.blob_key)

    def _for_update(self, conn: sqlite3.Connection, code: str, module: str, package_id: int) -> Record:
        record = self._one("SELECT * FROM packages WHERE id = ? AND code = ? AND module = ?",
                           (package_id, code, module), conn)
        if record is None:
            raise PackageNotFound(f"id {package_id}")
        return record

    def soft_delete(self, code: str, module: str, package_id: int) -> tuple[Record, bool]:
        with self._write() as conn:
            record = self._for_update(conn, code, module, package_id)
            if record.is_deleted:
                return record, False
            now = to_text(utc_now())
            conn.execute("UPDATE packages SET is_deleted = 1, revived = 0, deleted_at = ?, updated = ?"
                         " WHERE id = ?", (now, now, record.id))
            return self._by_id(conn, record.id), True

    def restore(self, code: str, module: str, package_id: int) -> tuple[Record, bool]:
        with self._write() as conn:
            record = self._for_update(conn, code, module, package_id)
            if not record.is_deleted:
                if record.revived:
                    raise PackageAlreadyExists(
                        f"version {record.version!r} was uploaded again after it was deleted",
                        data={"sha256_signature": record.sha256},
                    )
                return record, False
            if record.purged_at is not None:
                raise PackageNotFound(f"id {package_id}: its bytes were removed by gc")
            conn.execute("UPDATE packages SET is_deleted = 0, deleted_at = NULL, updated = ? WHERE id = ?",
                         (to_text(utc_now()), record.id))
            return self._by_id(conn, record.id), True

    def list(
        self,
        code: str,
        module: str,
        *,
        search_term: str = "",
        order_by: Order = Order.CREATED_DESC,
        limit: int = 100,
        offset: int = 0,
        include_deleted: bool = False,
        after: PageKey | None = None,
        backward: bool = False,
    ) -> tuple[int, builtins.list[Record]]:
        if "\x00" in search_term:
            return 0, []  # no stored text holds NUL: see RecordStore.list
        where = ["code = ?", "module = ?"]
        params: builtins.list[Any] = [code, module]
        if not include_deleted:
            where.append("is_deleted = 0")  # exactly the partial indexes' condition
        text = ""
        if search_term:
            pattern = _like(search_term)
            # LIKE stays the judge of what matches (ASCII case folded, literal
            # % and _); the trigram index only narrows the rows it looks at.
            where.append("(version LIKE ? ESCAPE '\\' OR package_name LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
            if len(search_term) >= TRIGRAM:
                text = '"' + search_term.replace('"', '""') + '"'
        clause = " AND ".join(where)
        operator, order_sql = keyset_order(order_by, backward)
        page_where, page_params = clause, list(params)
        if after is not None:
            value = to_text(after.value) if isinstance(after.value, datetime) else after.value
            page_where += f" AND ({order_by.column}, id) {operator} (?, ?)"
            page_params += [value, after.id]
        if text:
            # the hits drive the join (CROSS JOIN fixes the loop order); the
            # count rides along on every row of the page, one pass for both
            source = ("packages_hits CROSS JOIN packages ON packages.id = packages_hits.rowid")
            prefix = "WITH packages_hits AS (SELECT rowid FROM packages_text WHERE packages_text MATCH ?) "
            count_sql = f"{prefix}SELECT COUNT(*) FROM {source} WHERE {clause}"
            page_sql = (f"{prefix}SELECT packages.*, COUNT(*) OVER () AS total FROM {source}"
                        f" WHERE {page_where} ORDER BY {order_sql} LIMIT ? OFFSET ?")
            count_params, page_params = [text, *params], [text, *page_params]
        elif search_term:
            count_sql = f"SELECT COUNT(*) FROM packages WHERE {clause}"
            page_sql = f"SELECT * FROM packages WHERE {page_where} ORDER BY {order_sql} LIMIT ? OFFSET ?"
            count_params = params
        else:
            # the module's counter row (kept by triggers), not its records
            wanted = "live + deleted" if include_deleted else "live"
            count_sql = (f"SELECT COALESCE((SELECT {wanted} FROM module_counts"
                         " WHERE code = ? AND module = ?), 0)")
            page_sql = f"SELECT * FROM packages WHERE {page_where} ORDER BY {order_sql} LIMIT ? OFFSET ?"
            count_params = [code, module]
        with _translated(), self._deadline():
            conn = self._conn()
            # one read transaction: the count and the page see the same snapshot
            conn.execute("BEGIN")
            try:
                rows = conn.execute(page_sql, [*page_params, limit, offset]).fetchall()
                if text and after is None and rows:
                    count = rows[0]["total"]
                else:
                    count = conn.execute(count_sql, count_params).fetchone()[0]
            finally:
                conn.execute("COMMIT")
        records = [_record(row) for row in rows]
        return int(count), records[::-1] if backward else records

    # -- browsing ---------------------------------------------------------------------

    def applications(
        self,
        *,
        apps: frozenset[str] = frozenset(),
        search_term: str = "",
        limit: int = 100,
        offset: int = 0,
        after: str | None = None,
        backward: bool = False,
    ) -> tuple[int, builtins.list[Summary]]:
        if "\x00" in search_term:
            return 0, []  # no stored text holds NUL: see RecordStore.list
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if apps:
            where.append(f"code IN ({', '.join('?' for _ in apps)})")
            params += sorted(apps)
        if search_term:
            where.append("code LIKE ? ESCAPE '\\'")
            params.append(_like(search_term))
        page_where, page_params = list(where), list(params)
        if after is not None:
            page_where.append("code < ?" if backward else "code > ?")
            page_params.append(after)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        page_clause = ("WHERE " + " AND ".join(page_where)) if page_where else ""
        count_sql = (f"SELECT COUNT(*) FROM application_counts {clause}" if where
                     else "SELECT applications FROM application_total")
        # one counter row per module (the table's key is (code, module)): a
        # page groups the rows of ``limit`` codes; each module's last upload
        # is one seek in its live-records index
        with _translated(), self._deadline():
            conn = self._conn()
            conn.execute("BEGIN")  # the count and the page see the same snapshot
            try:
                count = conn.execute(count_sql, params).fetchone()[0]
                rows = conn.execute(
                    f"SELECT code, COUNT(*), SUM(live), MAX({_LAST_LIVE}) FROM module_counts AS m {page_clause}"
                    f" GROUP BY code ORDER BY code {'DESC' if backward else 'ASC'} LIMIT ? OFFSET ?",
                    [*page_params, limit, offset],
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        summaries = [Summary(row[0], int(row[1]), int(row[2] or 0), _optional_time(row[3])) for row in rows]
        return int(count), summaries[::-1] if backward else summaries

    def modules(self, code: str) -> builtins.list[Summary]:
        rows = self._rows(f"SELECT module, live, {_LAST_LIVE} FROM module_counts AS m WHERE code = ? ORDER BY module",
                          (code,))
        return [Summary(row[0], 0, int(row[1] or 0), _optional_time(row[2])) for row in rows]

    def package_details(self, package_id: int) -> PackageDetails | None:
        rows = self._rows("SELECT * FROM package_details WHERE package_id = ?", (package_id,))
        return _details(rows[0]) if rows else None

    def package_events(self, code: str, module: str, package_id: int,
                       limit: int = 200) -> builtins.list[AuditEvent]:
        rows = self._rows(
            "SELECT * FROM (SELECT * FROM events WHERE package_id = ? AND code = ? AND module = ?"
            " ORDER BY id DESC LIMIT ?) ORDER BY id",
            (package_id, code, module, limit),
        )
        return [_event(row) for row in rows]

    # -- maintenance -----------------------------------------------------------------

    def all_blob_keys(self) -> set[str]:
        return {row[0] for row in self._rows("SELECT blob_key FROM packages WHERE purged_at IS NULL")}

    def is_blob_referenced(self, key: str) -> bool:
        return bool(self._rows("SELECT 1 FROM packages WHERE blob_key = ? AND purged_at IS NULL", (key,)))

    def page_by_id(self, after_id: int, limit: int) -> builtins.list[Record]:
        rows = self._rows("SELECT * FROM packages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [_record(row) for row in rows]

    def blob_totals(self) -> tuple[int, int]:
        row = self._rows("SELECT COUNT(*), COALESCE(SUM(package_size), 0) FROM packages WHERE purged_at IS NULL")[0]
        return int(row[0]), int(row[1])

    def set_broken(self, package_id: int, blob_key: str, reason: str | None) -> bool:
        with self._write() as conn:
            cursor = conn.execute("UPDATE packages SET broken = ? WHERE id = ? AND blob_key = ?",
                                  (reason, package_id, blob_key))
            return cursor.rowcount == 1

    def modules_with_more_live_than(self, count: int) -> builtins.list[tuple[str, str]]:
        rows = self._rows("SELECT code, module FROM module_counts WHERE live > ? ORDER BY code, module", (count,))
        return [(row[0], row[1]) for row in rows]

    def purgeable(self, deleted_before: datetime) -> builtins.list[Record]:
        rows = self._rows("SELECT * FROM packages WHERE is_deleted = 1 AND purged_at IS NULL AND deleted_at <= ?"
                          " ORDER BY deleted_at, id", (to_text(deleted_before),))
        return [_record(row) for row in rows]

    def mark_purged(self, record: Record) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE packages SET purged_at = ? WHERE id = ? AND is_deleted = 1"
                " AND blob_key = ? AND purged_at IS NULL",
                (to_text(utc_now()), record.id, record.blob_key),
            )
            return cursor.rowcount == 1

    # -- credentials ---------------------------------------------------------------------

    def add_credential(self, new: NewCredential) -> Credential:
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO credentials (kind, name, secret_hash, hint, apps, read_only, created, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (new.kind, new.name, new.secret_hash, new.hint, json.dumps(sorted(set(new.apps))),
                 int(new.read_only), to_text(utc_now()), _optional_text(new.expires_at)),
            )
            row = conn.execute("SELECT * FROM credentials WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _credential(row)

    def credential_by_hash(self, kind: str, secret_hash: str) -> Credential | None:
        rows = self._rows("SELECT * FROM credentials WHERE secret_hash = ? AND kind = ? AND revoked_at IS NULL",
                          (secret_hash, kind))
        return _credential(rows[0]) if rows else None

    def credential_by_id(self, credential_id: int) -> Credential | None:
        rows = self._rows("SELECT * FROM credentials WHERE id = ? AND revoked_at IS NULL", (credential_id,))
        return _credential(rows[0]) if rows else None

    def credentials_named(self, kind: str, name: str) -> builtins.list[Credential]:
        rows = self._rows("SELECT * FROM credentials WHERE name = ? AND kind = ? AND revoked_at IS NULL",
                          (name, kind))
        return [_credential(row) for row in rows]

    def list_credentials(self) -> builtins.list[Credential]:
        return [_credential(row) for row in self._rows("SELECT * FROM credentials ORDER BY id")]

    def revoke_credential(self, credential_id: int) -> bool:
        with self._write() as conn:
            cursor = conn.execute("UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                  (to_text(utc_now()), credential_id))
            return cursor.rowcount == 1

    def note_credential_use(self, credential_id: int, used: datetime, stale_before: datetime) -> bool:
        with _translated():
            conn = self._conn()
            # no waiting for the write lock: "database is locked" at once (DatabaseUnavailable)
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                with self._write(wait=False) as writing:
                    cursor = writing.execute(
                        "UPDATE credentials SET last_used = ? WHERE id = ? AND (last_used IS NULL OR last_used < ?)",
                        (to_text(used), credential_id, to_text(stale_before)),
                    )
                    return cursor.rowcount == 1
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    # -- events ------------------------------------------------------------------------------

    def add_event(self, event: AuditEvent) -> AuditEvent:
        return self.add_events([event])[0]

    def add_events(self, events: Sequence[AuditEvent]) -> builtins.list[AuditEvent]:
        added = []
        with self._write() as conn:
            for event in events:
                added.append(_event(conn.execute(
                    "INSERT INTO events (kind, time, operator, code, module, package_id, version, sha256,"
                    " package_size, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (event.kind, to_text(event.time), event.operator, event.code, event.module, event.package_id,
                     event.version, event.sha256, event.package_size,
                     json.dumps(event.payload, ensure_ascii=False)),
                ).fetchall()[0]))
        return added

    def recent_events(self, limit: int = 100, code: str | None = None) -> builtins.list[AuditEvent]:
        if code:
            rows = self._rows("SELECT * FROM events WHERE code = ? ORDER BY id DESC LIMIT ?", (code, limit))
        else:
            rows = self._rows("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [_event(row) for row in rows]

    def page_events(self, after_id: int, limit: int) -> builtins.list[AuditEvent]:
        rows = self._rows("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [_event(row) for row in rows]

    # -- copying ------------------------------------------------------------------------------

    def is_empty(self) -> bool:
        return not self._rows("SELECT 1 FROM packages UNION ALL SELECT 1 FROM credentials"
                              " UNION ALL SELECT 1 FROM events UNION ALL SELECT 1 FROM jobs"
                              " UNION ALL SELECT 1 FROM uploads UNION ALL SELECT 1 FROM outbox LIMIT 1")

    def _insert(self, table: str, rows: builtins.list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        names = ", ".join(rows[0])
        marks = ", ".join("?" for _ in rows[0])
        inserted = 0
        with self._write() as conn:
            for values in rows:
                cursor = conn.execute(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})",
                                      list(values.values()))
                inserted += cursor.rowcount
        return inserted

    def import_records(self, records: Sequence[Record]) -> int:
        rows = []
        for record in records:
            values = dict(record.__dict__)
            values["is_deleted"] = int(record.is_deleted)
            values["revived"] = int(record.revived)
            for name in ("created", "updated", "deleted_at", "purged_at"):
                values[name] = to_text(values[name]) if values[name] is not None else None
            rows.append(values)
        return self._insert("packages", rows)

    def page_details(self, after_id: int, limit: int) -> builtins.list[tuple[int, PackageDetails]]:
        rows = self._rows("SELECT * FROM package_details WHERE package_id > ? ORDER BY package_id LIMIT ?",
                          (after_id, limit))
        return [(int(row["package_id"]), _details(row)) for row in rows]

    def import_details(self, package_id: int, details: PackageDetails) -> bool:
        return self._insert("package_details", [{
            "package_id": package_id, "app_desc": details.app_desc,
            "app_desc_truncated": int(details.app_desc_truncated),
            "member_paths": json.dumps(details.member_paths, ensure_ascii=False), "members": details.members,
        }]) == 1

    def import_credentials(self, credentials: Sequence[Credential]) -> int:
        rows = []
        for credential in credentials:
            values = dict(credential.__dict__)
            values["apps"] = json.dumps(credential.apps)
            values["read_only"] = int(credential.read_only)
            values["created"] = to_text(credential.created)
            for name in ("revoked_at", "expires_at", "last_used"):
                values[name] = _optional_text(values[name])
            rows.append(values)
        return self._insert("credentials", rows)

    def import_events(self, events: Sequence[AuditEvent]) -> int:
        rows = []
        for event in events:
            values = dict(event.__dict__)
            values["time"] = to_text(event.time)
            values["payload"] = json.dumps(event.payload, ensure_ascii=False)
            rows.append(values)
        return self._insert("events", rows)

    # -- backup ----------------------------------------------------------------------------------

    def backup_to(self, folder: Path) -> RecordStore:
        """SQLite's online backup into ``folder/registry.db``: one committed
        state, copied while other connections (other processes too) go on
        reading and writing."""
        target = folder / BACKUP_FILE
        partial = folder / (BACKUP_FILE + ".part")
        try:
            with _translated():
                copy = sqlite3.connect(partial)
                try:
                    self._conn().backup(copy)
                finally:
                    copy.close()
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return SQLiteStore(target, timeout=self.timeout)

    def restore_from(self, folder: Path) -> None:
        """Copy ``folder/registry.db`` over this database with the backup API,
        so the WAL and locks stay consistent; an older copy is migrated on
        next use."""
        source_path = folder / BACKUP_FILE
        if not source_path.is_file():
            raise FileNotFoundError(f"{source_path}: no database in the backup")
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _translated():
            source = sqlite3.connect(f"{source_path.resolve().as_uri()}?mode=ro", uri=True)
            target = sqlite3.connect(self.path, timeout=self.timeout)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        with self._migrate_lock:
            self._migrated = False

    def page_jobs(self, after_id: str, limit: int) -> builtins.list[Job]:
        return [_job(row) for row in self._rows("SELECT * FROM jobs WHERE id > ? ORDER BY id LIMIT ?",
                                                (after_id, limit))]

    def import_jobs(self, jobs: Sequence[Job]) -> int:
        return self._insert("jobs", [_job_row(job) for job in jobs])

    def page_uploads(self, after_id: str, limit: int) -> builtins.list[Upload]:
        return [_upload(row) for row in self._rows("SELECT * FROM uploads WHERE id > ? ORDER BY id LIMIT ?",
                                                   (after_id, limit))]

    def import_uploads(self, uploads: Sequence[Upload]) -> int:
        return self._insert("uploads", [_upload_row(upload) for upload in uploads])

    # -- background jobs ---------------------------------------------------------------------

    @staticmethod
    def _job_by_id(conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def create_job(self, new: NewJob) -> Job:
        now = to_text(utc_now())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, code, module, state, package_url, request, operator, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new.id, new.code, new.module, QUEUED, new.package_url, json.dumps(new.request), new.operator,
                 now, now),
            )
            job = self._job_by_id(conn, new.id)
        assert job is not None
        return job

    def get_job(self, code: str, module: str, job_id: str) -> Job | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ? AND code = ? AND module = ?", (job_id, code, module))
        return _job(rows[0]) if rows else None

    def claim_job(self, holder: str, lease_seconds: float) -> Job | None:
        # BEGIN IMMEDIATE holds the database's write lock from the look to the
        # update: no other thread or process can claim in between.
        with self._write() as conn:
            now = utc_now()
            # queued, lapsed, or held on this host (where a dead holder can be told)
            prefix = local_prefix()
            candidates = conn.execute(
                "SELECT id, state, holder, lease_until FROM jobs WHERE state = ? OR (state = ? AND"
                " (lease_until IS NULL OR lease_until < ? OR substr(holder, 1, ?) = ?))"
                " ORDER BY created, id LIMIT 50",
                (QUEUED, RUNNING, to_text(now), len(prefix), prefix),
            ).fetchall()
            chosen = next((row["id"] for row in candidates
                           if job_claimable(row["state"], row["holder"], _optional_time(row["lease_until"]), now)),
                          None)
            if chosen is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = ?, holder = ?, lease_until = ?, bytes_received = 0, bytes_total = NULL,"
                " attempts = attempts + 1, updated = ? WHERE id = ?",
                (RUNNING, holder, to_text(now + timedelta(seconds=lease_seconds)), to_text(now), chosen),
            )
            return self._job_by_id(conn, chosen)

    def heartbeat_job(self, job_id: str, holder: str, lease_seconds: float,
                      bytes_received: int, bytes_total: int | None) -> bool:
        now = utc_now()
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET bytes_received = ?, bytes_total = ?, lease_until = ?, updated = ?"
                " WHERE id = ? AND holder = ? AND state = ?",
                (bytes_received, bytes_total, to_text(now + timedelta(seconds=lease_seconds)), to_text(now),
                 job_id, holder, RUNNING),
            ).rowcount == 1

    def finish_job(self, job_id: str, holder: str, state: str, result: dict[str, Any] | None,
                   bytes_received: int, bytes_total: int | None) -> bool:
        if state not in FINISHED_STATES:
            raise ValueError(f"{state!r} is not a finished state")
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET state = ?, result = ?, bytes_received = ?, bytes_total = ?, holder = NULL,"
                " lease_until = NULL, updated = ? WHERE id = ? AND holder = ? AND state = ?",
                (state, json.dumps(result) if result is not None else None, bytes_received, bytes_total,
                 to_text(utc_now()), job_id, holder, RUNNING),
            ).rowcount == 1

    def cancel_job(self, code: str, module: str, job_id: str) -> Job | None:
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, holder = NULL, lease_until = NULL, updated = ?"
                " WHERE id = ? AND code = ? AND module = ? AND state IN (?, ?)",
                (CANCELLED, to_text(utc_now()), job_id, code, module, QUEUED, RUNNING),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ? AND code = ? AND module = ?",
                               (job_id, code, module)).fetchone()
        return _job(row) if row else None

    def count_jobs_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for row in self._rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            if row["state"] in counts:
                counts[row["state"]] = int(row["n"])
        return counts

    def expire_jobs(self, finished_before: datetime) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM jobs WHERE state IN (?, ?, ?) AND updated < ?",
                                (*FINISHED_STATES, to_text(finished_before))).rowcount

    # -- resumable uploads -----------------------------------------------------------------------

    @staticmethod
    def _upload_by_id(conn: sqlite3.Connection, upload_id: str) -> Upload | None:
        row = conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return _upload(row) if row else None

    def create_upload(self, new: NewUpload) -> Upload:
        now = to_text(utc_now())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO uploads (id, code, module, length, metadata, operator, state, storage_state,"
                " created, updated, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new.id, new.code, new.module, new.length, json.dumps(new.metadata), new.operator, RECEIVING,
                 json.dumps(new.storage_state), now, now, to_text(new.expires)),
            )
            upload = self._upload_by_id(conn, new.id)
        assert upload is not None
        return upload

    def get_upload(self, code: str, module: str, upload_id: str) -> Upload | None:
        rows = self._rows("SELECT * FROM uploads WHERE id = ? AND code = ? AND module = ?",
                          (upload_id, code, module))
        return _upload(rows[0]) if rows else None

    def lock_upload(self, upload_id: str, holder: str, lease_seconds: float) -> Upload | None:
        # A lease lost with the machine is moot (its holder is gone too): no fsync
        # for it, one fewer per tus PATCH (nor for the offset it records, see
        # save_progress; completing and the outcome are durable).
        with self._write(durable=False) as conn:
            now = utc_now()
            upload = self._upload_by_id(conn, upload_id)
            if upload is None or not upload_lockable(upload.holder, upload.lease_until, holder, now):
                return None
            conn.execute("UPDATE uploads SET holder = ?, lease_until = ? WHERE id = ?",
                         (holder, to_text(now + timedelta(seconds=lease_seconds)), upload_id))
            return self._upload_by_id(conn, upload_id)

    def renew_upload_lock(self, upload_id: str, holder: str, lease_seconds: float) -> None:
        with self._write(durable=False) as conn:
            conn.execute("UPDATE uploads SET lease_until = ? WHERE id = ? AND holder = ?",
                         (to_text(utc_now() + timedelta(seconds=lease_seconds)), upload_id, holder))

    def save_progress(self, upload_id: str, holder: str, offset: int, storage_state: dict[str, Any],
                      expires: datetime, state: str = RECEIVING, release: bool = False,
                      durable: bool = False) -> Upload | None:
        # A PATCH's offset need not survive the machine (its bytes are not synced
        # either, RecordStore.save_progress): one fewer log flush per tus PATCH,
        # and for the completing PATCH's "completing" before it fsyncs them.
        with self._write(durable=durable or state not in (RECEIVING, COMPLETING)) as conn:
            conn.execute(
                "UPDATE uploads SET upload_offset = ?, storage_state = ?, state = ?, expires = ?, updated = ?,"
                " holder = CASE WHEN ? THEN NULL ELSE holder END,"
                " lease_until = CASE WHEN ? THEN NULL ELSE lease_until END"
                " WHERE id = ? AND holder = ?",
                (offset, json.dumps(storage_state), state, to_text(expires), to_text(utc_now()), release, release,
                 upload_id, holder),
            )
            return self._upload_by_id(conn, upload_id)

    def finish_upload(self, upload_id: str, holder: str, state: str, result: dict[str, Any],
                      expires: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE uploads SET state = ?, result = ?, storage_state = '{}', holder = NULL, lease_until = NULL,"
                " expires = ?, updated = ? WHERE id = ? AND holder = ?",
                (state, json.dumps(result), to_text(expires), to_text(utc_now()), upload_id, holder),
            )

    def unlock_upload(self, upload_id: str, holder: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE uploads SET holder = NULL, lease_until = NULL WHERE id = ? AND holder = ?",
                         (upload_id, holder))

    def delete_upload(self, upload_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    def expired_uploads(self, now: datetime, limit: int = 500) -> builtins.list[Upload]:
        rows = self._rows("SELECT * FROM uploads WHERE expires < ? ORDER BY expires, id LIMIT ?",
                          (to_text(now), limit))
        return [_upload(row) for row in rows]

    def count_uploads_in_progress(self) -> int:
        rows = self._rows("SELECT COUNT(*) AS n FROM uploads WHERE state IN (?, ?)", (RECEIVING, COMPLETING))
        return int(rows[0]["n"])

    # -- the webhook outbox ----------------------------------------------------------------------

    def add_outbox(self, new: NewOutboxEvent) -> builtins.list[Delivery]:
        now = to_text(utc_now())
        payload = json.dumps(new.payload, ensure_ascii=False)
        with self._write() as conn:
            return [_delivery(conn.execute(
                "INSERT INTO outbox (event_id, target, payload, state, created, updated, next_attempt)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (new.event_id, target, payload, PENDING, now, now, now),
            ).fetchone()) for target in new.targets]

    def claim_deliveries(self, holder: str, lease_seconds: float,
                         targets: Collection[str]) -> builtins.list[Delivery]:
        if not targets:
            return []
        now = utc_now()
        wanted = ", ".join("(?)" for _ in targets)
        # One UPDATE … RETURNING under BEGIN IMMEDIATE: the look for each
        # target's head and the claim hold the write lock together. Each head
        # is one step down the partial index, however long the queue behind it.
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE outbox SET holder = ?, lease_until = ?, updated = ? WHERE id IN ("
                " SELECT (SELECT id FROM outbox WHERE target = wanted.column1 AND state = ? ORDER BY id LIMIT 1)"
                f" FROM (VALUES {wanted}) AS wanted)"
                " AND next_attempt <= ? AND (holder IS NULL OR lease_until < ?) RETURNING *",
                (holder, to_text(now + timedelta(seconds=lease_seconds)), to_text(now), PENDING, *targets,
                 to_text(now), to_text(now)),
            ).fetchall()
        return sorted((_delivery(row) for row in rows), key=lambda delivery: delivery.id)

    def delivered(self, delivery_id: int, holder: str) -> bool:
        with self._write() as conn:
            return conn.execute(
                "UPDATE outbox SET state = ?, holder = NULL, lease_until = NULL, updated = ?"
                " WHERE id = ? AND holder = ? AND state = ?",
                (DELIVERED, to_text(utc_now()), delivery_id, holder, PENDING),
            ).rowcount == 1

    def delivery_failed(self, delivery_id: int, holder: str, error: str, retry_at: datetime | None) -> bool:
        now = utc_now()
        with self._write() as conn:
            return conn.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, next_attempt = ?,"
                " holder = NULL, lease_until = NULL, updated = ? WHERE id = ? AND holder = ? AND state = ?",
                (PENDING if retry_at is not None else FAILED, error, to_text(retry_at or now), to_text(now),
                 delivery_id, holder, PENDING),
            ).rowcount == 1

    def release_deliveries(self, holder: str) -> int:
        with self._write() as conn:
            return conn.execute("UPDATE outbox SET holder = NULL, lease_until = NULL WHERE holder = ?",
                                (holder,)).rowcount

    def count_deliveries_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        for row in self._rows("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state"):
            if row["state"] in counts:
                counts[row["state"]] = int(row["n"])
        return counts

    def expire_deliveries(self, finished_before: datetime) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM outbox WHERE state <> ? AND updated < ?",
                                (PENDING, to_text(finished_before))).rowcount

    def page_deliveries(self, after_id: int, limit: int) -> builtins.list[Delivery]:
        return [_delivery(row) for row in self._rows("SELECT * FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                                     (after_id, limit))]

    def import_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        return self._insert("outbox", [_delivery_row(delivery) for delivery in deliveries])


@hookimpl
def registry_record_store(settings: Settings) -> RecordStore | None:
    """The SQLite store when ``[database] url`` is empty."""
    if settings["database.url"]:
        return None
    return SQLiteStore(Path(settings["database.path"]), timeout=float(settings["database.timeout"]))
