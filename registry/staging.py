"""Receive a package into a staging file: size limit and sha256 in one pass.

The bytes are hashed and written as they arrive; nothing reads the file again
to checksum it. Writes and hashing run in a writer thread of the file's own,
batched to about 1 MiB, so the event loop only moves buffers around. One batch
is written while the next is being received: receiving and writing overlap,
and an upload takes the longer of the two rather than their sum, with at most
two batches (2 MiB) held per upload.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import anyio
import anyio.to_thread

from registry.errors import PackageTooLarge

FLUSH_SIZE = 1024 * 1024


class StagingFile:
    """An upload in flight in ``folder``, always removed on exit.

    A storage that consumes the file (the filesystem backend renames it into
    place) leaves nothing for the exit to remove; any other storage copies it.

    Use as ``async with StagingFile(folder, max_size) as staged:``, then
    ``await staged.write(chunk)`` for each chunk and ``await staged.finish()``.
    """

    def __init__(self, folder: Path, max_size: int) -> None:
        self.folder = folder
        self.max_size = max_size
        self.size = 0
        self.path: Path | None = None
        self._hash = hashlib.sha256()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._fd: int | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    async def __aenter__(self) -> StagingFile:
        def create() -> tuple[int, str]:
            self.folder.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=self.folder, prefix="upload-", suffix=".part")

        self._fd, name = await anyio.to_thread.run_sync(create)
        self.path = Path(name)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-writer")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: in a cancelled scope run_sync would raise before starting,
        # leaving the file (and the writer thread) behind.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_and_remove)

    def _close_and_remove(self) -> None:
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
        """Wait for the batch in flight, if any; raise its error (``OSError``)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if not pending.done():
            await anyio.to_thread.run_sync(pending.result)
        pending.result()

    def _write_blocking(self, chunks: list[bytes]) -> None:
        """In the writer thread: hash and append one batch."""
        assert self._fd is not None
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._hash.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    async def finish(self) -> None:
        """Flush and fsync: the file then holds exactly the bytes written."""
        await self._flush()
        await self._wait_for_writer()
        assert self._fd is not None
        await anyio.to_thread.run_sync(os.fsync, self._fd)


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
