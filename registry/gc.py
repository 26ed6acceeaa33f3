"""``registry gc``: free the storage nobody needs any more.

Five passes, in this order:

1. **keep_last** (``[retention] keep_last = N``, 0 = off): in each module,
   every live version but the newest N (by ``created``) is soft-deleted, like
   a DELETE by operator ``registry-gc``; from then on it is an ordinary
   deleted record (restorable until purged).
2. **purge**: the blob of each soft-deleted record deleted longer than the
   retention ago (``--deleted-older-than``, default 30 days) is removed. The
   record stays, deleted, with ``purged_at`` set: it is still listed with
   ``include_deleted=true``, download answers 404 as for any deleted record,
   restore answers 404 ``PACKAGE_NOT_FOUND``, and uploading that version
   again revives it with new bytes. The record is marked before the blob is
   deleted, so a concurrent restore either wins (and nothing is purged) or is
   refused.
3. **orphans**: blobs no record points to (left by a crash between storing a
   blob and committing its record, or a failed delete), once older than the
   grace period (``--grace-hours``, default 1 hour), so the blob of an upload
   still being committed is never taken. Each candidate is looked up again
   just before it is deleted. Only keys of the registry's own shape
   (:data:`registry.storage.BLOB_KEY_PATTERN`) are candidates: other objects
   in a shared bucket are counted and left alone. Needs
   :meth:`Storage.iter_blobs`; a backend without it is reported and skipped.
4. **staging**: files in the staging folder older than the grace period
   (uploads that died without cleaning up; the server also empties the
   folder at start-up, but a long-running one never restarts), and the
   per-process staging folders (:mod:`registry.staging_folders`) that no
   live process holds, made before the grace period (their process died; a
   server starting on this root would remove them too). A folder a serving
   process holds is never touched, however old its uploads, on this host or
   on another sharing the root.

5. **uploads**: resumable uploads past ``[uploads] expire_after`` since
   their last PATCH, with their bytes in the storage's staging area; and
   bytes kept for an upload no record names, once older than the grace
   period (needs :meth:`registry.storage.ResumableStore.kept`; a store
   without it is reported and skipped).

``dry_run`` reports what each pass would do and changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio.to_thread

from registry import staging_folders
from registry.errors import RegistryError
from registry.records import Order, Record
from registry.service import Registry
from registry.storage import BLOB_KEY_PATTERN

GC_OPERATOR = "registry-gc"
DEFAULT_RETENTION = timedelta(days=30)
DEFAULT_GRACE = timedelta(hours=1)

EXPIRE = "expire"
PURGE = "purge"
ORPHAN = "orphan"
STAGING = "staging"
UPLOAD = "upload"
UNRECORDED = "unrecorded"


@dataclass(frozen=True)
class GcOptions:
    """How a run behaves.

    :param retention: soft-deleted records older than this lose their blob.
    :param grace: unreferenced blobs and staging files younger than this stay.
    :param keep_last: live versions kept per module; 0 keeps all.
    """

    dry_run: bool = False
    retention: timedelta = DEFAULT_RETENTION
    grace: timedelta = DEFAULT_GRACE
    keep_last: int = 0


@dataclass(frozen=True)
class GcAction:
    """One thing gc did (or, in a dry run, would do).

    :param kind: ``expire``, ``purge``, ``orphan``, ``staging``, ``upload`` or ``unrecorded``.
    :param target: what it applies to, for people.
    :param size: bytes freed (0 for ``expire``, which frees nothing yet).
    :param error: why it failed, or None.
    """

    kind: str
    target: str
    size: int = 0
    error: str | None = None


@dataclass
class GcReport:
    actions: list[GcAction] = field(default_factory=list)
    #: passes that could not run, e.g. a storage that cannot list its blobs
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[GcAction]:
        return [a for a in self.actions if a.error is not None]

    @property
    def freed(self) -> int:
        return sum(a.size for a in self.actions if a.error is None)

    def count(self, kind: str) -> int:
        return sum(1 for a in self.actions if a.kind == kind and a.error is None)


ActionSink = Callable[[GcAction], None]


def _describe(record: Record) -> str:
    return f"id {record.id} {record.code}/{record.module} version {record.version}"


async def collect_garbage(registry: Registry, options: GcOptions, on_action: ActionSink = lambda a: None) -> GcReport:
    """Run the five passes of the module docstring; ``on_action`` sees each action as it happens."""
    report = GcReport()

    def record_action(action: GcAction) -> None:
        report.actions.append(action)
        on_action(action)

    expired = await expire_old_versions(registry, options, record_action)
    # Measured after pass 1, so that with a zero retention the versions it
    # just deleted are purged in the same run.
    cutoff = datetime.now(UTC) - options.retention
    await purge_deleted(registry, options, cutoff, expired, record_action)
    orphan_cutoff = datetime.now(UTC) - options.grace
    note = await remove_orphans(registry, options, orphan_cutoff, record_action)
    if note:
        report.notes.append(note)
    await sweep_staging(registry, options, orphan_cutoff, record_action)
    await expire_transfers(registry, options, record_action)
    note = await remove_unrecorded_uploads(registry, options, orphan_cutoff, record_action)
    if note:
        report.notes.append(note)
    return report


async def expire_transfers(registry: Registry, options: GcOptions, on_action: ActionSink) -> None:
    """Pass 5: resumable uploads past ``[uploads] expire_after`` lose their
    bytes and their row (see :func:`registry.resumable.expire_uploads`)."""
    from registry.resumable import expire_uploads

    for upload_id, size in await expire_uploads(registry, registry.records, options.dry_run):
        on_action(GcAction(UPLOAD, f"resumable upload {upload_id}", size))


async def remove_unrecorded_uploads(registry: Registry, options: GcOptions, cutoff: datetime,
                                    on_action: ActionSink) -> str | None:
    """Pass 5, continued: the bytes of resumable uploads no record names, last
    written before ``cutoff`` (a process died between keeping them and
    recording the upload, or between deleting the record and its bytes).
    Needs :meth:`ResumableStore.kept`; a note when the store cannot list."""
    store = registry.storage.resumable()
    try:
        kept = await store.kept()
    except NotImplementedError as exc:
        return f"resumable uploads without a record not collected: {exc}"
    except (RegistryError, OSError) as exc:
        return f"resumable uploads without a record not collected: {_reason(exc)}"
    candidates = [upload for upload in kept if upload.modified < cutoff]
    if not candidates:
        return None
    recorded = await registry.read(_recorded_upload_ids, registry)
    for upload in candidates:
        if upload.upload_id in recorded:
            continue
        target = (f"resumable upload {upload.upload_id}, which no record names,"
                  f" modified {upload.modified:%Y-%m-%d %H:%M:%S}")
        if not options.dry_run:
            try:
                await store.discard(upload.upload_id, {})
            except (RegistryError, OSError) as exc:
                on_action(GcAction(UNRECORDED, target, error=_reason(exc)))
                continue
        on_action(GcAction(UNRECORDED, target, upload.size))
    return None


def _recorded_upload_ids(registry: Registry) -> set[str]:
    """Blocking: the id of every resumable upload the record store holds."""
    ids: set[str] = set()
    after = ""
    while page := registry.records.page_uploads(after, 500):
        ids.update(upload.id for upload in page)
        after = page[-1].id
    return ids


async def expire_old_versions(registry: Registry, options: GcOptions, on_action: ActionSink) -> list[Record]:
    """Pass 1: soft-delete all but the newest ``keep_last`` live versions of each module.

    Returns the records deleted (in a dry run: that would be deleted).
    """
    if options.keep_last <= 0:
        return []
    records = registry.records
    expired: list[Record] = []
    for code, module in await anyio.to_thread.run_sync(records.modules_with_more_live_than, options.keep_last):
        count, _ = await anyio.to_thread.run_sync(partial(records.list, code, module, limit=1))
        _, older = await anyio.to_thread.run_sync(
            partial(records.list, code, module, order_by=Order.CREATED_DESC, offset=options.keep_last, limit=count)
        )
        for record in older:
            target = f"{_describe(record)} (keep_last {options.keep_last})"
            if options.dry_run:
                expired.append(record)
                on_action(GcAction(EXPIRE, target))
                continue
            try:
                expired.append(await registry.delete(code, module, record.id, GC_OPERATOR))
            except RegistryError as exc:
                on_action(GcAction(EXPIRE, target, error=exc.detail("en")))
                continue
            on_action(GcAction(EXPIRE, target))
    return expired


async def purge_deleted(
    registry: Registry, options: GcOptions, cutoff: datetime, expired: list[Record], on_action: ActionSink
) -> None:
    """Pass 2: remove the blobs of records deleted at or before ``cutoff``.

    :param expired: pass 1's records; in a dry run they are not deleted yet,
        so they are added here when the retention would already take them.
    """
    candidates = await anyio.to_thread.run_sync(registry.records.purgeable, cutoff)
    if options.dry_run and options.retention <= timedelta(0):
        candidates += expired
    for record in candidates:
        deleted = f"{record.deleted_at:%Y-%m-%d %H:%M:%S} UTC" if record.deleted_at else "just now"
        target = f"{_describe(record)} deleted {deleted} key {record.blob_key}"
        if options.dry_run:
            on_action(GcAction(PURGE, target, record.package_size))
            continue
        if not await anyio.to_thread.run_sync(registry.records.mark_purged, record):
            continue  # restored or uploaded again meanwhile: its blob is in use
        try:
            await registry.storage.delete(record.blob_key)
        except (RegistryError, OSError) as exc:
            # the record is purged, so the blob is now an orphan: pass 3 of a
            # later run removes it
            on_action(GcAction(PURGE, target, error=_reason(exc)))
            continue
        on_action(GcAction(PURGE, target, record.package_size))


async def remove_orphans(registry: Registry, options: GcOptions, cutoff: datetime, on_action: ActionSink) -> str | None:
    """Pass 3: delete blobs no record points to, last modified before ``cutoff``.

    Returns a note when the pass could not run (the storage cannot list) or
    left foreign objects alone.
    """
    referenced = await anyio.to_thread.run_sync(registry.records.all_blob_keys)
    foreign = 0
    try:
        listing = registry.storage.iter_blobs()
        async with aclosing(listing) as blobs:  # type: ignore[type-var]
            async for blob in blobs:
                if blob.key in referenced or blob.modified >= cutoff:
                    continue
                if not BLOB_KEY_PATTERN.fullmatch(blob.key):
                    foreign += 1
                    continue
                # The snapshot above may predate a commit; look again right before deleting.
                if await anyio.to_thread.run_sync(registry.records.is_blob_referenced, blob.key):
                    continue
                target = f"key {blob.key} modified {blob.modified:%Y-%m-%d %H:%M:%S}"
                on_action(await _delete_blob(registry, blob.key, target, blob.size, options.dry_run))
    except NotImplementedError as exc:
        return f"orphan blobs not collected: {exc}"
    except (RegistryError, OSError) as exc:
        return f"orphan blobs not collected: cannot list the storage: {_reason(exc)}"
    if foreign:
        return f"left {foreign} unreferenced object(s) alone: their keys are not registry blob keys"
    return None


async def _delete_blob(registry: Registry, key: str, target: str, size: int, dry_run: bool) -> GcAction:
    if dry_run:
        return GcAction(ORPHAN, target, size)
    try:
        await registry.storage.delete(key)
    except (RegistryError, OSError) as exc:
        return GcAction(ORPHAN, target, error=_reason(exc))
    return GcAction(ORPHAN, target, size)


async def sweep_staging(registry: Registry, options: GcOptions, cutoff: datetime, on_action: ActionSink) -> None:
    """Pass 4: delete staging files last modified before ``cutoff``, and
    abandoned process folders made before it."""
    base = registry.storage.staging_dir
    actions = await anyio.to_thread.run_sync(_sweep_staging_folder, base, cutoff.timestamp(), options.dry_run)
    for action in actions:
        on_action(action)
    abandoned = await anyio.to_thread.run_sync(
        partial(staging_folders.abandoned_folders, base, created_before=cutoff.timestamp(),
                remove=not options.dry_run))
    for folder, size in abandoned:
        on_action(GcAction(STAGING, f"{folder} (abandoned by its process)", size))


def _sweep_staging_folder(folder: Path, before: float, dry_run: bool) -> list[GcAction]:
    """Blocking: the regular files of ``folder`` with an mtime before ``before``, removed."""
    actions: list[GcAction] = []
    try:
        with os.scandir(folder) as scan:
            entries = [e for e in scan if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return actions
    for entry in entries:
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # finished (renamed into place or removed) meanwhile
        if stat.st_mtime >= before:
            continue
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        target = f"{entry.path} modified {modified:%Y-%m-%d %H:%M:%S}"
        if not dry_run:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                actions.append(GcAction(STAGING, target, error=exc.strerror or str(exc)))
                continue
        actions.append(GcAction(STAGING, target, stat.st_size))
    return actions


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RegistryError):
        return exc.detail("en")
    return f"{type(exc).__name__}: {exc}"
