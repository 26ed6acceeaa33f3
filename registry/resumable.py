"""Resumable uploads, below HTTP: receive a chunk, complete, terminate, expire.

Where the storage keeps an upload as one local file (the filesystem's
:class:`registry.storage.LocalFiles`), a chunk is written straight into it at
the upload's offset, hashed and inspected as it arrives by the upload's
staging file (:mod:`registry.assembly`): each byte is written once. A chunk
with an ``Upload-Checksum`` is first received into a chunk file of its own
and written on only once it matches, so one that fails leaves the upload's
file as it was. Elsewhere (S3) a chunk is received into a local chunk file
(size-capped and hashed), handed to the storage's
:class:`registry.storage.ResumableStore` and copied into the staging file.
Either way the record store's offset moves only after the bytes are kept,
and it is the truth: bytes past it are cut off or overwritten. A crash in
between leaves the old offset, which the client is told on its next ``HEAD``.

The PATCH that reaches ``Upload-Length`` runs :meth:`Registry.ingest` on the
staging file, exactly as ``P/`` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from registry.api.serialize import record_json
from registry.assembly import READ_SIZE, Assemblies
from registry.chunkfile import ChunkFile
from registry.errors import ChunkChecksumMismatch, JobNotFound, RegistryError
from registry.jobs import JobRunner, stored_error
from registry.records import (
    COMPLETING,
    FAILED,
    RECEIVING,
    SUCCEEDED,
    CommitResult,
    NewUpload,
    Outcome,
    Upload,
    utc_now,
)
from registry.service import Registry, UploadRequest
from registry.staging import StagingFile
from registry.store import RecordStore
from registry.transfers import WRITERS

logger = logging.getLogger("registry.resumable")

#: Seconds a PATCH holds an upload's write lease without renewing it.
LEASE = 30.0
#: Renew the lease after this many seconds of receiving or completing.
RENEW_AFTER = 10.0
#: Uploads whose recorded offset a process remembers (see ``Resumable.recover``).
MAX_RECORDED = 4096
#: Seconds a complete upload without an outcome is left to its client's empty
#: PATCH before the server finishes it itself (see ``Resumable.finish_later``).
FINISH_AFTER = 5.0

T = TypeVar("T")


def new_upload_id() -> str:
    """32 hex digits."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ChunkResult:
    """What a PATCH body did: the upload afterwards, whether the client went
    away, and whether the write lease was released (it is kept when the
    upload is now complete, for the pipeline)."""

    upload: Upload
    disconnected: bool
    released: bool = False


@dataclass
class Lease:
    """An upload whose write lease this process took (see :meth:`Resumable.leased`)."""

    #: the upload as the transaction that took the lease read it
    upload: Upload
    #: whether leaving the ``leased`` block releases the lease: cleared where
    #: something else ends it (the pipeline's outcome, a body that released it)
    held: bool = True


