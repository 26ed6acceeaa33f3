"""What a record-store plugin provides: the registry's records, credentials and events.

A store is chosen by the ``registry_record_store`` hook (``[database] url``
empty: the built-in SQLite store at ``[database] path``; ``postgresql://…``:
the built-in PostgreSQL store). Everything the registry keeps apart from blob
bytes lives here; the core, the HTTP layer, the CLI, ``gc``, ``fsck`` and the
plugins reach it only through this interface, never through SQL.

Every method blocks: callers run them in worker threads (the service uses
separate thread limiters for reads and writes, see :class:`Access`), never on
the event loop. A store must be safe to call from many threads at once and,
for a shared database, from many processes on many hosts.

Failures of the database itself (unreachable, restarting, locked past the
store's timeout, disk full) must be raised as
:class:`registry.errors.DatabaseUnavailable`; the API answers them with 503
and ``Retry-After``. Nothing is half-written when one is raised: each writing
method is one transaction.

New kinds of data (background jobs, resumable uploads, the webhook outbox)
are added as new abstract groups of methods plus a migration in each store;
:class:`RecordStoreConformance` in ``registry/testing.py`` checks a plugin.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from registry.catalog import PackageDetails, Summary
from registry.errors import PackageAlreadyExists
from registry.records import (
    AuditEvent,
    CommitResult,
    Credential,
    NewCredential,
    NewPackage,
    Order,
    Outcome,
    PageKey,
    Record,
)


@dataclass(frozen=True)
class Migration:
    """One numbered schema change of a store.

    :param number: 1, 2, …; a store records the highest number applied.
    :param name: what it does, shown by ``registry migrate --dry-run``.
    """

    number: int
    name: str


class RecordStore(ABC):
    """The registry's records. See the module docstring for the contract."""

    #: shown by ``check-config``; never contains a password
    description: str = ""

    # -- life cycle -----------------------------------------------------------

    @abstractmethod
    def pending_migrations(self) -> builtins.list[Migration]:
        """Migrations not yet applied, in order; creates and changes nothing."""

    @abstractmethod
    def migrate(self) -> builtins.list[Migration]:
        """Apply the pending migrations and return them.

        Safe to call from several processes at once: one applies them under
        a database-wide lock, the others wait and then find nothing to do.
        """

    @abstractmethod
    def check(self) -> None:
        """Return when the database answers now; raise ``DatabaseUnavailable`` otherwise."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store may not be used afterwards."""

    # -- packages ---------------------------------------------------------------

    @abstractmethod
    def get(self, code: str, module: str, package_id: int) -> Record | None:
        """The record with this id in this module (deleted or not), or None."""

    @abstractmethod
    def find_version(self, code: str, module: str, version: str) -> Record | None:
        """The module's record of ``version`` (deleted or not), or None."""

    @abstractmethod
    def commit(self, new: NewPackage, allow_overwrite: bool) -> CommitResult:
        """Record ``new`` under the versioning rules (:func:`decide`), in one transaction.

        The lookup and the write must be atomic against every other commit,
        on any process or host: a unique constraint on (code, module, version)
        backs the lock, so two concurrent commits of one version never both
        create it (the loser sees the winner's row and decides again).

        ``new.details``, when given, are kept with the record in the same
        transaction; a revive or overwrite replaces the old ones (with none
        when ``new.details`` is None). IDENTICAL changes nothing.
        """

    @abstractmethod
    def soft_delete(self, code: str, module: str, package_id: int) -> tuple[Record, bool]:
        """Mark a record deleted; returns it and whether this call changed it.

        :raises PackageNotFound: no such id in this module.
        """

    @abstractmethod
    def restore(self, code: str, module: str, package_id: int) -> tuple[Record, bool]:
        """Undo a soft delete; returns the record and whether this call changed it.

        :raises PackageAlreadyExists: the version was uploaded again after the delete.
        :raises PackageNotFound: no such id, or ``gc`` purged the deleted record's bytes.
        """

    @abstractmethod
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
        """One page of a module's records and the total count matching the filters.

        Pages come two ways. By ``offset``: skip that many records (cost grows
        with the offset). By key (keyset): with ``backward`` False, the
        ``limit`` records that follow ``after`` in ``order_by``'s order (the
        first page when ``after`` is None); with ``backward`` True, the
        ``limit`` records that precede ``after`` (the last page when ``after``
        is None), still returned in ``order_by``'s order. A keyset page costs
        the same wherever it is: the store keeps an index that answers the
        module's filter and each order (ties broken by id), and ``offset``
        must be 0 with a key or ``backward``.

        The count and the page are read in one snapshot; with a
        ``search_term`` the store answers from a text index, not a scan.

        :param search_term: a literal substring of the version or package name
            (``%`` and ``_`` match themselves), ASCII letters matched
            regardless of case.
        """

    # -- browsing (the applications and modules routes, the web interface) ----------

    @abstractmethod
    def applications(
        self,
        *,
        apps: frozenset[str] = frozenset(),
        search_term: str = "",
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, builtins.list[Summary]]:
        """One page of applications by code, and how many match.

        An application is a code with at least one record, deleted or not.
        Each :class:`Summary` counts its modules (any record), its live
        packages and the newest ``updated`` of a live one.

        :param apps: only these codes (a credential's scope); empty: all.
        :param search_term: only codes containing it literally (``%`` and
            ``_`` match themselves).
        """

    @abstractmethod
    def modules(self, code: str) -> builtins.list[Summary]:
        """Every module of application ``code`` by name, with its live packages
        and their newest ``updated`` (``modules`` is 0); empty: unknown code."""

    @abstractmethod
    def package_details(self, package_id: int) -> PackageDetails | None:
        """The details kept with a record by :meth:`commit`, or None (none
        captured, e.g. a record stored before details were)."""

    @abstractmethod
    def package_events(self, code: str, module: str, package_id: int,
                       limit: int = 200) -> builtins.list[AuditEvent]:
        """The newest ``limit`` audit events of one record, oldest first."""

    # -- maintenance (registry fsck / gc) -----------------------------------------

    @abstractmethod
    def all_blob_keys(self) -> set[str]:
        """Every blob key a record points to, except records whose blob gc purged."""

    @abstractmethod
    def is_blob_referenced(self, key: str) -> bool:
        """True when a record not purged points to ``key``."""

    @abstractmethod
    def page_by_id(self, after_id: int, limit: int) -> builtins.list[Record]:
        """Up to ``limit`` records with ids above ``after_id``, deleted ones included, by id."""

    @abstractmethod
    def blob_totals(self) -> tuple[int, int]:
        """(records, bytes) whose blob should exist: every record not purged."""

    @abstractmethod
    def set_broken(self, package_id: int, blob_key: str, reason: str | None) -> bool:
        """Mark a record's blob bad (``reason``) or clear the mark (None), only
        while it still points to ``blob_key``; returns whether it changed."""

    @abstractmethod
    def modules_with_more_live_than(self, count: int) -> builtins.list[tuple[str, str]]:
        """(code, module) of every module holding more than ``count`` live records, sorted."""

    @abstractmethod
    def purgeable(self, deleted_before: datetime) -> builtins.list[Record]:
        """Soft-deleted records, not yet purged, deleted at or before ``deleted_before``, oldest first."""

    @abstractmethod
    def mark_purged(self, record: Record) -> bool:
        """Mark ``record`` purged if it is still deleted with the same blob.

        The caller deletes the blob only after this returns True, so a
        concurrent restore either ran before (False) or is refused afterwards.
        """

    # -- credentials --------------------------------------------------------------

    @abstractmethod
    def add_credential(self, new: NewCredential) -> Credential:
        """Store a credential; its ``secret_hash`` is unique."""

    @abstractmethod
    def credential_by_hash(self, kind: str, secret_hash: str) -> Credential | None:
        """The live (not revoked) credential of ``kind`` with this hash, or None."""

    @abstractmethod
    def credential_by_id(self, credential_id: int) -> Credential | None:
        """The live (not revoked) credential with this id, or None (a web
        session holds the id, never the secret)."""

    @abstractmethod
    def credentials_named(self, kind: str, name: str) -> builtins.list[Credential]:
        """Every live credential of ``kind`` with this name (an app code's secrets)."""

    @abstractmethod
    def list_credentials(self) -> builtins.list[Credential]:
        """Every credential, revoked ones included, by id."""

    @abstractmethod
    def revoke_credential(self, credential_id: int) -> bool:
        """Revoke a credential; False when no live credential has that id."""

    @abstractmethod
    def note_credential_use(self, credential_id: int, used: datetime, stale_before: datetime) -> bool:
        """Set the credential's ``last_used`` to ``used`` unless it is already
        at or after ``stale_before`` (another process noted it); returns
        whether it wrote.

        Called while authenticating a request, so it must never wait for
        another writer: when the row or the database is locked it returns
        False or raises ``DatabaseUnavailable`` at once, and the caller skips
        the note.
        """

    # -- audit events ---------------------------------------------------------------

    @abstractmethod
    def add_event(self, event: AuditEvent) -> AuditEvent:
        """Append ``event`` to the audit trail; returns it with its id."""

    @abstractmethod
    def recent_events(self, limit: int = 100, code: str | None = None) -> builtins.list[AuditEvent]:
        """The newest ``limit`` events (of application ``code`` when given), newest first."""

    @abstractmethod
    def page_events(self, after_id: int, limit: int) -> builtins.list[AuditEvent]:
        """Up to ``limit`` events with ids above ``after_id``, by id (copying a store)."""

    # -- copying between stores (registry copy-records) ------------------------------

    @abstractmethod
    def is_empty(self) -> bool:
        """True when the store holds no record, credential or event."""

    @abstractmethod
    def import_records(self, records: Sequence[Record]) -> int:
        """Insert ``records`` with their ids and times, skipping ids already
        present, in one transaction; returns how many were inserted. Later
        inserts get ids above every imported one."""

    @abstractmethod
    def page_details(self, after_id: int, limit: int) -> builtins.list[tuple[int, PackageDetails]]:
        """Up to ``limit`` (record id, details) pairs with ids above ``after_id``, by id."""

    @abstractmethod
    def import_details(self, package_id: int, details: PackageDetails) -> bool:
        """Keep ``details`` for record ``package_id`` (which must exist) unless
        it has some; returns whether it did."""

    @abstractmethod
    def import_credentials(self, credentials: Sequence[Credential]) -> int:
        """:meth:`import_records` for credentials."""

    @abstractmethod
    def import_events(self, events: Sequence[AuditEvent]) -> int:
        """:meth:`import_records` for audit events."""

    # -- backup (registry backup / restore-backup) --------------------------------------

    def backup_to(self, folder: Path) -> RecordStore:
        """Write a consistent copy of every record, credential and event (one
        committed state) into the empty ``folder`` while the store stays in
        use, and return a store reading that copy; the caller closes it.

        :raises BackupUnsupported: the database is backed up by its own tools
            (the message names them); the default.
        """
        raise BackupUnsupported(f"{self.description}: back it up with the database's own tools")

    def restore_from(self, folder: Path) -> None:
        """Replace everything in this store with the copy :meth:`backup_to`
        wrote into ``folder``. Only while no server uses the store.

        :raises BackupUnsupported: as for :meth:`backup_to`.
        """
        raise BackupUnsupported(f"{self.description}: restore it with the database's own tools")


