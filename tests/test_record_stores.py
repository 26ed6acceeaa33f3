"""The record-store conformance suite (registry.testing) on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlite_utils
from registry_plugins import postgres_store
from registry_plugins.postgres_store import MIGRATIONS as PG_MIGRATIONS
from registry_plugins.postgres_store import PostgresStore
from registry_plugins.store_sqlite import MIGRATIONS, SQLiteStore

from registry.errors import DatabaseUnavailable
from registry.storage import new_blob_key
from registry.store import RecordStore
from registry.testing import (
    CredentialLocker,
    RecordStoreConformance,
    StoreFactory,
    assert_counts_exact,
    new_event,
    new_job,
    new_package,
    new_upload,
)
from tests.helpers import wait_for


class TestSQLiteStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(SQLiteStore, tmp_path / "registry.db")

    @pytest.fixture
    def lock_credential(self, tmp_path: Path) -> CredentialLocker:
        @contextmanager
        def hold(store: RecordStore, credential_id: int) -> Iterator[None]:
            """SQLite locks the whole database for a writer."""
            conn = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        return hold


class TestPostgresStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> StoreFactory:
        return functools.partial(PostgresStore, pg_url, pool_size=4)

    @pytest.fixture
    def lock_credential(self, pg_url: str) -> CredentialLocker:
        @contextmanager
        def hold(store: RecordStore, credential_id: int) -> Iterator[None]:
            """A transaction holding the credential's row lock, as a concurrent write would."""
            with psycopg.connect(pg_url) as conn, conn.transaction():
                conn.execute("SELECT id FROM credentials WHERE id = %s FOR UPDATE", (credential_id,))
                yield

        return hold


