"""Receive a package into a staging file: size limit and sha256 in one pass.

The bytes are hashed and written as they arrive; nothing reads the file again
to checksum it. Writes and hashing run in worker threads, batched to about
1 MiB, so the event loop only moves buffers around.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

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

    async def __aenter__(self) -> StagingFile:
        def create() -> tuple[int, str]:
            self.folder.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=self.folder, prefix="upload-", suffix=".part")

        self._fd, name = await anyio.to_thread.run_sync(create)
        self.path = Path(name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self._close_and_remove, abandon_on_cancel=False)

    def _close_and_remove(self) -> None:
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
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        await anyio.to_thread.run_sync(self._write_blocking, data)

    def _write_blocking(self, data: bytes) -> None:
        assert self._fd is not None
        self._hash.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    async def finish(self) -> None:
        """Flush and fsync: the file then holds exactly the bytes written."""
        await self._flush()
        assert self._fd is not None
        await anyio.to_thread.run_sync(os.fsync, self._fd)


def sweep_staging(folder: Path) -> int:
    """Delete every file in a staging folder (at start-up); return how many."""
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.is_file() or entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed
