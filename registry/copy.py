"""Copy one record store into another (``registry copy-records``): SQLite → PostgreSQL.

Everything the store keeps is copied with its ids and times: package records
(deleted and purged ones too), the package details the web interface shows,
credentials (hashes only, as stored), audit
events, background jobs and resumable uploads.

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

from collections.abc import Callable
from dataclasses import dataclass

from registry.store import RecordStore

PAGE_SIZE = 500


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
    skipped: int = 0


def copy_records(source: RecordStore, target: RecordStore, *, resume: bool = False,
                 progress: Callable[[str, int], None] = lambda kind, count: None) -> CopyReport:
    """Copy every row of ``source`` into ``target`` (both migrated by the caller). Blocks.

    :param progress: called with ("records" | "details" | "credentials" | "events" | "jobs" | "uploads",
        rows so far).
    :raises TargetNotEmpty: ``target`` holds data and ``resume`` is false.
    """
    if not resume and not target.is_empty():
        raise TargetNotEmpty()
    report = CopyReport()
    after = 0
    while page := source.page_by_id(after, PAGE_SIZE):
        copied = target.import_records(page)
        report.records_copied += copied
        report.skipped += len(page) - copied
        after = page[-1].id
        progress("records", report.records_copied)
    # after every record: a record's details refer to it
    after = 0
    while details := source.page_details(after, PAGE_SIZE):
        for package_id, kept in details:
            if target.import_details(package_id, kept):
                report.details_copied += 1
            else:
                report.skipped += 1
        after = details[-1][0]
        progress("details", report.details_copied)
    credentials = source.list_credentials()
    report.credentials_copied = target.import_credentials(credentials)
    report.skipped += len(credentials) - report.credentials_copied
    progress("credentials", report.credentials_copied)
    after = 0
    while events := source.page_events(after, PAGE_SIZE):
        copied = target.import_events(events)
        report.events_copied += copied
        report.skipped += len(events) - copied
        after = events[-1].id
        progress("events", report.events_copied)
    after_key = ""
    while jobs := source.page_jobs(after_key, PAGE_SIZE):
        copied = target.import_jobs(jobs)
        report.jobs_copied += copied
        report.skipped += len(jobs) - copied
        after_key = jobs[-1].id
        progress("jobs", report.jobs_copied)
    after_key = ""
    while uploads := source.page_uploads(after_key, PAGE_SIZE):
        copied = target.import_uploads(uploads)
        report.uploads_copied += copied
        report.skipped += len(uploads) - copied
        after_key = uploads[-1].id
        progress("uploads", report.uploads_copied)
    return report
