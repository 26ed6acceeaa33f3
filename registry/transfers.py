"""What every transfer in flight shares: bounded thread pools and memory budgets.

An upload or a download in flight must cost little: no thread of its own,
and buffers that shrink as more transfers run at once, so neither the thread
count nor the memory grows with the number of clients.

- :data:`WRITERS` writes, hashes and fsyncs staging files for every upload
  of the process; :data:`FOLLOWERS` runs their archive inspections;
  :data:`READERS` reads blobs for downloads. Each is a fixed-size pool
  sized from the cores, created on first use (in the process that uses it:
  a ``--workers`` child never inherits a parent's threads).
- :func:`wait` awaits a pool's future on the event loop without holding any
  thread while it waits (``anyio.to_thread.run_sync(future.result)`` would
  hold one per upload).
- :func:`upload_batch_size` and :func:`download_chunk_size` split a
  process-wide byte budget between the transfers in flight, within fixed
  bounds, so one transfer alone moves large batches (fewer hand-offs) and
  many at once stay within the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

_CORES = os.cpu_count() or 1
MiB = 1024 * 1024
KiB = 1024

#: Writer threads per process. Hashing and ``write`` release the GIL, and an
#: fsync may wait on the disk for a while: twice the cores keeps the disk busy
#: while others hash, and 4 at least keeps a slow fsync from stalling every upload.
WRITER_THREADS = min(16, max(4, 2 * _CORES))
#: Inspection threads per process. An inspection that catches up with its
#: upload waits for bytes; uploads beyond this many are inspected as soon as
#: a thread frees (from the page cache, still without a second write).
FOLLOWER_THREADS = min(16, max(4, 2 * _CORES))
#: Threads reading blobs for downloads (page-cache reads are short).
READER_THREADS = min(16, max(4, 2 * _CORES))

#: Bytes all uploads of a process may hold in memory, received but not yet
#: written (each holds at most two batches: one being written, one filling).
UPLOAD_BUDGET = 64 * MiB
#: Bounds of one upload's batch: the largest is what one upload alone uses
#: (2 MiB measured 13% faster than 1 MiB, benchmarks/run.py), the smallest
#: keeps hand-offs few however many uploads run.
MAX_UPLOAD_BATCH = 2 * MiB
MIN_UPLOAD_BATCH = 256 * KiB
#: Bytes all downloads of a process share: each holds a chunk read and a
#: chunk in the connection's send buffer (the server waits for the buffer to
#: drain before the next chunk is read, so a client that stops reading holds
#: no more), plus copies on the way out (the HTTP framing joins a chunk
#: into a new buffer) and the allocator's slack: measured about 4 chunks a
#: download. 8 MiB kept 200 downloads of 16 MiB at +44 MB RSS, where 32 MiB
#: cost +100 MB; one download alone still reads 1 MiB chunks.
DOWNLOAD_BUDGET = 8 * MiB
MAX_DOWNLOAD_CHUNK = 1 * MiB
MIN_DOWNLOAD_CHUNK = 32 * KiB


class Pool:
    """A fixed-size thread pool of this process, started on first use."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = threads
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._queued = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in one of the pool's threads (in submission order)."""
        with self._lock:
            if self._executor is None or self._pid != os.getpid():
                # a forked child has the parent's executor object but none of its threads
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name)
                self._pid = os.getpid()
                self._queued = 0
            self._queued += 1
            executor = self._executor

        def run() -> T:
            with self._lock:
                self._queued -= 1
            return fn(*args)

        future = executor.submit(run)
        future.add_done_callback(self._forget_if_cancelled)
        return future

    def _forget_if_cancelled(self, future: Future[Any]) -> None:
        if future.cancelled():  # never ran, so never counted itself out
            with self._lock:
                self._queued -= 1

    def close(self) -> None:
        """Let the pool's threads end once the work given to them is done
        (without waiting for it); a later :meth:`submit` starts new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    @property
    def queued(self) -> int:
        """Tasks submitted that no thread has started yet."""
        return self._queued

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the pool, awaited without holding a thread."""
        return await wait(self.submit(fn, *args))

    async def run_to_end(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run`, except that a caller cancelled while ``fn`` runs waits
        for it to end before the cancellation goes on, as
        ``anyio.to_thread.run_sync`` does: what the call did (a commit, say)
        is settled whenever the caller moves on. A call cancelled before a
        thread started it never runs. Cheaper than anyio's hand-off
        (no capacity limiter or cancel scope to enter): a tenth of the event
        loop's time per 1 KiB upload went there."""
        future = self.submit(fn, *args)
        try:
            return await wait(future)
        except BaseException:
            # A call no thread has started yet is dropped (anyio's hand-off,
            # cancelled while it waits for a thread, never runs the call either).
            if not future.done() and not future.cancel():
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):  # the caller sees its cancellation
                        await wait(future)
            raise


WRITERS = Pool("staging-writer", WRITER_THREADS)
FOLLOWERS = Pool("staging-inspect", FOLLOWER_THREADS)
READERS = Pool("blob-reader", READER_THREADS)


async def wait(future: Future[T]) -> T:
    """The result of a pool's ``future``, awaited on the running event loop.

    A cancelled caller stops waiting; the task itself runs on (callers that
    must know it ended await it again under a shielded scope).
    """
    if not future.done():
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        def wake(_: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(resolve)

        future.add_done_callback(wake)
        await done
    return future.result()


class _Counter:
    """How many transfers of one kind are in flight in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.value += delta


uploads_in_flight = _Counter()
downloads_in_flight = _Counter()


def _share(budget: int, parts: int, low: int, high: int) -> int:
    return max(low, min(high, budget // max(1, parts)))


def upload_batch_size() -> int:
    """The batch an upload hands to a writer now: its share of :data:`UPLOAD_BUDGET`."""
    return _share(UPLOAD_BUDGET, 2 * uploads_in_flight.value, MIN_UPLOAD_BATCH, MAX_UPLOAD_BATCH)


def download_chunk_size() -> int:
    """The chunk a download reads now: its share of :data:`DOWNLOAD_BUDGET`."""
    return _share(DOWNLOAD_BUDGET, 2 * downloads_in_flight.value, MIN_DOWNLOAD_CHUNK, MAX_DOWNLOAD_CHUNK)


#: ``preadv`` flag: read only what the page cache holds, never wait for the disk.
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def read_cached(fd: int, size: int, offset: int) -> bytes | None:
    """Up to ``size`` bytes at ``offset`` when the page cache holds them, else None.

    Never waits for the disk (``RWF_NOWAIT``: the kernel answers ``EAGAIN``
    instead), so it may run on the event loop: a blob read recently costs no
    thread hand-off. ``b""`` at the end of the file. None also where the
    kernel or the file system lacks the flag: read in :data:`READERS` then.
    """
    if not _NOWAIT:
        return None
    buffer = bytearray(size)
    try:
        count = os.preadv(fd, [buffer], offset, _NOWAIT)
    except OSError:  # EAGAIN (not cached), EOPNOTSUPP (no support on this file system)
        return None
    if count == size:
        return bytes(buffer)
    return bytes(memoryview(buffer)[:count])