class BackupUnsupported(Exception):
    """A store that ``registry backup`` cannot copy; the message says what to use instead."""


def decide(existing: Record | None, new: NewPackage, allow_overwrite: bool) -> Outcome:
    """The versioning rules every store applies inside its commit transaction.

    - no such version: insert (CREATED);
    - soft-deleted version: revive it with the new bytes, same id (REVIVED);
    - live version, same sha256: nothing changes (IDENTICAL), unless the
      record is marked broken: then the blob is replaced (OVERWRITTEN), so a
      broken record is healed by uploading its bytes again;
    - live version, other bytes: replace them if ``allow_overwrite``
      (OVERWRITTEN), else raise ``PackageAlreadyExists``.
    """
    if existing is None:
        return Outcome.CREATED
    if existing.is_deleted:
        return Outcome.REVIVED
    if existing.sha256 == new.sha256 and not existing.broken:
        return Outcome.IDENTICAL
    if existing.sha256 != new.sha256 and not allow_overwrite:
        raise PackageAlreadyExists(f"version {new.version!r}", data={"sha256_signature": existing.sha256})
    return Outcome.OVERWRITTEN


def keyset_order(order: Order, backward: bool) -> tuple[str, str]:
    """The SQL a store needs for a keyset page: (comparison operator, ORDER BY terms).

    A page after a key keeps the rows with ``(column, id)`` beyond it in the
    listing's direction; a backward page reads the other way from the key (the
    store then reverses the rows it got, to return them in ``order``).
    Both stores compare row values, ``(column, id) < (?, ?)``, which their
    indexes on ``(code, module, column)`` (ties by id) answer directly.
    """
    descending = order.descending != backward
    direction = "DESC" if descending else "ASC"
    return ("<" if descending else ">"), f"{order.column} {direction}, id {direction}"
