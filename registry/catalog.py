"""What browsing needs beyond one module's records: summaries and captured details.

- :class:`PackageDetails`: the ``app_desc.yaml`` text and first member paths
  of a package, captured once while the archive is inspected and written in
  the same transaction as its record (:func:`save_details`), so a page view
  never re-reads a blob.
- :class:`Catalog`: applications and modules with their counts and last
  upload, one record's captured details, and its history from the audit
  events.

Every query of this module lives here, apart from the record store's, so it
can move behind another record store as a unit. Every method blocks; call it
from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from registry.archive import ArchiveInfo
from registry.db import Database

#: Largest ``app_desc.yaml`` kept for a package's page, in bytes of UTF-8.
APP_DESC_CAP = 64 * 1024


@dataclass(frozen=True)
class PackageDetails:
    """What a package's page shows of its content.

    :param app_desc: the ``app_desc.yaml`` text (invalid UTF-8 replaced), cut
        at :data:`APP_DESC_CAP` bytes, or None when the package has none.
    :param member_paths: the first member paths, in archive order.
    :param members: how many members the archive holds in all.
    """

    app_desc: str | None
    app_desc_truncated: bool = False
    member_paths: list[str] = field(default_factory=list)
    members: int = 0

    @classmethod
    def from_archive(cls, info: ArchiveInfo) -> PackageDetails:
        """The details of an inspected archive."""
        text = None
        truncated = False
        if info.app_desc is not None:
            raw = info.app_desc
            truncated = len(raw) > APP_DESC_CAP
            # errors="ignore" drops a multi-byte character cut in half by the cap.
            text = raw[:APP_DESC_CAP].decode("utf-8", "replace" if not truncated else "ignore")
        return cls(text, truncated, list(info.member_paths), info.members)


def save_details(conn: sqlite3.Connection, package_id: int, details: PackageDetails) -> None:
    """Keep ``details`` for record ``package_id``, replacing earlier ones;
    run inside the transaction that writes the record."""
    conn.execute(
        "INSERT OR REPLACE INTO package_details (package_id, app_desc, app_desc_truncated, member_paths, members)"
        " VALUES (?, ?, ?, ?, ?)",
        (package_id, details.app_desc, int(details.app_desc_truncated),
         json.dumps(details.member_paths, ensure_ascii=False), details.members),
    )


@dataclass(frozen=True)
class Summary:
    """An application or a module: its name, modules (applications only),
    live packages and the stored UTC time of the newest live upload or change."""

    name: str
    modules: int
    packages: int
    last_uploaded: str | None


@dataclass(frozen=True)
class HistoryEntry:
    """One audit event of a package: ``kind`` is stored, overwritten, deleted or restored."""

    kind: str
    time: str
    operator: str
    version: str
    sha256: str
    package_size: int


def _like(term: str) -> str:
    """A LIKE pattern matching ``term`` anywhere, with its wildcards escaped."""
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Catalog:
    """Read-only summaries over the ``packages``, ``package_details`` and ``events`` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def applications(self, *, apps: frozenset[str] = frozenset(), search_term: str = "",
                     limit: int = 100, offset: int = 0) -> tuple[int, list[Summary]]:
        """One page of applications by code, and how many match.

        :param apps: only these codes (a credential's scope); empty: all.
        :param search_term: only codes containing it.
        """
        where: list[str] = []
        params: list[Any] = []
        if apps:
            where.append(f"code IN ({', '.join('?' for _ in apps)})")
            params += sorted(apps)
        if search_term:
            where.append("code LIKE ? ESCAPE '\\'")
            params.append(_like(search_term))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        conn = self.db.connection()
        count = conn.execute(f"SELECT COUNT(DISTINCT code) FROM packages {clause}", params).fetchone()[0]
        rows = conn.execute(
            "SELECT code, COUNT(DISTINCT module), SUM(is_deleted = 0),"
            f" MAX(CASE WHEN is_deleted = 0 THEN updated END) FROM packages {clause}"
            " GROUP BY code ORDER BY code LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        return int(count), [Summary(row[0], int(row[1]), int(row[2] or 0), row[3]) for row in rows]

    def modules(self, code: str) -> list[Summary]:
        """Every module of application ``code`` by name (none: unknown application)."""
        rows = self.db.connection().execute(
            "SELECT module, SUM(is_deleted = 0), MAX(CASE WHEN is_deleted = 0 THEN updated END)"
            " FROM packages WHERE code = ? GROUP BY module ORDER BY module",
            (code,),
        ).fetchall()
        return [Summary(row[0], 0, int(row[1] or 0), row[2]) for row in rows]

    def details(self, package_id: int) -> PackageDetails | None:
        """The captured details of a record, or None (stored before they were captured)."""
        row = self.db.connection().execute(
            "SELECT * FROM package_details WHERE package_id = ?", (package_id,)
        ).fetchone()
        if row is None:
            return None
        return PackageDetails(row["app_desc"], bool(row["app_desc_truncated"]),
                              list(json.loads(row["member_paths"])), int(row["members"]))

    def history(self, code: str, module: str, package_id: int, limit: int = 200) -> list[HistoryEntry]:
        """The record's audit events, oldest first; empty when the audit plugin
        is off (its table then does not exist)."""
        try:
            rows = self.db.connection().execute(
                "SELECT * FROM (SELECT * FROM events WHERE package_id = ? AND code = ? AND module = ?"
                " ORDER BY id DESC LIMIT ?) ORDER BY id",
                (package_id, code, module, limit),
            ).fetchall()
        except sqlite3.OperationalError:  # no such table: the audit plugin never ran
            return []
        return [HistoryEntry(row["kind"], row["time"], row["operator"], row["version"], row["sha256"],
                             int(row["package_size"])) for row in rows]
