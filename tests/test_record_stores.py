"""The record-store conformance suite (registry.testing) on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import functools
import sqlite3
from datetime import datetime, UTC
from pathlib import Path

import pytest
import sqlite_utils

from plugins.store_postgres import PostgresStore
from plugins.store_sqlite import MIGRATIONS, SQLiteStore
from registry.testing import RecordStoreConformance, StoreFactory, new_package


class TestSQLiteStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(SQLiteStore, tmp_path / "registry.db")


class TestPostgresStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> StoreFactory:
        return functools.partial(PostgresStore, pg_url, pool_size=4)


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
        assert [m.number for m in store.pending_migrations()] == [3, 4]
        assert [m.number for m in store.migrate()] == [3, 4]
        record = store.get("app", "default", 1)
        assert record is not None
        assert record.created == datetime(2024, 5, 1, 10, 0, 0, 1, tzinfo=UTC)
        assert record.updated == datetime(2024, 5, 2, 11, 0, tzinfo=UTC)
        [event] = store.recent_events()
        assert event.time == datetime(2024, 5, 1, 10, 0, tzinfo=UTC) and event.kind == "stored"
        assert store.commit(new_package("2.0.0"), allow_overwrite=False).record.id == 2
    finally:
        store.close()
