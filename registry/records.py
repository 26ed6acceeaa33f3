"""Package records: the versioning and overwrite rules, as SQL transactions.

Every method blocks (SQLite); the service calls them in worker threads.
Times are stored as UTC ``YYYY-MM-DD HH:MM:SS.ffffff`` strings, which sort
correctly as text, and formatted in the configured time zone on output.
"""

from __future__ import annotations

import builtins
import sqlite3
from dataclasses import dataclass
from datetime import datetime, UTC
from enum import Enum
from typing import Any

from registry.catalog import PackageDetails, save_details
from registry.db import Database
from registry.errors import PackageAlreadyExists, PackageNotFound

#: ``order_by`` values and the SQL they mean; ties are broken by id.
ORDERINGS: dict[str, str] = {
    "created": "created ASC, id ASC",
    "-created": "created DESC, id DESC",
    "version": "version ASC, id ASC",
    "-version": "version DESC, id DESC",
    "package_size": "package_size ASC, id ASC",
    "-package_size": "package_size DESC, id DESC",
    "updated": "updated ASC, id ASC",
    "-updated": "updated DESC, id DESC",
}


def utc_now() -> str:
    """The current UTC time in the stored form, ``YYYY-MM-DD HH:MM:SS.ffffff``
    (fixed width, so such strings compare like the times they name)."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(frozen=True)
class Record:
    """One stored version of a module's package."""

    id: int
    code: str
    module: str
    version: str
    package_name: str
    package_size: int
    sha256: str
    blob_key: str
    format: str
    file_name: str
    origin: str
    source_url: str
    is_deleted: bool
    revived: bool
    deleted_at: str | None
    created: str
    updated: str
    operator: str
    #: why ``fsck --repair`` found the blob bad, or None (see ``db._integrity_marks_v2``)
    broken: str | None = None
    #: when ``gc`` removed this deleted record's blob, or None
    purged_at: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Record:
        data = dict(row)
        data["is_deleted"] = bool(data["is_deleted"])
        data["revived"] = bool(data["revived"])
        return cls(**data)


@dataclass(frozen=True)
class NewPackage:
    """A verified, stored blob waiting for its record."""

    code: str
    module: str
    version: str
    package_name: str
    package_size: int
    sha256: str
    blob_key: str
    format: str
    file_name: str
    origin: str
    source_url: str
    operator: str
    #: what the package's page shows, captured at ingest; kept with the record
    details: PackageDetails | None = None


class Outcome(Enum):
    """What a commit did to the version; the value is the ``result`` label of upload metrics."""

    CREATED = "created"
    REVIVED = "revived"
    OVERWRITTEN = "overwritten"
    IDENTICAL = "identical"


@dataclass(frozen=True)
class CommitResult:
    """What :meth:`RecordStore.commit` did.

    :param unused_blob_key: a blob the caller must now delete: the replaced
        one after an overwrite or revive, or the new one when nothing changed.
    """

    outcome: Outcome
    record: Record
    unused_blob_key: str | None


