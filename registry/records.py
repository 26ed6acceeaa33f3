"""The record store's domain model: package records, credentials, audit events,
background jobs and resumable uploads.

Plain values, no storage: every record-store plugin (``registry/store.py``)
returns these. Times are timezone-aware UTC ``datetime`` objects; how a store
keeps them and how the API prints them are their own business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.catalog import PackageDetails


class Order(Enum):
    """How a module's records may be listed (the API's ``order_by`` values).

    A store maps each to its own SQL; ties are always broken by id in the
    same direction, so pages never overlap.
    """

    CREATED = "created"
    CREATED_DESC = "-created"
    VERSION = "version"
    VERSION_DESC = "-version"
    PACKAGE_SIZE = "package_size"
    PACKAGE_SIZE_DESC = "-package_size"
    UPDATED = "updated"
    UPDATED_DESC = "-updated"

    @property
    def column(self) -> str:
        """The record field sorted on."""
        return self.value.lstrip("-")

    @property
    def descending(self) -> bool:
        return self.value.startswith("-")


@dataclass(frozen=True)
class PageKey:
    """A position in a listing, for keyset pages: the sort value and id of one record.

    ``value`` is the record's field named by the order's :attr:`Order.column`
    (a ``datetime`` for created/updated, ``str`` for version, ``int`` for
    package_size). A page taken after (or before) a key never includes the
    record at the key itself.
    """

    value: datetime | str | int
    id: int

    @classmethod
    def of(cls, record: Record, order: Order) -> PageKey:
        """The key of ``record`` in a listing sorted by ``order``."""
        value: datetime | str | int = getattr(record, order.column)
        return cls(value, record.id)


#: The ``order_by`` values the API accepts, in the order the docs list them.
ORDERINGS: tuple[str, ...] = tuple(order.value for order in Order)


def utc_now() -> datetime:
    """The current time, UTC, to the microsecond."""
    return datetime.now(UTC)


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
    deleted_at: datetime | None
    created: datetime
    updated: datetime
    operator: str
    #: why ``fsck --repair`` found the blob bad, or None
    broken: str | None = None
    #: when ``gc`` removed this deleted record's blob, or None
    purged_at: datetime | None = None


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
    #: what the package's page shows, captured at ingest; kept with the
    #: record and replaced with its bytes (None: nothing captured)
    details: PackageDetails | None = None


class Outcome(Enum):
    """What a commit did to the version; the value is the ``result`` label of upload metrics."""

    CREATED = "created"
    REVIVED = "revived"
    OVERWRITTEN = "overwritten"
    IDENTICAL = "identical"


@dataclass(frozen=True)
class CommitResult:
    """What :meth:`registry.store.RecordStore.commit` did.

    :param unused_blob_key: a blob the caller must now delete: the replaced
        one after an overwrite or revive, or the new one when nothing changed.
    """

    outcome: Outcome
    record: Record
    unused_blob_key: str | None


@dataclass(frozen=True)
class Credential:
    """A stored credential: its hash, never the secret.

    :param kind: ``token`` or ``app_secret``.
    :param name: the token's operator, or the app secret's app code.
    :param apps: application codes it may use; empty means all.
    """

    id: int
    kind: str
    name: str
    secret_hash: str
    hint: str
    apps: list[str]
    read_only: bool
    created: datetime
    revoked_at: datetime | None
    #: from when it answers 401 like a revoked one; None: never
    expires_at: datetime | None = None
    #: about when it last authenticated a request (noted at most once a minute); None: never
    last_used: datetime | None = None


@dataclass(frozen=True)
class NewCredential:
    """A credential to store (see :class:`Credential`)."""

    kind: str
    name: str
    secret_hash: str
    hint: str
    apps: list[str]
    read_only: bool
    expires_at: datetime | None = None


@dataclass(frozen=True)
class AuditEvent:
    """One row of the audit trail: a package was stored, overwritten, deleted or restored.

    :param id: assigned by the store; 0 for an event not yet stored.
    :param payload: the event as webhooks see it (``PackageEvent.to_json``).
    """

    kind: str
    time: datetime
    operator: str
    code: str
    module: str
    package_id: int
    version: str
    sha256: str
    package_size: int
    payload: dict[str, Any] = field(default_factory=dict)
    id: int = 0


# -- background jobs and resumable uploads -------------------------------------------

#: job states; a job is claimed ``queued`` → ``running`` and ends in one of FINISHED_STATES
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)

#: upload states: bytes still arriving, being ingested by the completing PATCH,
#: or done (SUCCEEDED / FAILED, with the outcome kept until the upload expires)
RECEIVING = "receiving"
COMPLETING = "completing"


@dataclass(frozen=True)
class NewJob:
    """A background link upload to queue.

    :param request: the upload's fields (version, allow_overwrite, sha256) and
        ``sealed_url``, the full ``package_url`` sealed (see :mod:`registry.seal`).
    :param package_url: the URL with secrets redacted, for display.
    """

    id: str
    code: str
    module: str
    package_url: str
    request: dict[str, Any]
    operator: str


@dataclass(frozen=True)
class Job:
    """One background link upload, as stored.

    :param result: the record JSON plus ``status`` when succeeded, the error
        ``{"code","detail_zh","detail_en",...}`` when failed, else None.
    :param holder: the process running it (see :mod:`registry.leases`), None
        unless ``running``.
    :param lease_until: when the holder's claim lapses without a heartbeat.
    :param attempts: how many times it was claimed.
    """

    id: str
    code: str
    module: str
    state: str
    package_url: str
    request: dict[str, Any]
    operator: str
    bytes_received: int
    bytes_total: int | None
    result: dict[str, Any] | None
    created: datetime
    updated: datetime
    holder: str | None
    lease_until: datetime | None
    attempts: int


@dataclass(frozen=True)
class NewUpload:
    """A resumable (tus) upload to create, at offset 0 and ``receiving``.

    :param metadata: the validated ``Upload-Metadata`` (filename, version,
        allow_overwrite, sha256).
    :param storage_state: the storage's resumable-upload bookkeeping
        (:class:`registry.storage.ResumableStore`).
    """

    id: str
    code: str
    module: str
    length: int
    metadata: dict[str, Any]
    operator: str
    storage_state: dict[str, Any]
    expires: datetime


@dataclass(frozen=True)
class Upload:
    """One resumable upload, as stored.

    :param offset: bytes kept durably so far.
    :param result: as for :class:`Job`, once the completing PATCH ran.
    :param holder: the process whose request writes to it, or None.
    :param lease_until: when that write lease lapses.
    :param expires: when ``gc`` and the API forget it (activity extends it).
    """

    id: str
    code: str
    module: str
    length: int
    offset: int
    metadata: dict[str, Any]
    operator: str
    state: str
    storage_state: dict[str, Any]
    result: dict[str, Any] | None
    created: datetime
    updated: datetime
    expires: datetime
    holder: str | None
    lease_until: datetime | None


# -- the webhook outbox ------------------------------------------------------------------

#: delivery states: waiting for its (next) attempt, done, or given up after the last attempt
PENDING = "pending"
DELIVERED = "delivered"
OUTBOX_STATES = (PENDING, DELIVERED, FAILED)


@dataclass(frozen=True)
class NewOutboxEvent:
    """A package event to deliver to each of ``targets``, queued in the record store.

    :param event_id: unique and stable across retries (``X-Registry-Event-Id``).
    :param targets: one name per receiver: the webhook plugin names a URL by
        its sha256, so a URL's credentials never reach the database.
    :param payload: the JSON body delivered.
    """

    event_id: str
    targets: tuple[str, ...]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """One event for one target, as the outbox keeps it.

    :param state: one of ``OUTBOX_STATES``.
    :param attempts: failed attempts so far (an attempt cut short by a crash
        does not count: its lease lapses and the delivery is tried again).
    :param next_attempt: not claimed before this time (back-off).
    :param holder: the process delivering it now (see :mod:`registry.leases`), or None.
    :param lease_until: when that claim lapses.
    :param last_error: why the last attempt failed, for people.
    """

    id: int
    event_id: str
    target: str
    payload: dict[str, Any]
    state: str
    attempts: int
    created: datetime
    updated: datetime
    next_attempt: datetime
    holder: str | None
    lease_until: datetime | None
    last_error: str | None
