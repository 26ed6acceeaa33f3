"""The upload pipeline and the other package operations; nothing HTTP-specific.

    resolve origin ─▶ stream bytes (size limit + sha256, one pass) ─▶ staging
                     └▶ inspect the archive as it is written (a follower thread)
    ─▶ version ─▶ conflict check ─▶ put blob ─▶ commit record

Both upload routes and every origin and storage go through :meth:`Registry.ingest`,
except a small file upload (:meth:`Registry.upload_small`): received whole in
memory, it takes the same steps in one blocking call, one hand-off to a write thread.
Blocking work (the record store, archive inspection) runs in worker threads. A failure
at any step leaves no record, no blob and no staging file behind: the staging
file is removed on exit, and a blob that did not end up referenced is deleted.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import anyio
import anyio.to_thread
import pluggy

from registry import events, staging_folders
from registry.archive import (
    ArchiveInfo,
    ArchiveLimits,
    inspect_bytes,
    inspect_following,
    version_from_app_desc,
)
from registry.auth import CredentialStore
from registry.catalog import PackageDetails
from registry.errors import (
    ChecksumMismatch,
    InvalidPackage,
    MissingVersionInfo,
    PackageAlreadyExists,
    PackageDownloadFailed,
    PackageNotFound,
    PackageTooLarge,
    RegistryError,
    UnsupportedSourceOrigin,
    ValidationError,
)
from registry.hooks import call_hook
from registry.metrics import Metrics
from registry.origins import Origin, default_file_name
from registry.records import CommitResult, NewPackage, Outcome, Record
from registry.redact import redact_url
from registry.settings import Settings
from registry.small_uploads import BodyBuffer, write_staged
from registry.staging import StagingFile, check_free_space, sweep_staging
from registry.storage import BlockingStorage, Storage, new_blob_key
from registry.store import RecordStore
from registry.transfers import Pool
from registry.validation import check_version, derive_package_name

logger = logging.getLogger("registry.service")

T = TypeVar("T")

#: Threads for record-store reads / writes per process (see ``Registry.read``).
READ_THREADS = 32
WRITE_THREADS = 8
#: Listings and searches (the store reads whose cost grows with a module)
#: run in at most this many threads of their own, so a burst of them never
#: holds the threads that answer a record, a download or a credential check.
#: One per core: a SQLite scan keeps a core busy, and more scans at once than
#: cores only share the same cores more finely while the event loop and the
#: point lookups wait for a turn on them (measured: 64 searches at once on 2
#: cores made GET one record 50 ms p50 / 300 ms p99 with 8 such threads,
#: 2-4 ms / 15-40 ms with 2; the searches finished no slower). Searches
#: beyond it wait for a thread without using one.
SLOW_READ_THREADS = max(2, os.cpu_count() or 1)

_EVENT_KINDS = {
    Outcome.CREATED: events.STORED,
    Outcome.REVIVED: events.STORED,
    Outcome.OVERWRITTEN: events.OVERWRITTEN,
}


@dataclass(frozen=True)
class UploadRequest:
    """The validated fields of an upload.

    :param version: None to read it from the package's ``app_desc.yaml``.
    :param sha256: the client's digest to verify, or None.
    """

    code: str
    module: str
    version: str | None
    allow_overwrite: bool
    sha256: str | None
    operator: str


class Registry:
    """The service: owns the stores, the storage and the enabled origins."""

    def __init__(
        self,
        settings: Settings,
        pm: pluggy.PluginManager,
        storage: Storage,
        origins: list[Origin],
        records: RecordStore,
    ) -> None:
        self.settings = settings
        self.pm = pm
        self.storage = storage
        self.origins = origins
        self.enabled_origins = set(settings["origins.enabled"])
        self.time_zone = ZoneInfo(settings["server.time_zone"])
        #: records, credentials and events (see ``registry/store.py``)
        self.records = records
        # Store calls run in pools of their own, apart from anyio's default
        # threads (staging, inspection) and split by kind: writers waiting on
        # a locked or slow database hold at most WRITE_THREADS threads, so
        # reads and authentication keep answering meanwhile.
        self.read_threads = Pool("store-read", READ_THREADS)
        self.write_threads = Pool("store-write", WRITE_THREADS)
        self.slow_read_threads = Pool("store-slow-read", SLOW_READ_THREADS)
        self.metrics = Metrics()
        #: per-instance state of plugins (a webhook queue, …), keyed by plugin name
        self.extensions: dict[str, Any] = {}
        self.credentials = CredentialStore(records)
        self._staging: staging_folders.HeldFolder | None = None
        self.max_package_size: int = settings["limits.max_package_size"]
        self.archive_limits = ArchiveLimits(
            max_members=settings["limits.max_members"],
            max_unpacked_size=settings["limits.max_unpacked_size"],
            max_compression_ratio=settings["limits.max_compression_ratio"],
        )

    async def read(self, call: Callable[..., T], *args: Any) -> T:
        """Run a record-store read in a read thread (never behind waiting writers)."""
        return await self.read_threads.run_to_end(call, *args)

    async def read_slow(self, call: Callable[..., T], *args: Any) -> T:
        """Run a listing or search in a slow-read thread (never holding the read threads)."""
        return await self.slow_read_threads.run_to_end(call, *args)

    async def write(self, call: Callable[..., T], *args: Any) -> T:
        """Run a record-store write in a write thread (at most WRITE_THREADS
        wait on a locked or slow database at once). A cancelled caller waits
        for the write to end: whether it happened is known when it moves on."""
        return await self.write_threads.run_to_end(call, *args)

    # -- life cycle -------------------------------------------------------

    async def startup(self) -> None:
        """Migrate the record store, prepare the storage, sweep stale staging files."""
        applied = await anyio.to_thread.run_sync(self.records.migrate)
        for migration in applied:
            logger.info("applied record-store migration %d: %s", migration.number, migration.name)
        await self.storage.startup()
        base = self.storage.staging_dir
        if self._staging is None:
            self._staging = await anyio.to_thread.run_sync(staging_folders.claim, base)
        removed = await anyio.to_thread.run_sync(sweep_staging, base)
        removed += await anyio.to_thread.run_sync(staging_folders.sweep_abandoned, base, self._staging.path)
        if removed:
            logger.info("removed %d stale staging file(s) or abandoned staging folder(s)", removed)
        await call_hook(self.pm.hook.registry_startup, {"registry": self}, on_error="raise")

    async def shutdown(self) -> None:
        """Run the plugins' ``registry_shutdown`` hooks, then stop the storage,
        close the record store, let its threads end and release this process's
        staging folder, also when a hook fails (each failure is logged)."""
        try:
            await call_hook(self.pm.hook.registry_shutdown, {"registry": self}, on_error="log")
        finally:
            try:
                await self.storage.shutdown()
            finally:
                await anyio.to_thread.run_sync(self.records.close)
                for pool in (self.read_threads, self.write_threads, self.slow_read_threads):
                    pool.close()
                if self._staging is not None:
                    await anyio.to_thread.run_sync(self._staging.release)
                    self._staging = None

    @property
    def staging_folder(self) -> Path:
        """This process's own staging folder (held with a lock, see
        :mod:`registry.staging_folders`); the storage's folder before start-up."""
        return self._staging.path if self._staging is not None else self.storage.staging_dir

    async def check_ready(self) -> None:
        """Return when the database and the storage answer now; raise whatever
        the failing one raised otherwise (a ``RegistryError`` or any other
        exception: the caller treats every failure as "not ready")."""
        await self.read(self.records.check)
        await self.storage.check()
        # Uploads are received into the staging folder whatever the backend:
        # a full disk there fails every upload, so it is not ready either.
        await anyio.to_thread.run_sync(check_free_space, self.storage.staging_dir)

    # -- uploads ----------------------------------------------------------

    @asynccontextmanager
    async def staging(self) -> AsyncIterator[StagingFile]:
        """A fresh staging file, enforcing the package size limit and inspected
        as it arrives (see :func:`registry.archive.inspect_following`); always removed."""
        async with self.staging_over(None, self.max_package_size) as staged:
            yield staged

    def staging_over(self, existing: Path | None, max_size: int) -> StagingFile:
        """A staging file inspected as it arrives, of at most ``max_size``
        bytes, writing into ``existing`` (a resumable upload's file, never
        removed) or a fresh file (always removed); enter it to use it."""
        inspect = functools.partial(inspect_following, limits=self.archive_limits)
        return StagingFile(self.staging_folder, max_size, follower=inspect, existing=existing)

    def resolve_origin(self, url: str) -> Origin:
        """The enabled origin that accepts ``url``.

        :raises UnsupportedSourceOrigin: none does (unknown scheme or disabled).
        """
        disabled = None
        for origin in self.origins:
            if origin.accepts(url):
                if origin.name in self.enabled_origins:
                    return origin
                disabled = origin.name
        scheme = url.split(":", 1)[0].lower()
        if disabled is not None:
            raise UnsupportedSourceOrigin(f"origin '{disabled}' is disabled")
        raise UnsupportedSourceOrigin(f"no origin accepts '{scheme}:' URLs")

    async def _counted(self, origin: str, upload: Awaitable[CommitResult]) -> CommitResult:
        """Await an upload, counting its outcome or error code by origin
        (``registry_uploads_total``): every way in counts the same."""
        try:
            result = await upload
        except RegistryError as exc:
            self.metrics.uploads.labels(origin, exc.code).inc()
            raise
        self.metrics.uploads.labels(origin, result.outcome.value).inc()
        return result

    async def upload_link(self, upload: UploadRequest, package_url: str) -> CommitResult:
        """Fetch ``package_url`` through the enabled origin that accepts it and ingest it.

        When the version is given, conflicts are decided before the body is
        read where the bytes are already known to differ: by the client's
        ``sha256``, or by the size the origin announces.

        :raises UnsupportedSourceOrigin: no enabled origin accepts the URL
            (counted under origin ``none``).
        """
        try:
            origin = self.resolve_origin(package_url)
        except RegistryError as exc:
            self.metrics.uploads.labels("none", exc.code).inc()
            raise
        return await self.upload_through(upload, origin, package_url)

    async def upload_through(self, upload: UploadRequest, origin: Origin, package_url: str) -> CommitResult:
        """:meth:`upload_link` through an origin already resolved (a background
        job wraps it to watch the bytes go by), counted under its name."""
        return await self._counted(origin.name, self._fetch_and_ingest(upload, origin, package_url))

    async def upload_file(self, receive: Callable[[StagingFile], Awaitable[tuple[UploadRequest, str]]]) -> CommitResult:
        """Stage a file the caller receives and ingest it (counted under origin ``upload``).

        :param receive: writes the bytes into the staging file it is given and
            returns the upload's validated fields and the file's name; its
            errors fail the upload like any other (the staging file is removed).
        """

        async def stage_and_ingest() -> CommitResult:
            async with self.staging() as staged:
                upload, file_name = await receive(staged)
                return await self.ingest(upload, staged, file_name=file_name, origin="upload")

        return await self._counted("upload", stage_and_ingest())

    async def upload_small(self, receive: Callable[[BodyBuffer], Awaitable[tuple[UploadRequest, str]]]) -> CommitResult:
        """:meth:`upload_file` for a small body (see :mod:`registry.small_uploads`):
        the same checks, errors, outcomes and durability, the package received
        whole into memory first.

        With a storage that offers :meth:`Storage.blocking`, everything after
        the body has arrived is one hand-off to a write thread: it stores the
        blob (:meth:`_store_small`) and commits it (:meth:`_commit_small`), so
        that uploads waiting on a locked database hold write threads only
        (each hand-off wakes a worker thread, a tenth of an upload's CPU on
        the event loop in a profile).
        With any other storage the bytes go through a staging file as usual.

        :param receive: writes the package into the buffer it is given and
            returns the upload's validated fields and the file's name.
        """

        async def receive_and_ingest() -> CommitResult:
            body = BodyBuffer(self.max_package_size)
            upload, file_name = await receive(body)
            storage = self.storage.blocking()
            if storage is None:
                async with self.staging() as staged:
                    await staged.write(body.data)
                    return await self.ingest(upload, staged, file_name=file_name, origin="upload")
            # Shielded: the blob it stores is committed or deleted by the same
            # call; the caller must not walk away while it runs.
            with anyio.CancelScope(shield=True):
                result = await self.write(self._store_and_commit_small, storage, upload, body.data, file_name)
            await self._announce(result, upload.operator)
            return result

        return await self._counted("upload", receive_and_ingest())

    def _store_and_commit_small(self, storage: BlockingStorage, upload: UploadRequest, data: bytes,
                                file_name: str) -> CommitResult:
        """:meth:`_store_small`, then :meth:`_commit_small` of what it stored,
        in the calling (write) thread."""
        stored = self._store_small(storage, upload, data, file_name)
        if isinstance(stored, CommitResult):
            return stored
        return self._commit_small(storage, stored, upload.allow_overwrite)

    def _store_small(self, storage: BlockingStorage, upload: UploadRequest, data: bytes,
                     file_name: str) -> CommitResult | NewPackage:
        """The blocking first half of :meth:`ingest` for a package held in
        memory: verify, inspect, version, decide, write and fsync a staging
        file, store the blob. Returns the ``IDENTICAL`` result when nothing is
        to be stored, else the record-to-be whose blob is now durable. No
        staging file is left, whatever happens."""
        if not data:
            raise InvalidPackage("the package is empty")
        sha256 = hashlib.sha256(data).hexdigest()
        if upload.sha256 is not None and upload.sha256 != sha256:
            raise ChecksumMismatch(f"expected {upload.sha256}, received {sha256}")
        info = inspect_bytes(data, self.archive_limits)
        version = upload.version if upload.version is not None else version_of(info)
        existing = self.records.find_version(upload.code, upload.module, version)
        existing = None if existing is None or existing.is_deleted else existing
        identical = _early_decision(existing, upload, sha256=sha256, size=len(data))
        if identical is not None:
            return CommitResult(Outcome.IDENTICAL, identical, None)
        new = _new_package(upload, version, info, file_name=file_name, size=len(data), sha256=sha256,
                           origin="upload", source_url="")
        staged = write_staged(self.staging_folder, data)  # fsynced: durable before it is named
        try:
            storage.put_blocking(staged, new.blob_key)  # moves it: nothing to remove after
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return new

    def _commit_small(self, storage: BlockingStorage, new: NewPackage, allow_overwrite: bool) -> CommitResult:
        """The blocking second half: commit the record of a stored blob; the
        blob that no record ends up naming is deleted (see :meth:`_named_anyway`)."""
        try:
            result = self.records.commit(new, allow_overwrite)
        except BaseException:
            try:
                named = self.records.is_blob_referenced(new.blob_key)
            except RegistryError:
                named = False
            if not named:
                _delete_quietly_blocking(storage, new.blob_key)
            raise
        if result.unused_blob_key is not None:
            _delete_quietly_blocking(storage, result.unused_blob_key)
        return result

    async def _fetch_and_ingest(self, upload: UploadRequest, origin: Origin, package_url: str) -> CommitResult:
        existing = None
        if upload.version is not None:
            existing = await self._live_version(upload, upload.version)
            identical = _early_decision(existing, upload, sha256=upload.sha256, size=None)
            if identical is not None:
                return CommitResult(Outcome.IDENTICAL, identical, None)
        async with self.staging() as staged:
            async with origin.open(package_url, self.max_package_size) as download:
                if download.size is not None and download.size > self.max_package_size:
                    raise PackageTooLarge(f"the origin announces {download.size} bytes")
                _early_decision(existing, upload, sha256=upload.sha256, size=download.size)
                await staged.write_all(download.chunks)
            if download.size is not None and staged.size != download.size:
                raise PackageDownloadFailed(
                    f"received {staged.size} bytes, the origin announced {download.size}"
                )
            return await self.ingest(
                upload,
                staged,
                file_name=download.file_name or default_file_name(package_url),
                origin=origin.name,
                # redacted whoever made it: secrets never reach the database
                source_url=redact_url(download.display_url or package_url),
            )

    async def _live_version(self, upload: UploadRequest, version: str) -> Record | None:
        """The record of ``version`` unless it is absent or soft-deleted."""
        existing = await self.read(self.records.find_version, upload.code, upload.module, version)
        return None if existing is None or existing.is_deleted else existing

    async def ingest(
        self,
        upload: UploadRequest,
        staged: StagingFile,
        *,
        file_name: str,
        origin: str,
        source_url: str = "",
    ) -> CommitResult:
        """Verify, inspect, version and commit a fully received staging file.

        Returns what :meth:`RecordStore.commit` did (an identical live version
        short-circuits to ``IDENTICAL`` without storing anything), after
        sending the ``stored``/``overwritten`` event for a change.

        :raises InvalidPackage: empty, or not an archive the inspection accepts.
        :raises ChecksumMismatch: the client's ``sha256`` does not match the bytes.
        :raises MissingVersionInfo: no version given and none in ``app_desc.yaml``.
        :raises PackageAlreadyExists: the version holds other bytes and overwriting is off.
        """
        await staged.finish()
        assert staged.path is not None
        if staged.size == 0:
            raise InvalidPackage("the package is empty")
        if upload.sha256 is not None and upload.sha256 != staged.sha256:
            raise ChecksumMismatch(f"expected {upload.sha256}, received {staged.sha256}")
        info: ArchiveInfo = await staged.followed()
        version = upload.version
        if version is None:
            # Up to 1 MiB of YAML parsed in pure Python takes seconds: off the event loop.
            version = await anyio.to_thread.run_sync(version_of, info)
        existing = await self._live_version(upload, version)
        identical = _early_decision(existing, upload, sha256=staged.sha256, size=staged.size)
        if identical is not None:
            return CommitResult(Outcome.IDENTICAL, identical, None)
        new = _new_package(upload, version, info, file_name=file_name, size=staged.size, sha256=staged.sha256,
                           origin=origin, source_url=source_url)
        await staged.synced()  # the fsync started by finish() ran during inspection
        result = await self._store_and_commit(staged.path, new, upload.allow_overwrite)
        await self._announce(result, upload.operator)
        return result

    async def _announce(self, result: CommitResult, operator: str) -> None:
        """Send the ``stored``/``overwritten`` event of a commit that changed something."""
        kind = _EVENT_KINDS.get(result.outcome)
        if kind is not None:
            await events.dispatch(self, events.PackageEvent(kind, result.record, operator))

    async def _store_and_commit(self, staged: Path, new: NewPackage, allow_overwrite: bool) -> CommitResult:
        """Put the blob, then switch the record to it; clean up whichever blob lost."""
        await self.storage.put(staged, new.blob_key)
        try:
            result = await self.write(self.records.commit, new, allow_overwrite)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if not await self._named_anyway(new.blob_key):
                    await self._delete_quietly(new.blob_key)
            raise
        if result.unused_blob_key is not None:
            with anyio.CancelScope(shield=True):
                await self._delete_quietly(result.unused_blob_key)
        return result

    async def _named_anyway(self, key: str) -> bool:
        """Whether a record names ``key`` although its commit raised: the
        failure came after the transaction was in (flushing the log failed).
        Its blob must then stay; False when even that cannot be read."""
        try:
            return await self.read(self.records.is_blob_referenced, key)
        except RegistryError:
            return False

    async def _delete_quietly(self, key: str) -> None:
        """Delete a blob no record points to; ``registry gc`` retries failures."""
        try:
            await self.storage.delete(key)
        except (RegistryError, OSError):
            logger.warning("could not delete unreferenced blob %s", key, exc_info=True)

    # -- reads and record changes -------------------------------------------

    async def get(self, code: str, module: str, package_id: int) -> Record:
        """The record with this id in this module, soft-deleted or not.

        :raises PackageNotFound: no such id in this module.
        """
        record = await self.read(self.records.get, code, module, package_id)
        if record is None:
            raise PackageNotFound(f"id {package_id}")
        return record

    async def delete(self, code: str, module: str, package_id: int, operator: str) -> Record:
        """Soft-delete the record and return it; a ``deleted`` event is sent
        only when this call changed it (deleting twice is not an error).

        :raises PackageNotFound: no such id in this module.
        """
        record, changed = await self.write(self.records.soft_delete, code, module, package_id)
        if changed:
            await events.dispatch(self, events.PackageEvent(events.DELETED, record, operator))
        return record

    async def restore(self, code: str, module: str, package_id: int, operator: str) -> Record:
        """Undo a soft delete and return the record; a ``restored`` event is
        sent only when this call changed it (restoring a live record is not an error).

        :raises PackageNotFound: no such id in this module, or ``gc`` purged its bytes.
        :raises PackageAlreadyExists: the version was uploaded again after the delete.
        """
        record, changed = await self.write(self.records.restore, code, module, package_id)
        if changed:
            await events.dispatch(self, events.PackageEvent(events.RESTORED, record, operator))
        return record


