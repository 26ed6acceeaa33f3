"""Receive a package into a staging file: size limit and sha256 in one pass.

The bytes are hashed and written as they arrive; nothing reads the file again
to checksum it. Writes and hashing run in a writer thread of the file's own,
batched to about 2 MiB, so the event loop only moves buffers around. One batch
is written while the next is being received: receiving and writing overlap,
and an upload takes the longer of the two rather than their sum, with at most
two batches (4 MiB) held per upload.

A *follower* (the archive inspection) may read the file while it is being
written: it runs in a thread of its own, reading from the page cache what the
writer has written and waiting for more, so the upload is checked without a
second pass, and a follower that fails stops the upload at the next batch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread

from registry.errors import InsufficientStorage, PackageTooLarge
from registry.storage import storage_failure

#: Less free space than this in the staging folder's file system counts as
#: full for ``/readyz``: not even a small upload could be received.
MIN_FREE_BYTES = 1024 * 1024
#: Batch size handed to the writer thread. 2 MiB measured 13% faster uploads
#: than 1 MiB (fewer thread hand-offs; benchmarks/run.py, 256 MiB) for 7 MB
#: more peak RSS; larger batches gain little more and cost memory per upload.
FLUSH_SIZE = 2 * 1024 * 1024


class UploadAbandoned(Exception):
    """Raised to a follower when the upload it reads ends without completing."""


class _Progress:
    """What the writer has made visible to the follower, under one condition."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.written = 0
        self.state = "receiving"  # then "complete" or "abandoned"

    def advance(self, count: int) -> None:
        with self.condition:
            self.written += count
            self.condition.notify_all()

    def end(self, state: str) -> None:
        with self.condition:
            if self.state == "receiving":
                self.state = state
            self.condition.notify_all()