class RecordStore:
    """Queries and transactions on the ``packages`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _one(self, sql: str, params: tuple[Any, ...], conn: sqlite3.Connection | None) -> Record | None:
        """The first row of ``sql`` as a Record, or None; run on ``conn`` when
        given (inside its transaction), else on this thread's connection."""
        row = (conn if conn is not None else self.db.connection()).execute(sql, params).fetchone()
        return Record.from_row(row) if row else None

    def get(self, code: str, module: str, package_id: int,
            conn: sqlite3.Connection | None = None) -> Record | None:
        """The record with this id in this module (deleted or not), or None.

        :param conn: a connection in a transaction to read within, or None.
        """
        return self._one(
            "SELECT * FROM packages WHERE id = ? AND code = ? AND module = ?",
            (package_id, code, module),
            conn,
        )

    def find_version(self, code: str, module: str, version: str,
                     conn: sqlite3.Connection | None = None) -> Record | None:
        """The module's record of ``version`` (deleted or not), or None.

        :param conn: a connection in a transaction to read within, or None.
        """
        return self._one(
            "SELECT * FROM packages WHERE code = ? AND module = ? AND version = ?",
            (code, module, version),
            conn,
        )

    def commit(self, new: NewPackage, allow_overwrite: bool) -> CommitResult:
        """Record ``new`` under the versioning rules, in one write transaction.

        - no such version: insert (CREATED);
        - soft-deleted version: revive it with the new bytes, same id (REVIVED);
        - live version, same sha256: nothing changes (IDENTICAL), unless the
          record is marked broken: then the blob is replaced (OVERWRITTEN);
        - live version, other bytes: replace them if ``allow_overwrite``
          (OVERWRITTEN), else raise ``PackageAlreadyExists``.

        The lookup and the write happen under SQLite's write lock, and the
        unique index on (code, module, version) backs it up, so two concurrent
        commits of one version can never both create it.
        """
        now = utc_now()
        with self.db.transaction() as conn:
            existing = self.find_version(new.code, new.module, new.version, conn)
            if existing is None:
                cursor = conn.execute(
                    "INSERT INTO packages (code, module, version, package_name, package_size, sha256,"
                    " blob_key, format, file_name, origin, source_url, is_deleted, revived, created,"
                    " updated, operator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?)",
                    (new.code, new.module, new.version, new.package_name, new.package_size, new.sha256,
                     new.blob_key, new.format, new.file_name, new.origin, new.source_url, now, now,
                     new.operator),
                )
                record = self._by_id(conn, cursor.lastrowid)
                if new.details is not None:
                    save_details(conn, record.id, new.details)
                return CommitResult(Outcome.CREATED, record, None)
            same_bytes = existing.sha256 == new.sha256
            # A broken record (fsck --repair) is healed by uploading its bytes
            # again: identical content then replaces the blob, no overwrite
            # permission needed, instead of being a no-op.
            if not existing.is_deleted and same_bytes and not existing.broken:
                return CommitResult(Outcome.IDENTICAL, existing, new.blob_key)
            if not existing.is_deleted and not same_bytes and not allow_overwrite:
                raise PackageAlreadyExists(
                    f"version {new.version!r}", data={"sha256_signature": existing.sha256}
                )
            conn.execute(
                "UPDATE packages SET package_name = ?, package_size = ?, sha256 = ?, blob_key = ?,"
                " format = ?, file_name = ?, origin = ?, source_url = ?, is_deleted = 0,"
                " revived = ?, deleted_at = NULL, broken = NULL, purged_at = NULL, updated = ?,"
                " operator = ? WHERE id = ?",
                (new.package_name, new.package_size, new.sha256, new.blob_key, new.format,
                 new.file_name, new.origin, new.source_url, int(existing.is_deleted or existing.revived),
                 now, new.operator, existing.id),
            )
            if new.details is not None:
                save_details(conn, existing.id, new.details)
            outcome = Outcome.REVIVED if existing.is_deleted else Outcome.OVERWRITTEN
            return CommitResult(outcome, self._by_id(conn, existing.id), existing.blob_key)

    @staticmethod
    def _by_id(conn: sqlite3.Connection, package_id: int | None) -> Record:
        row = conn.execute("SELECT * FROM packages WHERE id = ?", (package_id,)).fetchone()
        return Record.from_row(row)

    def soft_delete(self, code: str, module: str, package_id: int) -> tuple[Record, bool]:
        """Mark a record deleted; returns it and whether this call changed it.

        Deleting an already deleted record changes nothing (DELETE is idempotent).
        """
        with self.db.transaction() as conn:
            record = self._get_for_update(conn, code, module, package_id)
            if record.is_deleted:
                return record, False
            now = utc_now()
            conn.execute(
                "UPDATE packages SET is_deleted = 1, revived = 0, deleted_at = ?, updated = ?"
                " WHERE id = ?",
                (now, now, record.id),
            )
            return self._by_id(conn, record.id), True

    def restore(self, code: str, module: str, package_id: int) -> tuple[Record, bool]:
        """Undo a soft delete; returns the record and whether this call changed it.

        :raises PackageAlreadyExists: the version was uploaded again after the
            delete (the record is live with those newer bytes).
        :raises PackageNotFound: ``gc`` has purged the deleted record's bytes.
        """
        with self.db.transaction() as conn:
            record = self._get_for_update(conn, code, module, package_id)
            if not record.is_deleted:
                if record.revived:
                    raise PackageAlreadyExists(
                        f"version {record.version!r} was uploaded again after it was deleted",
                        data={"sha256_signature": record.sha256},
                    )
                return record, False
            if record.purged_at is not None:
                raise PackageNotFound(f"id {package_id}: its bytes were removed by gc")
            conn.execute(
                "UPDATE packages SET is_deleted = 0, deleted_at = NULL, updated = ? WHERE id = ?",
                (utc_now(), record.id),
            )
            return self._by_id(conn, record.id), True

    def _get_for_update(self, conn: sqlite3.Connection, code: str, module: str, package_id: int) -> Record:
        """:meth:`get` within ``conn``'s write transaction; :raises PackageNotFound: no such record."""
        record = self.get(code, module, package_id, conn)
        if record is None:
            raise PackageNotFound(f"id {package_id}")
        return record

    def list(
        self,
        code: str,
        module: str,
        *,
        search_term: str = "",
        order_by: str = "-created",
        limit: int = 100,
        offset: int = 0,
        include_deleted: bool = False,
    ) -> tuple[int, list[Record]]:
        """One page of a module's records and the total count matching the filters."""
        where = ["code = ?", "module = ?"]
        params: list[Any] = [code, module]
        if not include_deleted:
            where.append("is_deleted = 0")
        if search_term:
            pattern = "%" + search_term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(version LIKE ? ESCAPE '\\' OR package_name LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        clause = " AND ".join(where)
        conn = self.db.connection()
        count = conn.execute(f"SELECT COUNT(*) FROM packages WHERE {clause}", params).fetchone()[0]
        rows = conn.execute(
            f"SELECT * FROM packages WHERE {clause} ORDER BY {ORDERINGS[order_by]} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        return count, [Record.from_row(row) for row in rows]

    # -- maintenance (registry fsck / gc) -------------------------------------

    def all_blob_keys(self) -> set[str]:
        """Every blob key a record points to, except records whose blob gc purged."""
        rows = self.db.connection().execute("SELECT blob_key FROM packages WHERE purged_at IS NULL").fetchall()
        return {row[0] for row in rows}

    def is_blob_referenced(self, key: str) -> bool:
        """True when a record not purged points to ``key`` (checked again by gc
        just before it deletes a blob it found unreferenced)."""
        row = self.db.connection().execute(
            "SELECT 1 FROM packages WHERE blob_key = ? AND purged_at IS NULL", (key,)
        ).fetchone()
        return row is not None

    def page_by_id(self, after_id: int, limit: int) -> builtins.list[Record]:
        """Up to ``limit`` records with ids above ``after_id``, deleted ones
        included, by id: walk every record with ``after_id`` = the last id seen."""
        rows = self.db.connection().execute(
            "SELECT * FROM packages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [Record.from_row(row) for row in rows]

    def blob_totals(self) -> tuple[int, int]:
        """(records, bytes) whose blob should exist: every record not purged."""
        row = self.db.connection().execute(
            "SELECT COUNT(*), COALESCE(SUM(package_size), 0) FROM packages WHERE purged_at IS NULL"
        ).fetchone()
        return int(row[0]), int(row[1])

    def set_broken(self, package_id: int, blob_key: str, reason: str | None) -> bool:
        """Mark a record's blob bad (``reason``), or clear the mark (None).

        Only while the record still points to ``blob_key`` (the blob that was
        checked): an upload that replaced it meanwhile is left alone.
        Returns whether the record was changed.
        """
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE packages SET broken = ? WHERE id = ? AND blob_key = ?", (reason, package_id, blob_key)
            )
            return cursor.rowcount == 1

    def modules_with_more_live_than(self, count: int) -> builtins.list[tuple[str, str]]:
        """(code, module) of every module holding more than ``count`` live records."""
        rows = self.db.connection().execute(
            "SELECT code, module FROM packages WHERE is_deleted = 0 GROUP BY code, module"
            " HAVING COUNT(*) > ? ORDER BY code, module",
            (count,),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def purgeable(self, deleted_before: str) -> builtins.list[Record]:
        """Soft-deleted records, not yet purged, deleted at or before ``deleted_before``
        (a stored UTC time string, see :func:`utc_now`), oldest first."""
        rows = self.db.connection().execute(
            "SELECT * FROM packages WHERE is_deleted = 1 AND purged_at IS NULL AND deleted_at <= ?"
            " ORDER BY deleted_at, id",
            (deleted_before,),
        ).fetchall()
        return [Record.from_row(row) for row in rows]

    def mark_purged(self, record: Record) -> bool:
        """Mark ``record`` purged if it is still deleted with the same blob.

        The caller deletes the blob only after this returns True: marking
        first means a concurrent restore either ran before (and this returns
        False) or is refused afterwards, so no live record ever loses its blob.
        """
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE packages SET purged_at = ? WHERE id = ? AND is_deleted = 1"
                " AND blob_key = ? AND purged_at IS NULL",
                (utc_now(), record.id, record.blob_key),
            )
            return cursor.rowcount == 1
