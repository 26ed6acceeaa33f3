"""What a storage plugin provides: a place that keeps package blobs.

The core never builds paths or object keys itself beyond :func:`new_blob_key`;
everything else about where and how bytes live belongs to the plugin.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread

from registry.errors import InsufficientStorage, ObjectStoreException

#: errno values meaning "no room left": the disk, or the user's quota, is full.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class BlobMissing(Exception):
    """The key names no blob (raised by :meth:`Storage.open`)."""


def storage_failure(exc: OSError, what: str) -> InsufficientStorage | ObjectStoreException:
    """The client-visible error for a local disk operation that failed.

    A full disk or quota is ``InsufficientStorage`` (507: retry once space is
    freed); anything else is the storage failing (``ObjectStoreException``,
    503). ``what`` says what was being done and names no path.
    """
    if exc.errno in NO_SPACE_ERRNOS:
        return InsufficientStorage(f"{what}: {exc.strerror}")
    return ObjectStoreException(f"{what}: {exc.strerror or type(exc).__name__}")


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob, as :meth:`Storage.iter_blobs` lists it.

    :param key: the key the blob is stored under (as given to :meth:`Storage.put`).
    :param size: its length in bytes.
    :param modified: when it was last written, time-zone aware (UTC).
    """

    key: str
    size: int
    modified: datetime


def new_blob_key(code: str, module: str) -> str:
    """A fresh, never reused key for one upload's bytes.

    Every upload (overwrites included) gets a new key, so a record is switched
    to a complete blob in one transaction and the old blob removed afterwards:
    no reader ever sees a half-written object under a key a record names.
    ``code`` and ``module`` are validated slugs, safe as path segments.
    """
    return f"{code}/{module}/{uuid.uuid4().hex}"


#: What :func:`new_blob_key` makes; ``registry gc`` deletes nothing else, so
#: foreign objects in a shared bucket or folder are never taken for orphans.
BLOB_KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}/[a-z0-9][a-z0-9_-]{0,31}/[0-9a-f]{32}")


class BlockingStorage(Protocol):
    """:meth:`Storage.put` and :meth:`Storage.delete` as blocking calls, for a
    caller already in a worker thread; same contracts and errors."""

    def put_blocking(self, staged: Path, key: str) -> None:
        """:meth:`Storage.put`; on return ``staged`` is gone (moved or consumed),
        so the caller removes it only after a failure."""

    def delete_blocking(self, key: str) -> None: ...