class Resumable:
    """Resumable uploads of one registry, sharing the job runner's store and metrics."""

    def __init__(self, registry: Registry, jobs: JobRunner) -> None:
        self.registry = registry
        self.jobs = jobs
        self.store = jobs.store
        #: uploads a request of this process is writing to (the lease is per process)
        self._writing: set[str] = set()
        #: (upload id, when to finish it) for :meth:`run`, from :meth:`finish_later`; None unless it runs
        self._unfinished: MemoryObjectSendStream[tuple[str, float]] | None = None
        self.assemblies = Assemblies(registry, busy=self._writing)
        #: the offset this process last recorded for an upload: its bytes were kept
        #: by this very process, so no crash of the machine can have lost them since
        self._recorded: dict[str, int] = {}

    def claim(self, upload_id: str) -> bool:
        """Mark the upload as being written by a request of this process; False if one already is."""
        if upload_id in self._writing:
            return False
        self._writing.add(upload_id)
        return True

    def release(self, upload_id: str) -> None:
        """Undo :meth:`claim`."""
        self._writing.discard(upload_id)

    def finish_later(self, upload: Upload) -> None:
        """Have :meth:`run` finish ``upload``, which holds all its bytes but no
        outcome (the completing PATCH died with its process or failed), in
        :data:`FINISH_AFTER` seconds unless its client's empty PATCH does it
        first. A tus client told by ``HEAD`` that the offset is the length
        takes the upload for done and sends nothing more, so without this
        its package would never be stored. Best effort: a full queue drops it
        (the next ``HEAD`` asks again), and so does a process not serving."""
        if self._unfinished is None:
            return
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):  # full, or shutting down
            self._unfinished.send_nowait((upload.id, anyio.current_time() + FINISH_AFTER))

    async def run(self) -> None:
        """Finish the uploads :meth:`finish_later` names, one after another,
        until cancelled (the app's lifespan runs it)."""
        send, receive = anyio.create_memory_object_stream[tuple[str, float]](MAX_RECORDED)
        self._unfinished = send
        try:
            async with send, receive:
                async for upload_id, due in receive:
                    await anyio.sleep(max(0.0, due - anyio.current_time()))
                    try:
                        await self._finish_unfinished(upload_id)
                    except Exception:  # it stays as it was: a PATCH, or the next HEAD, tries again
                        logger.warning("could not finish upload %s", upload_id, exc_info=True)
        finally:
            self._unfinished = None

    async def _finish_unfinished(self, upload_id: str) -> None:
        """Run the pipeline of a complete upload without an outcome, under its
        lease, as its completing PATCH would; nothing if a request or another
        process holds it, or it has ended meanwhile."""
        if not self.claim(upload_id):
            return
        try:
            async with self.leased(upload_id) as lease:
                if lease is None:
                    return
                upload = lease.upload
                if upload.state not in (RECEIVING, COMPLETING) or upload.expires < utc_now():
                    return
                upload = await self.recover(upload, save=True)
                if upload.offset < upload.length:
                    return
                try:
                    await self.complete_leased(lease, upload)
                except RegistryError as exc:
                    if exc.status >= 500:
                        raise  # a 4xx is the upload's outcome, kept by complete()
                logger.info("finished upload %s, complete but left without an outcome", upload_id)
        finally:
            self.release(upload_id)

    @contextlib.asynccontextmanager
    async def leased(self, upload_id: str) -> AsyncIterator[Lease | None]:
        """The upload under this process's write lease, taken by the
        transaction that reads it, and released on leaving the block unless
        :attr:`Lease.held` was cleared; None (nothing taken) when another
        request or process holds it, or there is no such upload.

        The caller has :meth:`claim`-ed the upload for this process first.
        """
        locked = await self.registry.write(self.store.lock_upload, upload_id, self.holder, LEASE)
        if locked is None:
            yield None
            return
        lease = Lease(locked)
        try:
            yield lease
        finally:
            if lease.held:
                with anyio.CancelScope(shield=True):
                    await self.registry.write(self.store.unlock_upload, upload_id, self.holder)

    async def complete_leased(self, lease: Lease, upload: Upload) -> CommitResult:
        """:meth:`complete` ``upload`` under ``lease``: its outcome, stored or
        a client error (4xx), ends the upload and its lease with it; a server
        failure (5xx) leaves the lease to the ``leased`` block to release."""
        lease.held = False
        try:
            return await self.complete(upload)
        except RegistryError as exc:
            lease.held = exc.status >= 500
            raise

    @property
    def holder(self) -> str:
        """This process's name in write leases (the job runner's)."""
        return self.jobs.holder

    @property
    def expire_after(self) -> float:
        return float(self.registry.settings["uploads.expire_after"])

    def expiry(self) -> datetime:
        """When an upload touched now expires."""
        return utc_now() + timedelta(seconds=self.expire_after)

    async def create(self, upload: UploadRequest, length: int, file_name: str) -> Upload:
        """A new upload of ``length`` bytes, its storage prepared. When it cannot
        be recorded (the database is away), what the storage prepared goes again."""
        upload_id = new_upload_id()
        state = await self.registry.storage.resumable().begin(upload_id)
        metadata = {"filename": file_name, "version": upload.version, "allow_overwrite": upload.allow_overwrite,
                    "sha256": upload.sha256}
        new = NewUpload(upload_id, upload.code, upload.module, length, metadata, upload.operator, state,
                        self.expiry())
        try:
            return await self.registry.write(self.store.create_upload, new)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._discard_quietly(upload_id, state)
            raise

    async def receive(self, upload: Upload, body: AsyncIterator[bytes], checksum: tuple[str, bytes] | None,
                      disconnect: type[BaseException], declared: int | None = None) -> ChunkResult:
        """Append ``body`` at the upload's offset (the caller holds the lease).

        :param checksum: (algorithm, digest) the body must have, or None; on a mismatch
            nothing is kept (``ChunkChecksumMismatch``, 460).
        :param disconnect: the exception ``body`` raises when the client goes
            away; what arrived until then is kept unless a checksum was given.
        :param declared: the body's length, when the client said (``Content-Length``).
        :raises PackageTooLarge: the body passes ``Upload-Length``; nothing is kept.
        """
        path = self.registry.storage.resumable().in_place(upload.id)
        if path is not None:
            return await self._receive_in_place(upload, path, body, checksum, disconnect, declared)
        remaining = upload.length - upload.offset
        algorithm = checksum[0] if checksum is not None else None
        async with ChunkFile(self.registry.staging_folder, remaining, algorithm) as chunk:
            # Without a checksum every byte that arrives is kept: stage it as it comes.
            tee = await self.assemblies.writer(upload.id, upload.offset) if checksum is None else None
            try:
                disconnected = await self._keeping_lease(
                    upload.id, lambda: chunk.receive(body, disconnect, tee.write if tee else None))
            except Exception:
                if tee is not None:
                    await tee.abandon()
                raise
            if checksum is not None and (disconnected or chunk.digest != checksum[1]):
                if disconnected:
                    return ChunkResult(upload, True)
                raise ChunkChecksumMismatch("the chunk does not match Upload-Checksum; it was discarded")
            if chunk.size == 0:
                return ChunkResult(upload, disconnected)
            assert chunk.path is not None
            if tee is None:
                await self.assemblies.feed(upload.id, upload.offset, chunk.path)
            try:
                state = await self.registry.storage.resumable().append(upload.id, upload.storage_state,
                                                                        upload.offset, chunk.path)
            except BaseException:
                await self.assemblies.drop(upload.id)
                raise
            return await self._record(upload, upload.offset + chunk.size, state, disconnected)

    async def _receive_in_place(self, upload: Upload, path: Path, body: AsyncIterator[bytes],
                                checksum: tuple[str, bytes] | None, disconnect: type[BaseException],
                                declared: int | None) -> ChunkResult:
        """:meth:`receive` into the upload's own file ``path`` (see
        :meth:`registry.storage.ResumableStore.in_place`), through the
        upload's staging file when this process follows the upload (kept
        from its previous PATCH, or new at offset 0), else only written
        (the completing PATCH then reads the file once). A failure after
        bytes went in drops the staging file: the next PATCH writes on from
        the recorded offset, cutting off what this one wrote."""
        staged = await self.assemblies.kept(upload.id, upload.offset)
        if staged is None and upload.offset == 0:  # this process follows the upload from its start
            staged = await self.assemblies.in_place(upload.id, path, 0, upload.length)
        if staged is None:  # not followed here: only written, and read once when complete
            async with StagingFile(self.registry.staging_folder, upload.length, existing=path) as writer:
                await writer.resume_from(upload.offset, hashing=False)
                return await self._write_in_place(upload, writer, body, checksum, disconnect, declared)
        return await self._write_in_place(upload, staged, body, checksum, disconnect, declared)

    async def _write_in_place(self, upload: Upload, staged: StagingFile, body: AsyncIterator[bytes],
                              checksum: tuple[str, bytes] | None, disconnect: type[BaseException],
                              declared: int | None) -> ChunkResult:
        """Write ``body`` through ``staged`` (kept or not) and record it."""
        async def write() -> bool:
            if checksum is None:
                staged.expect(declared or 0)  # the PATCH answers once they are written
                disconnected = await _write_body(body, staged, disconnect)
            else:
                disconnected = await self._write_verified(upload, body, staged, checksum, disconnect)
            await staged.flush()
            return disconnected

        try:
            disconnected = await self._keeping_lease(upload.id, write)
        except BaseException:
            if staged.size != upload.offset:  # some bytes went in (a failed checksum writes none)
                await self.assemblies.drop(upload.id)  # a kept one no longer ends at the offset
            raise
        size = staged.size - upload.offset
        if size == 0:
            return ChunkResult(upload, disconnected)
        state = await self.registry.storage.resumable().written(upload.id, upload.storage_state, upload.offset, size)
        return await self._record(upload, upload.offset + size, state, disconnected)

    async def _write_verified(self, upload: Upload, body: AsyncIterator[bytes], staged: StagingFile,
                              checksum: tuple[str, bytes], disconnect: type[BaseException]) -> bool:
        """Receive ``body`` into a chunk file and write it into ``staged`` only
        if it matches ``checksum`` (else ``ChunkChecksumMismatch``); a body cut
        short by the client counts as not matching, but answers nobody."""
        async with ChunkFile(self.registry.staging_folder, upload.length - upload.offset, checksum[0]) as chunk:
            if await chunk.receive(body, disconnect):
                return True
            if chunk.digest != checksum[1]:
                raise ChunkChecksumMismatch("the chunk does not match Upload-Checksum; it was discarded")
            assert chunk.path is not None
            with chunk.path.open("rb", buffering=0) as f:
                while data := await WRITERS.run(f.read, READ_SIZE):
                    await staged.write(data)
        return False

    async def _record(self, upload: Upload, offset: int, state: dict[str, Any], disconnected: bool) -> ChunkResult:
        """Record the upload's new offset and storage state (releasing the
        lease unless the upload is now complete)."""
        release = offset < upload.length
        saved = await self.registry.write(
            lambda: self.store.save_progress(upload.id, self.holder, offset, state, self.expiry(), release=release)
        )
        self.jobs.metrics.upload_bytes.inc(offset - upload.offset)
        if saved is None:  # removed meanwhile (expiry takes no lease): so is its file
            self._recorded.pop(upload.id, None)
            await self.assemblies.drop(upload.id)
            raise JobNotFound(upload.id)
        self._remember(saved)
        return ChunkResult(saved, disconnected, release)

    def _remember(self, upload: Upload) -> None:
        if len(self._recorded) >= MAX_RECORDED:
            self._recorded.clear()  # forgetting only costs the next PATCH a look at the storage
        self._recorded[upload.id] = upload.offset

    async def recover(self, upload: Upload, *, save: bool) -> Upload:
        """``upload`` with the offset of the bytes really kept (see
        :meth:`ResumableStore.recover`); with ``save`` (the caller holds the
        lease) a loss is also recorded, and an upload that was being
        completed receives again. An offset this process recorded itself
        needs no look at the storage: the machine has not crashed since, or
        this process would not be running.

        A ``completing`` upload is checked too: that state is recorded
        (without waiting for the record store's flush, like an offset)
        before the completing PATCH fsyncs the bytes, so a crash of the
        machine in between leaves it with fewer bytes than its length, and
        only receiving them again lets it end. A crash that takes the
        state back leaves an upload ``receiving``, checked the same way."""
        if upload.state not in (RECEIVING, COMPLETING) or self._recorded.get(upload.id) == upload.offset:
            return upload
        state, offset = await self.registry.storage.resumable().recover(upload.id, upload.storage_state)
        if offset is None:
            return upload
        logger.warning("upload %s lost its bytes after %d (a crash of the machine?); resuming there",
                       upload.id, offset)
        if save:
            await self.registry.write(
                lambda: self.store.save_progress(upload.id, self.holder, offset, state, self.expiry())
            )
        return dataclasses.replace(upload, offset=offset, storage_state=state)

    async def _keeping_lease(self, upload_id: str, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()`` while the upload's write lease is renewed; its
        exception is raised as it is, not wrapped in an exception group."""
        failure: Exception | None = None
        result: T | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._keep_lease, upload_id)
            try:
                result = await work()
            except Exception as exc:  # noqa: BLE001 -- raised below, not wrapped in the task group's exception group
                failure = exc
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return cast(T, result)

    async def _keep_lease(self, upload_id: str) -> None:
        """Renew the write lease while a long body streams in or the pipeline runs."""
        while True:
            await anyio.sleep(RENEW_AFTER)
            await self.registry.write(self.store.renew_upload_lock, upload_id, self.holder, LEASE)

    async def complete(self, upload: Upload) -> CommitResult:
        """Run the ``P/`` pipeline on the assembled bytes; store and return the outcome.

        The upload must hold all its bytes (``upload.offset == upload.length``)
        and the caller the lease, which is renewed while the pipeline runs (a
        large package's pass can outlast it, and a retried PATCH must not run
        a second pipeline meanwhile). A client error (4xx) ends the upload as
        failed and removes its bytes; a server failure (5xx) leaves it
        complete-but-unprocessed, so the same PATCH may be sent again.
        """
        return await self._keeping_lease(upload.id, lambda: self._complete(upload))

    async def _complete(self, upload: Upload) -> CommitResult:
        registry = self.registry
        resumable = registry.storage.resumable()
        path = resumable.in_place(upload.id)
        # An upload's own file is only read from here on, but a storage that
        # assembles it (S3 joins the parts) takes no append after: the offset
        # that reached the length must not be taken back by a crash then, or
        # the upload would go on from an earlier one into parts that are gone.
        await self.registry.write(
            lambda: self.store.save_progress(upload.id, self.holder, upload.offset, upload.storage_state,
                                             self.expiry(), state=COMPLETING, durable=path is None)
        )
        meta = upload.metadata
        request = UploadRequest(code=upload.code, module=upload.module, version=meta["version"],
                                allow_overwrite=meta["allow_overwrite"], sha256=meta["sha256"],
                                operator=upload.operator)
        if path is not None:  # the upload's own file, taken over again unless this process holds it complete
            staged = await self.assemblies.in_place(upload.id, path, upload.length, upload.length)
            await staged.link_into(registry.staging_folder)  # storing it leaves the upload's file for a retry
        assembled = self.assemblies.take(upload.id, upload.length)
        try:
            if assembled is not None:  # staged as it arrived: no second pass
                context, staged = assembled  # entered by the assembly; closed here
                try:
                    result = await registry.ingest(request, staged, file_name=meta["filename"], origin="upload")
                finally:
                    with anyio.CancelScope(shield=True):
                        await context.__aexit__(None, None, None)
            else:
                async with registry.staging() as staged:
                    await staged.write_all(resumable.assemble(upload.id, upload.storage_state))
                    result = await registry.ingest(request, staged, file_name=meta["filename"], origin="upload")
        except RegistryError as exc:
            registry.metrics.uploads.labels("upload", exc.code).inc()
            if exc.status >= 500:
                raise
            await self._finish(upload, FAILED, stored_error(exc))
            raise
        registry.metrics.uploads.labels("upload", result.outcome.value).inc()
        status = 201 if result.outcome in (Outcome.CREATED, Outcome.REVIVED) else 200
        await self._finish(upload, SUCCEEDED, {**record_json(result.record, registry.time_zone), "status": status})
        return result

    async def _finish(self, upload: Upload, state: str, result: dict[str, Any]) -> None:
        self._recorded.pop(upload.id, None)
        with anyio.CancelScope(shield=True):
            await self.registry.write(
                lambda: self.store.finish_upload(upload.id, self.holder, state, result, self.expiry())
            )
            await self._discard_quietly(upload.id, upload.storage_state)

    async def terminate(self, upload: Upload) -> None:
        """Remove the upload's bytes and its row (the caller holds the lease)."""
        self._recorded.pop(upload.id, None)
        await self.assemblies.drop(upload.id)
        await self.registry.storage.resumable().discard(upload.id, upload.storage_state)
        await self.registry.write(self.store.delete_upload, upload.id)

    async def _discard_quietly(self, upload_id: str, storage_state: dict[str, Any]) -> None:
        try:
            await self.registry.storage.resumable().discard(upload_id, storage_state)
        except (RegistryError, OSError):
            logger.warning("could not remove the bytes of upload %s; gc retries", upload_id, exc_info=True)


async def _write_body(body: AsyncIterator[bytes], staged: StagingFile, disconnect: type[BaseException]) -> bool:
    """Write every part of ``body`` into ``staged``; True when it ended with
    ``disconnect`` (the client went away), with what came until then written."""
    try:
        async for data in body:
            await staged.write(data)
    except disconnect:
        return True
    return False


async def expire_uploads(registry: Registry, store: RecordStore, dry_run: bool = False) -> list[tuple[str, int]]:
    """Remove every upload past its expiry time with its bytes; ``(id, bytes)`` of each."""
    removed: list[tuple[str, int]] = []
    expired: list[Upload] = await registry.read(store.expired_uploads, utc_now())
    for upload in expired:
        if not dry_run:
            try:
                await registry.storage.resumable().discard(upload.id, upload.storage_state)
            except (RegistryError, OSError):
                logger.warning("could not remove the bytes of expired upload %s", upload.id, exc_info=True)
                continue
            await registry.write(store.delete_upload, upload.id)
        removed.append((upload.id, upload.offset if upload.state not in (SUCCEEDED, FAILED) else 0))
    return removed