class _Follower:
    """The reading side handed to a follower (see ``FollowedUpload`` in archive.py)."""

    def __init__(self, path: Path, progress: _Progress) -> None:
        self.path = path
        self.progress = progress
        self.consumed = 0
        self._file = path.open("rb", buffering=0)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; waits for the writer; ``b""`` once complete."""
        size = size if size is not None and size > 0 else FLUSH_SIZE
        progress = self.progress
        while True:
            with progress.condition:
                while progress.written <= self.consumed and progress.state == "receiving":
                    progress.condition.wait()
                if progress.state == "abandoned":
                    raise UploadAbandoned()
                available = progress.written - self.consumed
            if available <= 0:
                return b""
            data = self._file.read(min(size, available))
            if not data:  # written bytes are visible to every descriptor at once
                raise OSError(f"{self.path}: {available} written bytes are not readable")
            self.consumed += len(data)
            return data

    def complete(self) -> Path:
        """Wait for the end of the upload; the path of the finished file."""
        with self.progress.condition:
            while self.progress.state == "receiving":
                self.progress.condition.wait()
            if self.progress.state == "abandoned":
                raise UploadAbandoned()
        return self.path

    def close(self) -> None:
        self._file.close()


class StagingFile:
    """An upload in flight in ``folder``, always removed on exit.

    A storage that consumes the file (the filesystem backend renames it into
    place) leaves nothing for the exit to remove; any other storage copies it.

    Use as ``async with StagingFile(folder, max_size) as staged:``, then
    ``await staged.write(chunk)`` for each chunk, ``await staged.finish()``
    and, before committing the file, ``await staged.synced()``.
    """

    def __init__(self, folder: Path, max_size: int, follower: Callable[[_Follower], Any] | None = None) -> None:
        """:param follower: called in a thread of its own with a reader of the
            upload as it is written; its result is :meth:`followed`'s."""
        self.folder = folder
        self.max_size = max_size
        self._follow = follower
        self._following: Future[Any] | None = None
        self._progress = _Progress()
        self.size = 0
        self.path: Path | None = None
        self._hash = hashlib.sha256()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._fd: int | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    async def __aenter__(self) -> StagingFile:
        def create() -> tuple[int, Path, _Follower | None]:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.folder, prefix="upload-", suffix=".part")
            path = Path(name)
            if self._follow is None:
                return fd, path, None
            try:
                return fd, path, _Follower(path, self._progress)  # opens the file: disk I/O
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise

        try:
            self._fd, self.path, reader = await anyio.to_thread.run_sync(create)
        except OSError as exc:  # a full disk (no inode left), a read-only or missing folder
            raise storage_failure(exc, "cannot create a staging file") from exc
        self._writer = ThreadPoolExecutor(max_workers=2 if self._follow else 1, thread_name_prefix="staging")
        if self._follow is not None:
            assert reader is not None
            self._following = self._writer.submit(self._run_follower, self._follow, reader)
        return self

    @staticmethod
    def _run_follower(follow: Callable[[_Follower], Any], reader: _Follower) -> Any:
        try:
            return follow(reader)
        finally:
            reader.close()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: in a cancelled scope run_sync would raise before starting,
        # leaving the file (and the writer thread) behind.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_and_remove)

    def _close_and_remove(self) -> None:
        self._progress.end("abandoned")  # wakes a follower still waiting for bytes
        if self._writer is not None:
            # Let a batch still being written end before its file is closed.
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    @property
    def sha256(self) -> str:
        """Hex digest of everything written (valid after :meth:`finish`)."""
        return self._hash.hexdigest()

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raise ``PackageTooLarge`` once past the limit."""
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.max_size:
            raise PackageTooLarge(f"more than {self.max_size} bytes")
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= FLUSH_SIZE:
            self._raise_if_follower_failed()
            await self._flush()

    async def write_all(self, chunks: AsyncIterator[bytes]) -> None:
        """Write every chunk of ``chunks``."""
        async for chunk in chunks:
            await self.write(chunk)

    async def _flush(self) -> None:
        """Hand the buffered chunks to the writer thread once the previous batch is written."""
        if not self._buffer:
            return
        chunks = self._buffer
        self._buffer = []
        self._buffered = 0
        await self._wait_for_writer()
        assert self._writer is not None
        self._pending = self._writer.submit(self._write_blocking, chunks)

    async def _wait_for_writer(self) -> None:
        """Wait for the batch in flight, if any; raise its error as
        ``InsufficientStorage`` (disk or quota full) or ``ObjectStoreException``."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            if not pending.done():
                await anyio.to_thread.run_sync(pending.result)
            pending.result()
        except OSError as exc:  # ENOSPC from write() or fsync() is the client's 507, not a bug
            raise storage_failure(exc, "cannot write the staging file") from exc

    def _write_blocking(self, chunks: list[bytes]) -> None:
        """In the writer thread: hash and append one batch."""
        assert self._fd is not None
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._hash.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._progress.advance(len(data))

    async def finish(self) -> None:
        """Write out every byte and start the fsync; :attr:`sha256` is then final.

        The fsync runs in the writer thread while the caller goes on (archive
        inspection reads the file from the page cache meanwhile); call
        :meth:`synced` before the file is committed anywhere.
        """
        await self._flush()
        await self._wait_for_writer()
        self._progress.end("complete")
        assert self._writer is not None and self._fd is not None
        self._pending = self._writer.submit(os.fsync, self._fd)

    async def synced(self) -> None:
        """Wait until the file is durable on disk.

        :raises InsufficientStorage: the disk filled up (the fsync's ``ENOSPC``).
        :raises ObjectStoreException: any other failure of the fsync.
        """
        await self._wait_for_writer()

    async def followed(self) -> Any:
        """The follower's result once it has read the whole upload (or its error).

        Call after :meth:`finish`.
        """
        assert self._following is not None, "no follower was given"
        following = self._following
        if not following.done():
            await anyio.to_thread.run_sync(following.result)
        return following.result()

    def _raise_if_follower_failed(self) -> None:
        """Stop receiving once the follower has refused the upload."""
        following = self._following
        if following is not None and following.done() and following.exception() is not None:
            raise following.exception()  # type: ignore[misc]


def sweep_staging(folder: Path) -> int:
    """Delete every file in a staging folder (at start-up); return how many.

    Links are removed, never followed. Folders are left alone: the core never
    makes any, and a staging folder configured somewhere shared must not
    cost anyone a directory tree.
    """
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.is_symlink() or entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def check_free_space(folder: Path, minimum: int = MIN_FREE_BYTES) -> None:
    """Raise ``InsufficientStorage`` when the file system holding ``folder``
    has fewer than ``minimum`` bytes (or no inodes) left for this process.

    Blocking (a ``statvfs``): call it in a worker thread. A folder that does
    not exist yet is checked through its nearest existing parent.
    """
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    stats = os.statvfs(folder)
    if stats.f_bavail * stats.f_frsize < minimum or (stats.f_files and stats.f_favail == 0):
        raise InsufficientStorage(f"{stats.f_bavail * stats.f_frsize} bytes free for staging")