class Storage(ABC):
    """A blob store. All methods may block only inside worker threads.

    Failures of the backend itself (endpoint down, access denied) must be
    raised as :class:`registry.errors.ObjectStoreException`; a full disk or
    quota as :class:`registry.errors.InsufficientStorage` (see
    :func:`storage_failure`).
    """

    name: str = ""

    @property
    @abstractmethod
    def staging_dir(self) -> Path:
        """A local folder where the core stages incoming uploads.

        Staged files are passed to :meth:`put`; a backend that can rename
        (the filesystem) returns a folder on the same file system as its blobs.
        """

    @abstractmethod
    async def startup(self) -> None:
        """Prepare the store (create folders, check the bucket); idempotent.

        Called once before the service takes requests.
        """

    @abstractmethod
    async def check(self) -> None:
        """Raise ``ObjectStoreException`` unless the store is reachable now."""

    async def check_config(self) -> None:
        """What ``registry check-config`` runs, before :meth:`startup`: raise
        ``ObjectStoreException`` unless the store would work, creating nothing.

        The default runs :meth:`check`; a backend whose :meth:`startup`
        creates what :meth:`check` needs (folders) overrides it to accept
        their absence when they could be created.
        """
        await self.check()

    @abstractmethod
    async def put(self, staged: Path, key: str) -> None:
        """Store the complete file ``staged`` under ``key``, atomically.

        On return the blob is durable and readable under ``key``; on failure
        nothing is visible under ``key``. ``staged`` may be moved or consumed.
        """

    @abstractmethod
    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``start`` to ``end`` (exclusive; None: to the end) of a blob.

        :raises BlobMissing: no blob under ``key`` (on first iteration).
        """

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """True when a complete blob is stored under ``key``."""

    def iter_blobs(self) -> AsyncIterator[BlobInfo]:
        """Every complete blob in the store, in no particular order (optional).

        Used by ``registry gc`` to find blobs no record points to. Only blobs
        under their final keys are listed: never staging files or uploads in
        progress. Blobs put or deleted while the listing runs may or may not
        appear. Implement it as an async generator.

        :raises NotImplementedError: the backend cannot list its blobs (the
            default); ``gc`` then skips orphan collection and says so.
        """
        raise NotImplementedError(f"storage {self.name or type(self).__name__!r} cannot list its blobs")

    async def shutdown(self) -> None:
        """Release clients and pools. The default does nothing."""
        return  # a hook with a default, not an abstract method

    def blocking(self) -> BlockingStorage | None:
        """This backend's :meth:`put` and :meth:`delete` as plain blocking
        calls (optional capability), or None (the default).

        A small upload, received whole in memory, is then written, stored and
        committed in one worker thread instead of a hand-off per step. A
        backend offers it only where those calls do exactly what its
        :meth:`put` and :meth:`delete` do.
        """
        return None

    def resumable(self) -> ResumableStore:
        """Where resumable uploads keep their bytes between requests (optional capability).

        The default keeps each as one local file in a subfolder of
        :attr:`staging_dir` (:class:`LocalFiles`), written in place by the
        core: it survives a restart of the process, and any process sharing
        that folder can continue it. A backend with a better place (S3
        multipart uploads) overrides it.
        """
        return LocalFiles(self.staging_dir / RESUMABLE_FOLDER)


#: A resumable upload's id (see :func:`registry.resumable.new_upload_id`).
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")

#: Subfolder of the staging folder holding resumable uploads' files; the
#: start-up sweep removes only files, never folders, so these survive a restart.
RESUMABLE_FOLDER = "resumable"


class ResumableStore(ABC):
    """The partial bytes of resumable uploads, kept between requests.

    Each upload has a small JSON-able *state* that the caller keeps in the
    record store and passes back on every call (an S3 multipart upload id and
    its parts, the size of a local file): the store itself remembers nothing
    in memory, so any process may continue an upload. Every call may block
    only in worker threads; backend failures are ``ObjectStoreException``.

    Chunks reach a store one of two ways. By default the core receives each
    into a local chunk file and hands it to :meth:`append`. A store that keeps
    an upload as one local file may instead offer that file
    (:meth:`in_place`): the core then writes each chunk straight into it at
    its offset and calls :meth:`written`, so every byte is written once.
    """

    @abstractmethod
    async def begin(self, upload_id: str) -> dict[str, Any]:
        """Prepare an empty upload; its initial state."""

    @abstractmethod
    async def append(self, upload_id: str, state: dict[str, Any], offset: int, chunk: Path) -> dict[str, Any]:
        """Add the complete local file ``chunk`` at ``offset`` (the upload's
        current size) and return the new state. ``chunk`` may be moved or
        consumed. Its bytes must survive a crash of the process once this
        returns; if it fails, the old state still describes the upload."""

    def in_place(self, upload_id: str) -> Path | None:
        """The local file holding the upload's bytes, for the core to write
        into directly (optional capability), or None (the default: chunks go
        through :meth:`append`).

        The contract, for a store that offers it: the file is on the staging
        folder's file system and exists once :meth:`begin` returned (the
        core makes it again, with its folder, where a crash of the machine
        lost them; :meth:`recover` has then answered how much is kept). Its
        first *offset* bytes (the offset the record store holds) are the
        upload; bytes past it are left by a chunk that was not accepted (a
        failed checksum, a crash before the offset was recorded), and the
        core cuts them off or writes over them. The core writes a chunk at
        the offset without fsync (the page cache keeps it across a crash of
        the process), then calls :meth:`written`, then records the new state.
        It may also read the file, and hard-link it into the staging folder
        to store the complete upload; the file itself is removed only by
        :meth:`discard`.
        """
        return None

    async def written(self, upload_id: str, state: dict[str, Any], offset: int, size: int) -> dict[str, Any]:
        """After the core wrote ``size`` bytes at ``offset`` into the file of
        :meth:`in_place`: the new state. Called only on a store offering it."""
        raise NotImplementedError(f"{type(self).__name__} does not offer its uploads' files")

    async def recover(self, upload_id: str, state: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """After a crash of the machine: ``(state, offset)`` cut back to the bytes
        really kept, offset None when nothing was lost. The default trusts the state."""
        return state, None

    @abstractmethod
    def assemble(self, upload_id: str, state: dict[str, Any]) -> AsyncIterator[bytes]:
        """Every byte of the upload, in order (an async generator)."""

    @abstractmethod
    async def discard(self, upload_id: str, state: dict[str, Any]) -> None:
        """Remove everything kept for the upload; missing parts are not an error."""

    async def kept(self) -> list[KeptUpload]:
        """Every upload this store holds bytes for (optional capability).

        ``registry gc`` discards those no upload record names once they are
        older than its grace period (``discard`` with an empty state): bytes
        a process kept and then died before recording the upload, or after
        deleting its record but before its bytes.

        :raises NotImplementedError: the store cannot list them (the default).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list the uploads it keeps")


