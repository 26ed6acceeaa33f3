"""Copy one record store into another (``registry copy-records``): SQLite → PostgreSQL.

Everything the store keeps is copied with its ids and times: package records
(deleted and purged ones too), the package details the web interface shows,
credentials (hashes only, as stored), audit
events, background jobs, resumable uploads and the webhook outbox (a
delivery still pending is made by the target's instances).

Jobs and uploads are copied as they are, claims included: a job still
running in the source's process is run again by the target once that
claim's lease lapses (at once when the holder's process is gone), and a
client can continue an unfinished tus upload on the target, whose bytes are
in the storage both registries share (``storage_state`` says where). Copy
with the source stopped so neither side goes on changing a job. Each row is inserted unless its id is already there, so a copy
interrupted half-way is finished by running it again with ``resume``; a
target holding anything else is refused unless ``resume`` is set, so a
mistyped URL cannot mix two registries. Blobs are not copied: they stay in
the storage both registries are configured with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from registry.store import RecordStore

PAGE_SIZE = 500

T = TypeVar("T")  # a row of one table
K = TypeVar("K", int, str)  # the key pages follow


class TargetNotEmpty(Exception):
    """The target store already holds records, credentials or events (an
    operator's mistake, never an API answer: not a ``RegistryError``)."""

    def __init__(self) -> None:
        super().__init__("TARGET_NOT_EMPTY: the target record store is not empty"
                         " (use --resume to finish an interrupted copy)")


@dataclass
class CopyReport:
    """Rows copied now (``*_copied``) and rows already there (``skipped``)."""

    records_copied: int = 0
    details_copied: int = 0
    credentials_copied: int = 0
    events_copied: int = 0
    jobs_copied: int = 0
    uploads_copied: int = 0
    deliveries_copied: int = 0
    skipped: int = 0


def copy_records(source: RecordStore, target: RecordStore, *, resume: bool = False,
                 progress: Callable[[str, int], None] = lambda kind, count: None) -> CopyReport:
    """Copy every row of ``source`` into ``target`` (both migrated by the caller). Blocks.

    :param progress: called with ("records" | "details" | "credentials" | "events" | "jobs" | "uploads"
        | "deliveries",
        rows so far).
    :raises TargetNotEmpty: ``target`` holds data and ``resume`` is false.
    """
    if not resume and not target.is_empty():
        raise TargetNotEmpty()
    report = CopyReport()

    def pages(kind: str, page: Callable[[K, int], Sequence[T]], load: Callable[[Sequence[T]], int],
              key: Callable[[T], K], first: K) -> int:
        """Copy one table page by page; how many rows went in (the rest were there)."""
        copied = 0
        after = first
        while rows := page(after, PAGE_SIZE):
            inserted = load(rows)
            copied += inserted
            report.skipped += len(rows) - inserted
            after = key(rows[-1])
            progress(kind, copied)
        return copied

    report.records_copied = pages("records", source.page_by_id, target.import_records, lambda r: r.id, 0)
    # after every record: a record's details refer to it
    report.details_copied = pages(
        "details", source.page_details,
        lambda rows: sum(target.import_details(package_id, kept) for package_id, kept in rows),
        lambda row: row[0], 0,
    )
    credentials = source.list_credentials()
    report.credentials_copied = target.import_credentials(credentials)
    report.skipped += len(credentials) - report.credentials_copied
    progress("credentials", report.credentials_copied)
    report.events_copied = pages("events", source.page_events, target.import_events, lambda e: e.id, 0)
    report.jobs_copied = pages("jobs", source.page_jobs, target.import_jobs, lambda j: j.id, "")
    report.uploads_copied = pages("uploads", source.page_uploads, target.import_uploads, lambda u: u.id, "")
    report.deliveries_copied = pages("deliveries", source.page_deliveries, target.import_deliveries,
                                     lambda d: d.id, 0)
    return report
