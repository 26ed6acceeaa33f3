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

Background jobs and resumable uploads live here too, with *leases*: a claim
names its holder (:mod:`registry.leases`) and the time it lapses; every
later write of the holder is conditional on still holding it, so a job never
runs twice at once and two requests never append to one upload together.
Lease times are the caller's clock (``utc_now()`` + seconds).

The webhook outbox is a queue of deliveries with leases too: any instance
claims the next delivery of a target, so each is delivered by one process at
a time, in order per target, and again after a crash once its lease lapses.

New kinds of data are added as new abstract groups
of methods plus a migration in each store;
:class:`RecordStoreConformance` in ``registry/testing.py`` checks a plugin.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.catalog import PackageDetails, Summary
from registry.errors import PackageAlreadyExists
from registry.leases import holder_is_dead
from registry.records import (
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
        Without one, the count is the module's counter: every store keeps
        each module's live and soft-deleted record counts in a table of its
        own, changed in the same transaction as every write that changes
        them (commit, delete, restore, import, a purge or hard delete), so
        a count costs one row read whatever the module's size.

        :param search_term: a literal substring of the version or package name
            (``%`` and ``_`` match themselves), ASCII letters matched
            regardless of case. A term holding NUL finds nothing (no stored
            name holds one: they are made printable at ingest) and must
            never reach the database, whose query syntax or driver refuses it.
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
        after: str | None = None,
        backward: bool = False,
    ) -> tuple[int, builtins.list[Summary]]:
        """One page of applications by code, and how many match.

        An application is a code with at least one record, deleted or not.
        Each :class:`Summary` counts its modules (any record), its live
        packages and the newest ``updated`` of a live one. Counts come from
        the store's per-module counters (see :meth:`list`), never from
        counting records, so a page costs the same however many packages
        the applications hold.

        Pages come by ``offset``, or by key like :meth:`list`'s: with
        ``backward`` False the ``limit`` codes after ``after`` (the first
        page when None); with ``backward`` True the ``limit`` codes before
        it (the last page when None), still returned by code.

        :param apps: only these codes (a credential's scope); empty: all.
        :param search_term: only codes containing it literally (``%`` and
            ``_`` match themselves); one holding NUL finds nothing, as for :meth:`list`.
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

    def add_events(self, events: Sequence[AuditEvent]) -> builtins.list[AuditEvent]:
        """Append ``events`` in order, in one transaction where the store can
        (all or none); returns them with their ids.

        The audit plugin hands over the events of concurrent requests together,
        so they cost one write instead of one each. This default appends them
        one by one; a store overrides it with a single transaction.
        """
        return [self.add_event(event) for event in events]

    @abstractmethod
    def recent_events(self, limit: int = 100, code: str | None = None) -> builtins.list[AuditEvent]:
        """The newest ``limit`` events (of application ``code`` when given), newest first."""

    @abstractmethod
    def page_events(self, after_id: int, limit: int) -> builtins.list[AuditEvent]:
        """Up to ``limit`` events with ids above ``after_id``, by id (copying a store)."""

    # -- copying between stores (registry copy-records) ------------------------------

    @abstractmethod
    def is_empty(self) -> bool:
        """True when the store holds no record, credential, event, job, upload
        or outbox delivery."""

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

    @abstractmethod
    def page_jobs(self, after_id: str, limit: int) -> builtins.list[Job]:
        """Up to ``limit`` jobs with ids above ``after_id`` (string order), by id."""

    @abstractmethod
    def import_jobs(self, jobs: Sequence[Job]) -> int:
        """:meth:`import_records` for jobs, kept exactly as given (claims included)."""

    @abstractmethod
    def page_uploads(self, after_id: str, limit: int) -> builtins.list[Upload]:
        """Up to ``limit`` resumable uploads with ids above ``after_id``, by id."""

    @abstractmethod
    def import_uploads(self, uploads: Sequence[Upload]) -> int:
        """:meth:`import_records` for resumable uploads, kept exactly as given."""

    # -- background jobs -----------------------------------------------------------------

    @abstractmethod
    def create_job(self, new: NewJob) -> Job:
        """Store ``new`` as a ``queued`` job and return it."""

    @abstractmethod
    def get_job(self, code: str, module: str, job_id: str) -> Job | None:
        """The job with this id in this module, or None."""

    @abstractmethod
    def claim_job(self, holder: str, lease_seconds: float) -> Job | None:
        """Take the oldest claimable job (:func:`job_claimable`) for ``holder``:
        make it ``running`` with a lease of ``lease_seconds``, progress back to
        zero, one more attempt. None when no job is claimable.

        Atomic across threads, processes and hosts: of any number of
        concurrent calls, exactly one gets a given job.
        """

    @abstractmethod
    def heartbeat_job(self, job_id: str, holder: str, lease_seconds: float,
                      bytes_received: int, bytes_total: int | None) -> bool:
        """Record progress and renew the lease; False when the job is no longer
        ``holder``'s running job (cancelled, or claimed again after its lease lapsed)."""

    @abstractmethod
    def finish_job(self, job_id: str, holder: str, state: str, result: dict[str, Any] | None,
                   bytes_received: int, bytes_total: int | None) -> bool:
        """End ``holder``'s running job as ``state`` (one of ``FINISHED_STATES``)
        with ``result``, dropping the claim; False when it was no longer theirs."""

    @abstractmethod
    def cancel_job(self, code: str, module: str, job_id: str) -> Job | None:
        """Make a queued or running job ``cancelled``, dropping any claim (a
        finished job stays as it is); the job afterwards, or None when there
        is no such job in this module."""

    @abstractmethod
    def count_jobs_by_state(self) -> dict[str, int]:
        """How many jobs are in each of ``JOB_STATES`` (every state present, 0 for none)."""

    @abstractmethod
    def expire_jobs(self, finished_before: datetime) -> int:
        """Delete finished jobs last updated before ``finished_before``; how many."""

    # -- resumable uploads ---------------------------------------------------------------

    @abstractmethod
    def create_upload(self, new: NewUpload) -> Upload:
        """Store ``new`` as a ``receiving`` upload at offset 0, unlocked, and return it."""

    @abstractmethod
    def get_upload(self, code: str, module: str, upload_id: str) -> Upload | None:
        """The upload with this id in this module (expired or not), or None."""

    @abstractmethod
    def lock_upload(self, upload_id: str, holder: str, lease_seconds: float) -> Upload | None:
        """Take (or renew) the upload's write lease for ``holder``; the upload
        then, or None when there is no such upload or another holder's lease
        is live (:func:`upload_lockable`). Atomic like :meth:`claim_job`."""

    @abstractmethod
    def renew_upload_lock(self, upload_id: str, holder: str, lease_seconds: float) -> None:
        """Extend ``holder``'s write lease (a long PATCH body); nothing if not theirs."""

    @abstractmethod
    def save_progress(self, upload_id: str, holder: str, offset: int, storage_state: dict[str, Any],
                      expires: datetime, state: str = RECEIVING, release: bool = False,
                      durable: bool = False) -> Upload | None:
        """If ``holder`` holds the lease: record the kept ``offset``, the storage's
        bookkeeping, ``state`` and the new expiry time, releasing the lease when
        ``release`` (one transaction). The upload as it is afterwards, changed or
        not; None when it is gone.

        A save that leaves the upload ``RECEIVING`` or ``COMPLETING`` need not
        be durable when it returns (a store may skip its flush): a crash of
        the machine may take it back whole, never in part, and any later
        durable commit of the store makes it durable too. The chunk bytes it
        describes are not synced either, so after such a crash the offset is
        checked against the storage anyway
        (:meth:`registry.storage.ResumableStore.recover`), and a tus client
        asks for it (``HEAD``) before going on; an upload back at
        ``RECEIVING`` with all its bytes completes with an empty PATCH. Any
        other ``state``, and any save with ``durable``, is durable on return,
        like every other write (the caller is about to change the storage in
        a way no earlier state can follow: S3 joining the upload's parts)."""

    @abstractmethod
    def finish_upload(self, upload_id: str, holder: str, state: str, result: dict[str, Any],
                      expires: datetime) -> None:
        """If ``holder`` holds the lease: keep the completing PATCH's outcome
        (``succeeded``/``failed`` and ``result``) until ``expires``, clear the
        storage state and release the lease."""

    @abstractmethod
    def unlock_upload(self, upload_id: str, holder: str) -> None:
        """Release ``holder``'s write lease; nothing if not theirs."""

    @abstractmethod
    def delete_upload(self, upload_id: str) -> None:
        """Forget an upload (termination, expiry); a missing one is not an error."""

    @abstractmethod
    def expired_uploads(self, now: datetime, limit: int = 500) -> builtins.list[Upload]:
        """Up to ``limit`` uploads whose ``expires`` is before ``now`` (finished ones
        included: their answer was given), soonest expiry first."""

    @abstractmethod
    def count_uploads_in_progress(self) -> int:
        """Uploads still ``receiving`` or ``completing``."""


    # -- the webhook outbox ----------------------------------------------------------------

    @abstractmethod
    def add_outbox(self, new: NewOutboxEvent) -> builtins.list[Delivery]:
        """Queue ``new`` as one ``pending`` delivery per target, due now, in one
        transaction; returns them in target order. Ids grow with each call, so
        they order a target's deliveries."""

    @abstractmethod
    def claim_deliveries(self, holder: str, lease_seconds: float,
                         targets: Collection[str]) -> builtins.list[Delivery]:
        """Claim, for ``holder`` and ``lease_seconds``, the first ``pending``
        delivery (lowest id) of each of ``targets`` when it is due
        (``next_attempt`` passed) and not claimed under a live lease; by id.

        A target's later deliveries wait while its first is pending (claimed
        or backing off), so each target receives its events in order. Atomic
        across threads, processes and hosts: of concurrent calls, exactly one
        gets a given delivery. A lapsed lease is claimed again (at least once
        after a crash); ``attempts`` is unchanged by a claim.
        """

    @abstractmethod
    def delivered(self, delivery_id: int, holder: str) -> bool:
        """Mark ``holder``'s claimed delivery ``delivered`` and drop the claim;
        False when it is no longer theirs (its lease lapsed and another took it)."""

    @abstractmethod
    def delivery_failed(self, delivery_id: int, holder: str, error: str, retry_at: datetime | None) -> bool:
        """Count a failed attempt of ``holder``'s claimed delivery and drop the
        claim: ``pending`` again, due at ``retry_at``, or ``failed`` for good
        when ``retry_at`` is None. False when it is no longer theirs."""

    @abstractmethod
    def release_deliveries(self, holder: str) -> int:
        """Drop every claim of ``holder`` (shutting down) without counting an
        attempt, so another process may take them at once; how many."""

    @abstractmethod
    def count_deliveries_by_state(self) -> dict[str, int]:
        """How many deliveries are in each of ``OUTBOX_STATES`` (0 for none)."""

    @abstractmethod
    def expire_deliveries(self, finished_before: datetime) -> int:
        """Delete ``delivered`` and ``failed`` deliveries last updated before
        ``finished_before``; how many."""

    @abstractmethod
    def page_deliveries(self, after_id: int, limit: int) -> builtins.list[Delivery]:
        """Up to ``limit`` deliveries with ids above ``after_id``, by id."""

    @abstractmethod
    def import_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        """:meth:`import_records` for outbox deliveries, kept exactly as given."""

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


def job_claimable(state: str, holder: str | None, lease_until: datetime | None, now: datetime) -> bool:
    """Whether :meth:`RecordStore.claim_job` may take a job: ``queued``, or
    ``running`` with a lapsed lease or a holder whose process is gone (its
    progress then starts again from zero)."""
    if state == QUEUED:
        return True
    return state == RUNNING and (lease_until is None or lease_until < now or holder_is_dead(holder))


def upload_lockable(current: str | None, lease_until: datetime | None, holder: str, now: datetime) -> bool:
    """Whether ``holder`` may take an upload's write lease now held by ``current``."""
    if not current or current == holder:
        return True
    return lease_until is None or lease_until < now or holder_is_dead(current)


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