@dataclass(frozen=True)
class KeptUpload:
    """An upload's bytes as a :class:`ResumableStore` lists them."""

    upload_id: str
    #: when its bytes were last written
    modified: datetime
    size: int


class LocalFiles(ResumableStore):
    """Each upload as one local file, ``{folder}/{upload_id}/upload``, written
    in place by the core (:meth:`in_place`); its state is ``{"size": n}``.

    Nothing is fsynced while the upload grows: the page cache keeps the bytes
    across a crash of the process, and the package is fsynced once, when it
    is stored. After a crash of the machine, :meth:`recover` finds the file
    shorter than its recorded size and the offset goes back to the file's
    end (a tus client asks, ``HEAD``, and sends again from there). An upload
    begun by an older version (kept as segment files) starts again from 0.
    """

    READ_SIZE = 1024 * 1024
    FILE_NAME = "upload"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _dir(self, upload_id: str) -> Path:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.folder / upload_id

    def in_place(self, upload_id: str) -> Path:
        return self._dir(upload_id) / self.FILE_NAME

    async def begin(self, upload_id: str) -> dict[str, Any]:
        path = self.in_place(upload_id)

        def create() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

        try:
            await anyio.to_thread.run_sync(create)
        except OSError as exc:
            raise ObjectStoreException(f"cannot create upload folder: {exc.strerror}") from exc
        return {"size": 0}

    async def written(self, upload_id: str, state: dict[str, Any], offset: int, size: int) -> dict[str, Any]:
        return {"size": offset + size}

    async def append(self, upload_id: str, state: dict[str, Any], offset: int, chunk: Path) -> dict[str, Any]:
        path = self.in_place(upload_id)

        def copy() -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            with chunk.open("rb") as source, path.open("r+b" if path.exists() else "wb") as target:
                target.truncate(offset)
                target.seek(offset)
                shutil.copyfileobj(source, target, self.READ_SIZE)
                return target.tell() - offset

        try:
            size = await anyio.to_thread.run_sync(copy)
        except OSError as exc:
            raise ObjectStoreException(f"cannot keep upload chunk: {exc.strerror}") from exc
        return {"size": offset + size}

    async def recover(self, upload_id: str, state: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        path = self.in_place(upload_id)
        if "size" not in state:  # kept by an older version as segment files: start again
            return {"size": 0}, 0

        def size_on_disk() -> int:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return 0

        kept = await anyio.to_thread.run_sync(size_on_disk)
        if kept >= state["size"]:
            return state, None
        return {"size": kept}, kept

    async def assemble(self, upload_id: str, state: dict[str, Any]) -> AsyncIterator[bytes]:
        path = self.in_place(upload_id)
        try:
            f = await anyio.to_thread.run_sync(path.open, "rb")
        except OSError as exc:
            raise ObjectStoreException(f"cannot read upload: {exc.strerror}") from exc
        try:
            remaining = int(state.get("size", 0))
            while remaining > 0:
                data = await anyio.to_thread.run_sync(f.read, min(self.READ_SIZE, remaining))
                if not data:
                    raise ObjectStoreException("an upload's file is shorter than recorded")
                remaining -= len(data)
                yield data
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(f.close)

    async def kept(self) -> list[KeptUpload]:
        def scan() -> list[KeptUpload]:
            found: list[KeptUpload] = []
            try:
                with os.scandir(self.folder) as entries:
                    folders = [e for e in entries if e.is_dir(follow_symlinks=False) and UPLOAD_ID.fullmatch(e.name)]
            except FileNotFoundError:
                return found
            for entry in folders:
                try:  # the upload's file, else (made and not yet filled, or emptied) its folder
                    info = (Path(entry.path) / self.FILE_NAME).stat()
                    size = info.st_size
                except FileNotFoundError:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # discarded meanwhile
                    size = 0  # a folder's own size is no upload's bytes
                found.append(KeptUpload(entry.name, datetime.fromtimestamp(info.st_mtime, UTC), size))
            return found

        return await anyio.to_thread.run_sync(scan)

    async def discard(self, upload_id: str, state: dict[str, Any]) -> None:
        folder = self._dir(upload_id)

        def remove() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            # The shared folder goes too once empty, so an idle staging folder
            # is empty; a concurrent begin() makes it again (mkdir parents=True).
            with contextlib.suppress(OSError):
                self.folder.rmdir()

        await anyio.to_thread.run_sync(remove)
