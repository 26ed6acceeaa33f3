"""Receive a package into a staging file: size limit and sha256 in one pass.

The bytes are hashed and written as they arrive; nothing reads the file again
to checksum it. Writes, hashing and the fsync run in the process's shared
writer pool (:data:`registry.transfers.WRITERS`), in batches, so the event
loop only moves buffers around and an upload holds no thread of its own. One
batch is written while the next is being received: receiving and writing
overlap, and an upload takes the longer of the two rather than their sum.
An upload holds at most two batches; a batch is the upload's share of a
process-wide budget (:func:`registry.transfers.upload_batch_size`: 2 MiB
alone, less when many uploads run), so memory stays bounded however many
uploads are in flight.

A *follower* (the archive inspection) may read the file while it is being
written: it runs in the shared inspection pool
(:data:`registry.transfers.FOLLOWERS`), reading from the page cache what
the writer has written and waiting for more, so the upload is checked
without a second write, and a follower that fails stops the upload at the
next batch. When every inspection thread is busy, a follower starts once one
frees (and then catches up from the page cache). A follower that waits for
bytes longer than :data:`FOLLOW_GRACE` while others queue gives its thread
up: it is run again from the start once the upload is complete, so slow
clients never hold every inspection thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio

from registry.errors import InsufficientStorage, ObjectStoreException, PackageTooLarge
from registry.storage import storage_failure
from registry.transfers import (
    FOLLOWERS,
    MAX_UPLOAD_BATCH,
    WRITERS,
    upload_batch_size,
    uploads_in_flight,
    wait,
)

#: Less free space than this in the staging folder's file system counts as
#: full for ``/readyz``: not even a small upload could be received.
MIN_FREE_BYTES = 1024 * 1024
#: The largest batch handed to the writer pool (one upload alone uses it).
#: 2 MiB measured 13% faster uploads than 1 MiB (fewer thread hand-offs;
#: benchmarks/run.py, 256 MiB); with many uploads in flight batches shrink.
FLUSH_SIZE = MAX_UPLOAD_BATCH
#: Seconds a follower waits for bytes before it gives its thread to a
#: queued follower (only when one is queued).
FOLLOW_GRACE = 1.0
#: Batches of at most this many chunks are written with one ``writev``.
MAX_VECTOR = 256
#: A follower reads the staging file this many bytes at a time (at most).
READ_AHEAD = 256 * 1024
#: The batch size for the last bytes the caller said are coming
#: (:meth:`StagingFile.expect`): what is left to write once they are in.
TAIL_BATCH = 256 * 1024


class UploadAbandoned(Exception):
    """Raised to a follower when the upload it reads ends without completing."""


class _Deferred(Exception):
    """Raised to a follower that gave its thread up; it runs again once the upload is complete."""


_DEFERRED = object()


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

    def wait_for_change(self) -> None:
        """Wait (holding the condition) for the next notification; raise
        ``_Deferred`` after :data:`FOLLOW_GRACE` seconds without one while
        other followers are queued for a thread."""
        if not self.condition.wait(FOLLOW_GRACE) and FOLLOWERS.queued > 0:
            raise _Deferred()


class _Follower:
    """The reading side handed to a follower (see ``FollowedUpload`` in archive.py).

    The file is read :data:`READ_AHEAD` bytes at a time (or what is written,
    if less) and small reads are served from that: the decompressors ask for
    8 KiB at a time, and a system call and a turn of the progress lock for
    each made inspecting a 16 MiB upload cost some 2,000 of each, every one
    a chance to lose the GIL to a busy event loop.
    """

    def __init__(self, path: Path, progress: _Progress) -> None:
        self.path = path
        self.progress = progress
        #: bytes handed out by :meth:`read` (the packed size the ratio check sees)
        self.consumed = 0
        self._fetched = 0  # bytes read from the file
        self._ahead = b""  # read from the file, not handed out yet from ``_ahead_at`` on
        self._ahead_at = 0
        self._file = path.open("rb", buffering=0)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; waits for the writer; ``b""`` once complete."""
        size = size if size is not None and size > 0 else FLUSH_SIZE
        if self._ahead_at >= len(self._ahead) and not self._fetch(max(size, READ_AHEAD)):
            return b""
        data = self._ahead[self._ahead_at:self._ahead_at + size]
        self._ahead_at += len(data)
        self.consumed += len(data)
        return data

    def _fetch(self, size: int) -> bool:
        """Read up to ``size`` more bytes of the file once the writer has
        written some; False once the upload is complete and all is read."""
        progress = self.progress
        with progress.condition:
            while progress.written <= self._fetched and progress.state == "receiving":
                progress.wait_for_change()
            if progress.state == "abandoned":
                raise UploadAbandoned()
            available = progress.written - self._fetched
        if available <= 0:
            return False
        data = self._file.read(min(size, available))
        if not data:  # written bytes are visible to every descriptor at once
            raise OSError(f"{self.path}: {available} written bytes are not readable")
        self._fetched += len(data)
        self._ahead, self._ahead_at = data, 0
        return True

    def complete(self) -> Path:
        """Wait for the end of the upload; the path of the finished file."""
        with self.progress.condition:
            while self.progress.state == "receiving":
                self.progress.wait_for_change()
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
    and, before committing the file, ``await staged.synced()``. Entering and
    leaving may happen in different tasks (a resumable upload's assembly).

    Given an ``existing`` file (a resumable upload's, see
    :meth:`registry.storage.ResumableStore.in_place`), it writes into that
    file from where :meth:`resume_from` puts it and never removes it (until
    :meth:`link_into` gives it a name of its own), and a refusal by the
    follower does not stop the writes: every byte the client sends is kept,
    and the refusal is answered when the upload is complete.
    """

    def __init__(self, folder: Path, max_size: int, follower: Callable[[_Follower], Any] | None = None,
                 existing: Path | None = None) -> None:
        """:param follower: called in an inspection thread with a reader of
            the upload as it is written; its result is :meth:`followed`'s.
        :param existing: write into this file (created with its folder if
            missing) instead of a fresh one in ``folder``."""
        self.folder = folder
        self.max_size = max_size
        self._existing = existing
        #: whether the exit removes :attr:`path` (an existing file is not ours)
        self._owned = existing is None
        self._follow = follower
        self._following: Future[Any] | None = None
        self._progress = _Progress()
        self.size = 0
        self.path: Path | None = None
        self._hash = hashlib.sha256()
        #: False once :meth:`resume_from` skipped hashing: :attr:`sha256` is then unknown
        self._hashing = True
        self._buffer: list[bytes] = []
        self._buffered = 0
        #: the size the caller said the file reaches soon (see :meth:`expect`)
        self._expected = 0
        self._fd: int | None = None
        #: the batch (or fsync) in the writer pool; kept until it has ended,
        #: so the exit never closes the file under a running write
        self._pending: Future[None] | None = None
        self._counted = False

    async def __aenter__(self) -> Self:
        existing = self._existing

        def create() -> tuple[int, Path]:
            if existing is not None:
                # Its folder too: a crash of the machine may lose both (neither was synced).
                existing.parent.mkdir(parents=True, exist_ok=True)
                return os.open(existing, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600), existing
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.folder, prefix="upload-", suffix=".part")
            return fd, Path(name)

        # Shielded: a cancellation while the pool creates the file would leave it behind.
        with anyio.CancelScope(shield=True):
            try:
                self._fd, self.path = await WRITERS.run(create)
            except OSError as exc:  # a full disk (no inode left), a read-only or missing folder
                raise storage_failure(exc, "cannot create a staging file") from exc
        uploads_in_flight.add(1)
        self._counted = True
        if self._follow is not None:
            self._following = FOLLOWERS.submit(self._run_follower, self._follow, self.path, self._progress)
        return self

    @staticmethod
    def _run_follower(follow: Callable[[_Follower], Any], path: Path, progress: _Progress) -> Any:
        """In an inspection thread: the follower's result, or ``_DEFERRED``."""
        if progress.state == "abandoned":
            raise UploadAbandoned()
        reader = _Follower(path, progress)  # opens the file: disk I/O, off the event loop
        try:
            return follow(reader)
        except _Deferred:
            return _DEFERRED
        finally:
            reader.close()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: in a cancelled scope the waits would raise at once,
        # leaving the file behind (or closing it under a running write).
        with anyio.CancelScope(shield=True):
            self._progress.end("abandoned")  # wakes a follower still waiting for bytes
            if self._counted:
                uploads_in_flight.add(-1)
                self._counted = False
            following, self._following = self._following, None
            if following is not None and not following.cancel():  # a queued follower never starts
                await _ended(following)
            pending, self._pending = self._pending, None
            if pending is not None:
                await _ended(pending)  # a batch still being written ends before its file is closed
            fd, self._fd = self._fd, None
            path = self.path if self._owned else None
            if fd is not None or path is not None:
                await _ended(WRITERS.submit(_close_and_remove, fd, path))

    @property
    def sha256(self) -> str:
        """Hex digest of everything written (valid after :meth:`finish`)."""
        assert self._hashing, "resumed without hashing: the digest is not the file's"
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
        batch = upload_batch_size()
        if 0 < self._expected - self.size < batch:  # the end of what is coming is near: smaller batches
            batch = min(batch, TAIL_BATCH)
        if self._buffered >= batch:
            if self._owned:
                self._raise_if_follower_failed()
            await self._flush()

    async def write_all(self, chunks: AsyncIterator[bytes]) -> None:
        """Write every chunk of ``chunks``."""
        async for chunk in chunks:
            await self.write(chunk)

    def expect(self, count: int) -> None:
        """``count`` more bytes are coming, and the caller then waits for
        them (:meth:`flush`): the last batch before them is written in
        pieces of :data:`TAIL_BATCH` as they arrive, so little is left to
        write once the last byte is in (a tus PATCH's Content-Length)."""
        self._expected = self.size + count

    async def flush(self) -> None:
        """Write out every byte written so far and wait for it; the upload
        goes on (no fsync, the follower waits for more)."""
        await self._flush()
        await self._wait_for_writer()

    async def resume_from(self, offset: int, *, hashing: bool = True) -> None:
        """Continue an ``existing`` file after its first ``offset`` bytes: cut
        off anything past them, hash them and show them to the follower (one
        read, from the page cache when they were written recently).

        :param hashing: False to only write on from there (no read, no hash:
            :attr:`sha256` is then unknown and the file is not to be ingested).
        :raises ObjectStoreException: the file is shorter than ``offset``.
        """
        assert self._existing is not None and self.size == 0, "only a fresh staging file of an existing file"
        self._hashing = hashing
        try:
            await WRITERS.run(self._resume_blocking, offset)
        except OSError as exc:
            raise storage_failure(exc, "cannot read the upload's file") from exc
        self.size = offset

    def _resume_blocking(self, offset: int) -> None:
        assert self._fd is not None and self.path is not None
        if os.fstat(self._fd).st_size < offset:
            raise ObjectStoreException(f"the upload's file is shorter than its recorded {offset} bytes")
        os.ftruncate(self._fd, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._progress.advance(offset)  # the follower reads them meanwhile, from its own descriptor
        if not self._hashing:
            return
        with self.path.open("rb", buffering=0) as f:
            remaining = offset
            while remaining > 0:
                data = f.read(min(FLUSH_SIZE, remaining))
                if not data:
                    raise ObjectStoreException("the upload's file changed while it was read")
                self._hash.update(data)
                remaining -= len(data)

    async def link_into(self, folder: Path) -> None:
        """Give an ``existing`` file a fresh name of its own in ``folder`` (a
        hard link), removed or consumed like any staging file, so storing it
        leaves the existing name in place. Where the file system cannot link,
        the existing file itself is handed over (storing it then consumes it).
        """
        assert self._existing is not None and self.path is not None
        existing = self.path

        def link() -> Path | None:
            name = folder / f"upload-{uuid.uuid4().hex}.part"
            try:
                os.link(existing, name)
            except OSError:
                return None
            return name

        linked = await WRITERS.run(link)
        if linked is not None:
            self.path = linked
        self._owned = True

    async def _flush(self) -> None:
        """Hand the buffered chunks to the writer pool once the previous batch is written."""
        if not self._buffer:
            return
        await self._wait_for_writer()
        chunks = self._buffer
        self._buffer = []
        self._buffered = 0
        self._pending = WRITERS.submit(self._write_blocking, chunks)

    async def _wait_for_writer(self) -> None:
        """Wait for the batch in flight, if any; raise its error as
        ``InsufficientStorage`` (disk or quota full) or ``ObjectStoreException``."""
        pending = self._pending
        if pending is None:
            return
        try:
            await wait(pending)
        except OSError as exc:  # ENOSPC from write() or fsync() is the client's 507, not a bug
            raise storage_failure(exc, "cannot write the staging file") from exc
        finally:
            if pending.done():
                self._pending = None

    def _write_blocking(self, chunks: list[bytes]) -> None:
        """In a writer thread: hash and append one batch."""
        assert self._fd is not None
        # One join, then one hash update and one write: hashing piece by piece
        # takes and drops the GIL once per piece, and each time this thread
        # wants it back it waits on the event loop (a 64 MiB upload measured
        # 10-25% slower that way).
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._hashing:
            self._hash.update(data)
        _write_fully(self._fd, [data])
        self._progress.advance(len(data))

    async def finish(self) -> None:
        """Write out every byte and start the fsync; :attr:`sha256` is then final.

        The fsync runs in the writer pool while the caller goes on (archive
        inspection reads the file from the page cache meanwhile); call
        :meth:`synced` before the file is committed anywhere.
        """
        await self._flush()
        await self._wait_for_writer()
        self._progress.end("complete")
        assert self._fd is not None
        self._pending = WRITERS.submit(os.fsync, self._fd)

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
        assert self._following is not None and self._follow is not None and self.path is not None, \
            "no follower was given"
        result = await wait(self._following)
        if result is _DEFERRED:
            # It gave its thread up while bytes were slow to come; the upload
            # is complete now, so this run reads straight through.
            self._following = FOLLOWERS.submit(self._run_follower, self._follow, self.path, self._progress)
            result = await wait(self._following)
        return result

    def _raise_if_follower_failed(self) -> None:
        """Stop receiving once the follower has refused the upload."""
        following = self._following
        if following is not None and following.done() and not following.cancelled() \
                and following.exception() is not None:
            raise following.exception()  # type: ignore[misc]


async def _ended(future: Future[Any]) -> None:
    """Wait until a pool task has ended, whatever it raised (its error is
    reported where its result is used)."""
    with contextlib.suppress(Exception):
        await wait(future)


def _close_and_remove(fd: int | None, path: Path | None) -> None:
    """In a writer thread: close the staging file and remove it."""
    if fd is not None:
        os.close(fd)
    if path is not None:
        path.unlink(missing_ok=True)


def _write_fully(fd: int, chunks: list[bytes]) -> None:
    """Append every chunk (``writev``, without joining them into one copy)."""
    if len(chunks) > MAX_VECTOR:
        chunks = [b"".join(chunks)]
    views = [memoryview(chunk) for chunk in chunks]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:first + MAX_VECTOR])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


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