def test_a_database_made_before_the_store_was_a_plugin_opens_unchanged(tmp_path: Path) -> None:
    """Schema version 2 plus the events table the audit plugin used to create itself,
    with times in the old stored forms: migrations 3 and 4 keep every row readable."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for _, migration in MIGRATIONS[:2]:
        migration(db)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, time TEXT NOT NULL,"
        " operator TEXT NOT NULL, code TEXT NOT NULL, module TEXT NOT NULL, package_id INTEGER NOT NULL,"
        " version TEXT NOT NULL, sha256 TEXT NOT NULL, package_size INTEGER NOT NULL, payload TEXT NOT NULL)"
    )
    conn.execute(
        "INSERT INTO packages (code, module, version, package_name, package_size, sha256, blob_key, format,"
        " is_deleted, created, updated, operator) VALUES ('app', 'default', '1.0.0', 'a.tar.gz', 5, ?, ?,"
        " 'tar.gz', 0, '2024-05-01 10:00:00.000001', '2024-05-02 11:00:00.000000', 'alice')",
        ("ab" * 32, "app/default/" + "0" * 32),
    )
    conn.execute("INSERT INTO events (kind, time, operator, code, module, package_id, version, sha256,"
                 " package_size, payload) VALUES ('stored', '2024-05-01T10:00:00+00:00', 'alice', 'app',"
                 " 'default', 1, '1.0.0', ?, 5, '{}')", ("ab" * 32,))
    conn.close()

    store = SQLiteStore(path)
    try:
        later = list(range(3, len(MIGRATIONS) + 1))  # everything after the old schema
        assert [m.number for m in store.pending_migrations()] == later
        assert [m.number for m in store.migrate()] == later
        record = store.get("app", "default", 1)
        assert record is not None
        assert record.created == datetime(2024, 5, 1, 10, 0, 0, 1, tzinfo=UTC)
        assert record.updated == datetime(2024, 5, 2, 11, 0, tzinfo=UTC)
        [event] = store.recent_events()
        assert event.time == datetime(2024, 5, 1, 10, 0, tzinfo=UTC) and event.kind == "stored"
        assert store.list("app", "default")[0] == 1, "the module's counter is back-filled"
        assert store.commit(new_package("2.0.0"), allow_overwrite=False).record.id == 2
        assert_counts_exact(store)
    finally:
        store.close()


# A query that never ends on its own: the store's statement timeout must stop it.
ENDLESS = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
    "postgres": "SELECT pg_sleep(60)",
}


def test_sqlite_statement_timeout_is_database_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "registry.db", timeout=0.3)
    try:
        with pytest.raises(DatabaseUnavailable):
            store._rows(ENDLESS["sqlite"])
        store.check()  # the connection is still usable afterwards
    finally:
        store.close()


def test_postgres_statement_timeout_is_database_unavailable(pg_url: str) -> None:
    store = PostgresStore(pg_url, pool_size=2, timeout=0.3)
    try:
        with pytest.raises(DatabaseUnavailable, match="longer than"):
            store._rows(ENDLESS["postgres"])
        store.check()
    finally:
        store.close()


def test_postgres_counters_are_back_filled_from_the_records(pg_url: str) -> None:
    """A database whose records predate the counters (migration 5) gets them
    counted by the migration that adds them."""
    store = PostgresStore(pg_url, pool_size=2)
    try:
        store.migrate()
        kept = [store.commit(new_package(f"1.{n}.0", module=f"m{n % 2}"), allow_overwrite=False).record
                for n in range(5)]
        store.soft_delete("app", "m0", kept[0].id)
    finally:
        store.close()
    name, sql = PG_MIGRATIONS[5]
    assert name.startswith("module_counts")
    with psycopg.connect(pg_url) as conn, conn.transaction():  # migration 6 over records made before it
        conn.execute("DROP TABLE module_counts, application_counts, application_total")
        conn.execute("DROP FUNCTION module_counts_follow() CASCADE")
        conn.execute(sql.encode())
    again = PostgresStore(pg_url, pool_size=2)
    try:
        assert (again.list("app", "m0")[0], again.list("app", "m0", include_deleted=True)[0]) == (2, 3)
        assert again.list("app", "m1")[0] == 2
        assert_counts_exact(again)
    finally:
        again.close()


def test_postgres_import_across_modules_outlives_a_deadlock_with_an_upload(pg_url: str) -> None:
    """An import that creates a new application (taking the application total's row)
    and then adds to module ``b/m``, against an upload's transaction that holds
    ``b/m``'s counter and then creates an application too: each waits for the
    other. PostgreSQL breaks the deadlock by aborting one transaction (the one
    that waited first, the import); the store runs an aborted transaction again,
    so both land and every counter stays exact."""
    store = PostgresStore(pg_url, pool_size=2)
    try:
        store.migrate()
        existing = store.commit(new_package("0.1.0", code="b", module="m"), allow_overwrite=False).record
        records = [replace(existing, id=existing.id + 100 + n, code=code, version=f"1.{n}.0",
                           blob_key=new_blob_key(code, "m"))
                   for n, code in enumerate(["a", "b"], start=1)]
        with psycopg.connect(pg_url, autocommit=True) as upload:
            # the upload's own deadlock check comes well after the import's (1 s)
            upload.execute("SET deadlock_timeout = '20s'")
            with upload.transaction():
                # an upload's first step: a record in b/m, holding b/m's counter row
                upload.execute("INSERT INTO packages (code, module, version, package_name, package_size, sha256,"
                               " blob_key, format, created, updated, operator) SELECT code, module, '2.0.0',"
                               " package_name, package_size, sha256, blob_key || 'x', format, created, updated,"
                               " operator FROM packages WHERE id = %s", (existing.id,))
                importer = ThreadPoolExecutor(max_workers=1)
                imported = importer.submit(store.import_records, records)
                # the import now holds a/m's, a's and the total's rows and waits for b/m's
                wait_for(lambda: _waiting_on_a_lock(pg_url), "the import to wait for b/m's counter", limit=10)
                # the upload's record in a new application needs the total's row: a deadlock
                try:
                    upload.execute("INSERT INTO packages (code, module, version, package_name, package_size,"
                                   " sha256, blob_key, format, created, updated, operator) SELECT 'c', module,"
                                   " version, package_name, package_size, sha256, blob_key || 'y', format,"
                                   " created, updated, operator FROM packages WHERE id = %s", (existing.id,))
                except psycopg.errors.DeadlockDetected:
                    pytest.fail("PostgreSQL chose the upload as the victim; the test expects the import")
            importer.shutdown()
        assert imported.result(timeout=30) == 2, "the import was run again after the deadlock and inserted both records"
        assert store.list("b", "m")[0] == 3 and store.list("a", "m")[0] == 1 and store.list("c", "m")[0] == 1
        assert_counts_exact(store)
    finally:
        store.close()


def _waiting_on_a_lock(pg_url: str) -> bool:
    """Whether some session of the database waits for a lock."""
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND wait_event_type = 'Lock'").fetchone()
        return bool(row and row[0])


def test_postgres_leases_follow_the_database_clock(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two instances whose clocks disagree by an hour agree on every lease: the
    one ahead takes no job, upload or webhook delivery the other holds for 60 s.
    The clocks are the only thing faked here (a test cannot move a real one)."""
    store = PostgresStore(pg_url, pool_size=2)
    try:
        store.migrate()
        store.create_job(new_job("j" * 32))
        upload = store.create_upload(new_upload("u" * 32))
        store.add_outbox(new_event("e1", "target"))
        first, second = "host-one:1:aaaa", "host-two:2:bbbb"  # other hosts: judged by their leases alone
        assert store.claim_job(first, 60) is not None
        assert store.lock_upload(upload.id, first, 60) is not None
        assert len(store.claim_deliveries(first, 60, ["target"])) == 1
        ahead = postgres_store.utc_now() + timedelta(hours=1)
        monkeypatch.setattr(postgres_store, "utc_now", lambda: ahead)
        assert store.claim_job(second, 60) is None, "a job whose lease runs 60 s more"
        assert store.lock_upload(upload.id, second, 60) is None, "an upload whose lease runs 60 s more"
        assert store.claim_deliveries(second, 60, ["target"]) == [], "a delivery whose lease runs 60 s more"
        # and a lease that did lapse by the database's clock is taken
        assert store.heartbeat_job("j" * 32, first, 0, 0, None)
        store.renew_upload_lock(upload.id, first, 0)
        time.sleep(0.05)
        assert store.claim_job(second, 60) is not None
        assert store.lock_upload(upload.id, second, 60) is not None
    finally:
        store.close()


def _abort_commits_as_deadlock_victims(pg_url: str, times: int) -> None:
    """Make PostgreSQL abort the next ``times`` inserts of a record with a real
    ``deadlock_detected`` (40P01) error; a sequence, which no rollback undoes,
    counts the attempts."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("CREATE SEQUENCE IF NOT EXISTS insert_attempts")
        admin.execute(
            "CREATE OR REPLACE FUNCTION abort_as_victim() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF nextval('insert_attempts') <= {int(times)} THEN"
            "  RAISE EXCEPTION 'deadlock detected (by the test)' USING ERRCODE = 'deadlock_detected';"
            " END IF; RETURN NEW; END $$")
        admin.execute("CREATE OR REPLACE TRIGGER abort_as_victim BEFORE INSERT ON packages"
                      " FOR EACH ROW EXECUTE FUNCTION abort_as_victim()")


def _insert_attempts(pg_url: str) -> int:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT last_value, is_called FROM insert_attempts").fetchone()
        assert row is not None
        return int(row[0]) if row[1] else 0


def test_postgres_write_is_run_again_after_a_deadlock_until_its_attempts_run_out(pg_url: str) -> None:
    """A commit aborted as a deadlock's victim is run again; one aborted on
    every attempt fails after exactly ``CONFLICT_ATTEMPTS`` of them with 503
    ``DATABASE_UNAVAILABLE``, keeping nothing."""
    attempts = postgres_store.CONFLICT_ATTEMPTS
    store = PostgresStore(pg_url, pool_size=2)
    try:
        store.migrate()
        _abort_commits_as_deadlock_victims(pg_url, attempts - 1)
        landed = store.commit(new_package("1.0.0", code="a", module="m"), allow_overwrite=False)
        assert landed.record.version == "1.0.0" and _insert_attempts(pg_url) == attempts
        _abort_commits_as_deadlock_victims(pg_url, 1_000_000)
        with pytest.raises(DatabaseUnavailable) as failed:
            store.commit(new_package("2.0.0", code="a", module="m"), allow_overwrite=False)
        assert failed.value.status == 503 and failed.value.code == "DATABASE_UNAVAILABLE"
        assert _insert_attempts(pg_url) == 2 * attempts, "run exactly CONFLICT_ATTEMPTS times, no more"
        assert store.find_version("a", "m", "2.0.0") is None
        assert_counts_exact(store)
    finally:
        store.close()