def version_of(info: ArchiveInfo) -> str:
    """The version the package's ``app_desc.yaml`` names (blocking: YAML in pure Python).

    :raises MissingVersionInfo: no ``app_desc.yaml`` or no version in it.
    :raises ValidationError: the version is malformed (under the field ``app_desc.yaml``).
    """
    found = version_from_app_desc(info.app_desc) if info.app_desc is not None else None
    if found is None:
        raise MissingVersionInfo("no version given and none in app_desc.yaml")
    try:
        return check_version("version", found)
    except ValidationError as exc:
        exc.fields = {"app_desc.yaml": exc.fields["version"]}
        raise


def _new_package(upload: UploadRequest, version: str, info: ArchiveInfo, *, file_name: str, size: int,
                 sha256: str, origin: str, source_url: str) -> NewPackage:
    """The record-to-be of verified, inspected bytes, under a fresh blob key."""
    return NewPackage(
        code=upload.code,
        module=upload.module,
        version=version,
        package_name=derive_package_name(file_name, version, upload.module),
        package_size=size,
        sha256=sha256,
        blob_key=new_blob_key(upload.code, upload.module),
        format=info.format,
        file_name=file_name,
        origin=origin,
        source_url=source_url,
        operator=upload.operator,
        details=PackageDetails.from_archive(info),
    )


def _delete_quietly_blocking(storage: BlockingStorage, key: str) -> None:
    """:meth:`Registry._delete_quietly` in the calling thread."""
    try:
        storage.delete_blocking(key)
    except (RegistryError, OSError):
        logger.warning("could not delete unreferenced blob %s", key, exc_info=True)


def _early_decision(existing: Record | None, upload: UploadRequest, *, sha256: str | None,
                    size: int | None) -> Record | None:
    """Decide what the bytes known so far decide, before storing anything.

    Returns ``existing`` when ``sha256`` shows the upload is identical to it
    (nothing to store, unless it heals a blob ``fsck`` marked broken). Raises
    ``PackageAlreadyExists`` when the live version's bytes are known to differ
    (other digest or other size) and overwriting is not allowed. Otherwise the
    bytes must be received first: an identical re-upload is not a conflict.
    The committing transaction decides again; this only saves work.
    """
    if existing is None:
        return None
    if sha256 is not None and existing.sha256 == sha256:
        return None if existing.broken else existing
    differs = (sha256 is not None) or (size is not None and size != existing.package_size)
    if differs and not upload.allow_overwrite:
        raise PackageAlreadyExists(f"version {existing.version!r}", data={"sha256_signature": existing.sha256})
    return None
