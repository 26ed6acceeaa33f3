"""Built-in plugin ``audit``: every package event, kept in the ``events`` table.

Each stored, overwritten, deleted or restored package adds one row with the
operator, the time and the sha256 of the bytes concerned; ``registry events``
lists them. The plugin owns its table (created if missing), as a third-party
plugin would.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import anyio.to_thread

from registry.db import Database
from registry.events import PackageEvent
from registry.hookspecs import hookimpl
from registry.service import Registry

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    time TEXT NOT NULL,
    operator TEXT NOT NULL,
    code TEXT NOT NULL,
    module TEXT NOT NULL,
    package_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    package_size INTEGER NOT NULL,
    payload TEXT NOT NULL
)
"""


def ensure_table(db: Database) -> None:
    db.connection().execute(SCHEMA)


def record_event(db: Database, event: PackageEvent) -> None:
    """Append one event row (blocking); the table is made at start-up (:func:`ensure_table`)."""
    data = event.to_json()
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO events (kind, time, operator, code, module, package_id, version, sha256,"
            " package_size, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event.kind, data["time"], event.operator, event.record.code, event.record.module,
             event.record.id, event.record.version, event.record.sha256, event.record.package_size,
             json.dumps(data, ensure_ascii=False)),
        )


def recent_events(db: Database, limit: int = 100, code: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` events, newest first (blocking)."""
    conn = db.connection()
    try:
        sql = "SELECT * FROM events"
        params: list[Any] = []
        if code:
            sql += " WHERE code = ?"
            params.append(code)
        rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit]).fetchall()
    except sqlite3.OperationalError:  # no event recorded yet: no table
        return []
    # A Row iterates its values, so its keys come from keys().
    return [{k: row[k] for k in row.keys() if k != "payload"} for row in rows]  # noqa: SIM118


@hookimpl
async def registry_startup(registry: Registry) -> None:
    await anyio.to_thread.run_sync(ensure_table, registry.db)


@hookimpl
async def registry_package_event(event: PackageEvent, registry: Registry) -> None:
    await anyio.to_thread.run_sync(record_event, registry.db, event)
