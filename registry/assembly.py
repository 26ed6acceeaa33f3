"""Stage a resumable upload as its chunks arrive, so completing it costs no second pass.

The completing PATCH must run the ``P/`` pipeline on the whole package:
size, sha256, archive inspection, then fsync and commit. Done only at the
end, that is one more full pass over the bytes after the last one arrived.
Instead, each upload this process is receiving has a staging file
(:meth:`Registry.staging_over`: hashed, and inspected by its follower as it
grows), kept from one PATCH to the next. When the last chunk is in, that
staging file is complete and goes to :meth:`Registry.ingest` as it is.

Two kinds, after the storage (:class:`registry.storage.ResumableStore`):

- *in place* (:meth:`Assemblies.in_place`): the store offers the upload's
  own local file, and the staging file writes into it. Each byte is written
  once. When this process cannot follow the upload (a restart, a chunk that
  reached another instance or worker, a failed chunk, eviction), the PATCHes
  that follow write into the file without it, and the completing PATCH
  takes the file over, reading it once to hash and inspect it (taking it
  over at every PATCH would read it again each time an upload's PATCHes
  alternate between processes).
- *tee* (:meth:`Assemblies.writer`): the store keeps chunks elsewhere (S3),
  and accepted chunks are also copied into an ordinary staging file while
  the upload arrives at this process in order from its first byte. When it
  cannot follow, the assembly is dropped and the completing PATCH assembles
  the upload from the storage instead, with the same result.

At most :data:`MAX_OPEN` uploads are staged at once beyond those a request
is writing to right now (never dropped under it), and one unused for
:data:`IDLE_SECONDS` is dropped (an in-place file stays with its store).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from registry.service import Registry
from registry.staging import StagingFile

logger = logging.getLogger("registry.assembly")

#: Uploads staged at once by one process (each holds a staging file and its buffers).
MAX_OPEN = 8
#: An assembly unused this long is dropped (its upload may never finish).
IDLE_SECONDS = 300.0
READ_SIZE = 2 * 1024 * 1024


@dataclass
class _Assembly:
    context: AbstractAsyncContextManager[StagingFile]
    staged: StagingFile  # its size is the upload's offset it continues from
    used: float = field(default_factory=time.monotonic)


class Tee:
    """Copies bytes into one assembly; a failure drops the assembly, never
    the request (the completing PATCH then assembles from the storage and
    answers the error properly)."""

    def __init__(self, owner: Assemblies, upload_id: str, assembly: _Assembly) -> None:
        self.owner = owner
        self.upload_id = upload_id
        self.assembly = assembly
        self.alive = True

    async def write(self, data: bytes) -> None:
        if not self.alive:
            return
        try:
            await self.assembly.staged.write(data)
        except Exception:  # noqa: BLE001 -- refused by the inspection, too large, disk trouble
            await self.abandon()

    async def abandon(self) -> None:
        """The bytes written do not continue the upload after all: drop the assembly."""
        if self.alive:
            self.alive = False
            await self.owner.drop(self.upload_id)


class Assemblies:
    """The uploads this process is staging as they arrive, by upload id."""

    def __init__(self, registry: Registry, busy: Container[str] = frozenset()) -> None:
        """:param busy: the uploads a request of this process is writing to
            now (kept up to date by the caller): their assemblies stay open."""
        self.registry = registry
        self.busy = busy
        self._open: dict[str, _Assembly] = {}

    async def writer(self, upload_id: str, offset: int) -> Tee | None:
        """Where to copy bytes that continue the upload at ``offset`` as they
        arrive, or None when this process cannot follow the upload from there."""
        assembly = self._open.get(upload_id)
        if assembly is None:
            if offset != 0:
                return None
            await self._make_room()
            context = self.registry.staging()
            try:
                staged = await context.__aenter__()
            except Exception:
                logger.warning("cannot stage upload %s as it arrives", upload_id, exc_info=True)
                return None
            assembly = self._open[upload_id] = _Assembly(context, staged)
        if assembly.staged.size != offset:
            await self.drop(upload_id)
            return None
        assembly.used = time.monotonic()
        return Tee(self, upload_id, assembly)

    async def kept(self, upload_id: str, offset: int) -> StagingFile | None:
        """The staging file kept from this process's last PATCH of the upload
        when that ended at ``offset``; None otherwise (a stale one is dropped)."""
        assembly = self._open.get(upload_id)
        if assembly is None:
            return None
        if assembly.staged.size != offset:
            await self.drop(upload_id)
            return None
        assembly.used = time.monotonic()
        return assembly.staged

    async def in_place(self, upload_id: str, path: Path, offset: int, length: int) -> StagingFile:
        """The staging file writing into the upload's own file ``path`` (of
        ``length`` bytes in all) from ``offset``: the one kept from this
        process's last PATCH when that ended there, else a new one that
        takes the file over from ``offset`` (:meth:`StagingFile.resume_from`).
        On any failure while it is written, :meth:`drop` it (its bytes past
        the recorded offset are then cut off by the next one)."""
        kept = await self.kept(upload_id, offset)
        if kept is not None:
            return kept
        await self._make_room()
        staged = self.registry.staging_over(path, length)
        await staged.__aenter__()
        try:
            await staged.resume_from(offset)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await staged.__aexit__(None, None, None)
            raise
        self._open[upload_id] = _Assembly(staged, staged)
        return staged

    async def feed(self, upload_id: str, offset: int, chunk: Path) -> None:
        """Add the accepted chunk file ``chunk``, which starts at ``offset``."""
        tee = await self.writer(upload_id, offset)
        if tee is None:
            return
        with chunk.open("rb", buffering=0) as f:
            while tee.alive and (data := await anyio.to_thread.run_sync(f.read, READ_SIZE)):
                await tee.write(data)

    def take(self, upload_id: str, length: int) -> tuple[AbstractAsyncContextManager[StagingFile], StagingFile] | None:
        """The staging file holding all ``length`` bytes of the upload, now the
        caller's to ingest and close; None when it is not complete here."""
        assembly = self._open.get(upload_id)
        if assembly is None or assembly.staged.size != length:
            return None
        del self._open[upload_id]
        return assembly.context, assembly.staged

    async def drop(self, upload_id: str) -> None:
        """Forget an upload's assembly, removing its staging file."""
        assembly = self._open.pop(upload_id, None)
        if assembly is not None:
            with anyio.CancelScope(shield=True):
                await assembly.context.__aexit__(None, None, None)

    async def drop_idle(self) -> None:
        """Drop assemblies unused for :data:`IDLE_SECONDS`."""
        cutoff = time.monotonic() - IDLE_SECONDS
        for upload_id in [key for key, a in self._open.items() if a.used < cutoff and key not in self.busy]:
            await self.drop(upload_id)

    async def close(self) -> None:
        """Drop every assembly (at shutdown)."""
        for upload_id in list(self._open):
            await self.drop(upload_id)

    async def _make_room(self) -> None:
        """Drop the least recently used assemblies no request is writing to
        until fewer than :data:`MAX_OPEN` are open (or only busy ones are)."""
        while len(self._open) >= MAX_OPEN:
            idle = [key for key in self._open if key not in self.busy]
            if not idle:
                return
            await self.drop(min(idle, key=lambda key: self._open[key].used))
