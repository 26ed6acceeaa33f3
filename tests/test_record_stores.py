"""The record-store conformance suite (registry.testing) on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from plugins.store_postgres import PostgresStore
from plugins.store_sqlite import SQLiteStore
from registry.errors import DatabaseUnavailable
from registry.testing import RecordStoreConformance, StoreFactory


class TestSQLiteStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(SQLiteStore, tmp_path / "registry.db")


class TestPostgresStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> StoreFactory:
        return functools.partial(PostgresStore, pg_url, pool_size=4)


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
