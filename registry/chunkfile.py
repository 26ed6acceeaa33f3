"""Receive one resumable-upload chunk (a tus PATCH body) into a local file.

Like :class:`registry.staging.StagingFile`, but for a piece of an upload
rather than a whole package: no archive inspection, a digest only when the
client sent ``Upload-Checksum``, and no fsync. Used where the storage keeps
an upload's chunks itself (S3: the file is handed to
:meth:`registry.storage.ResumableStore.append`), and for a chunk with a
checksum, which must match before any of it reaches the upload. A chunk the
storage keeps survives a crash of the registry process (the page cache
outlives it); after a crash of the machine,
:meth:`registry.storage.ResumableStore.recover` finds what did not reach the
disk and the upload's offset goes back to before it, which a tus client
handles by asking (``HEAD``) and sending again. The whole package is fsynced
once, when the completing PATCH stores it.

Writes run in the process's shared writer pool (:data:`registry.transfers.WRITERS`),
in batches of the upload's share of the upload budget (2 MiB alone), so
receiving the next batch overlaps writing the last one and a chunk in
flight holds no thread of its own. A *tee* (the upload's staging file, see
:mod:`registry.assembly`) is handed the same batches, the very same
``bytes`` objects: the body is joined into a batch once, not once per
consumer. Feeding the tee piece by piece measured about twice the time per
8 MiB PATCH body.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio

from registry.errors import PackageTooLarge
from registry.transfers import WRITERS, upload_batch_size, uploads_in_flight, wait


class ChunkFile:
    """``async with ChunkFile(folder, limit, algorithm) as chunk``; :meth:`receive`,
    then take :attr:`path` (rename it) before the block ends, or it is removed.

    :param limit: most bytes accepted; more raise ``PackageTooLarge``.
    :param algorithm: ``hashlib`` name of the digest to compute, or None.
    """

    def __init__(self, folder: Path, limit: int, algorithm: str | None = None) -> None:
        self.folder = folder
        self.limit = limit
        self.size = 0
        self.path: Path | None = None
        self._hash = hashlib.new(algorithm) if algorithm else None
        self._fd: int | None = None
        #: the batch in the writer pool, kept until it has ended (the exit
        #: never closes the file under a running write)
        self._pending: Future[None] | None = None
        self._counted = False

    @property
    def digest(self) -> bytes | None:
        """The raw digest of everything received (after :meth:`receive`), or None."""
        return None if self._hash is None else self._hash.digest()

    async def __aenter__(self) -> Self:
        def create() -> tuple[int, Path]:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.folder, prefix="chunk-", suffix=".part")
            return fd, Path(name)

        with anyio.CancelScope(shield=True):  # a cancelled creation would leave the file behind
            self._fd, self.path = await WRITERS.run(create)
        uploads_in_flight.add(1)
        self._counted = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        with anyio.CancelScope(shield=True):
            if self._counted:
                uploads_in_flight.add(-1)
                self._counted = False
            pending, self._pending = self._pending, None
            if pending is not None:  # a batch still being written ends before its file is closed
                with contextlib.suppress(Exception):
                    await wait(pending)
            fd, self._fd = self._fd, None
            await WRITERS.run(self._close_and_remove, fd, self.path)

    @staticmethod
    def _close_and_remove(fd: int | None, path: Path | None) -> None:
        if fd is not None:
            os.close(fd)
        if path is not None:
            path.unlink(missing_ok=True)  # already renamed away when kept

    async def receive(self, body: AsyncIterator[bytes], disconnect: type[BaseException],
                      tee: Callable[[bytes], Awaitable[None]] | None = None) -> bool:
        """Write all of ``body``, each batch also to ``tee`` when given (in
        order, before it is written here); True when it ended with
        ``disconnect`` (the client went away), with what came until then
        written."""
        batch: list[bytes] = []
        batched = 0
        disconnected = False
        try:
            async for data in body:
                if not data:
                    continue
                self.size += len(data)
                if self.size > self.limit:
                    raise PackageTooLarge(f"the chunk passes the upload's length by {self.size - self.limit} bytes")
                batch.append(data)
                batched += len(data)
                if batched >= upload_batch_size():
                    await self._submit(batch, tee)
                    batch, batched = [], 0
        except disconnect:
            disconnected = True
        await self._submit(batch, tee)
        await self._wait()
        return disconnected

    async def _submit(self, batch: list[bytes], tee: Callable[[bytes], Awaitable[None]] | None) -> None:
        if not batch:
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        if tee is not None:
            await tee(data)
        await self._wait()
        self._pending = WRITERS.submit(self._write, data)

    async def _wait(self) -> None:
        pending = self._pending
        if pending is not None:
            try:
                await wait(pending)
            finally:
                if pending.done():
                    self._pending = None

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        if self._hash is not None:
            self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
