"""The record-store conformance suite (registry.testing) on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from plugins.store_postgres import PostgresStore
from plugins.store_sqlite import SQLiteStore
from registry.testing import RecordStoreConformance, StoreFactory


class TestSQLiteStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return functools.partial(SQLiteStore, tmp_path / "registry.db")


class TestPostgresStore(RecordStoreConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> StoreFactory:
        return functools.partial(PostgresStore, pg_url, pool_size=4)
