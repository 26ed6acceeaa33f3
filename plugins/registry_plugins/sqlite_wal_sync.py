"""Group commit for the SQLite store: one WAL sync makes many commits durable.

With ``PRAGMA synchronous = FULL`` every ``COMMIT`` syncs the write-ahead log
itself, while it still holds the database's only write lock: writers queue
behind each other's disk flush, and a process commits at most one
transaction per flush however many writers wait (a small upload commits
twice, its record and its audit event: on a disk that flushes in 4 ms, one
upload per 8 ms at most, whatever the number of clients).

The store therefore runs its WAL connections with ``synchronous = NORMAL`` (in
WAL mode never corrupt: SQLite syncs the log before each checkpoint and the
database after it, but it does not sync at ``COMMIT``) and makes each write
durable itself, right after its ``COMMIT`` and before returning to its
caller: :meth:`WalSync.commit_done` flushes the log file with ``fdatasync``
outside the write lock, and one flush covers every commit that completed
before it started, so writers arriving together share it. A write call of
the store still returns only once its transaction is on disk, exactly as
with ``FULL``; what changes is that another connection may read a committed
transaction a moment before its flush ends (a reader of this process or
another could see a record that a power loss in that moment would take back;
no caller is ever told it was stored).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class WalSync:
    """Flushes one database's WAL file for the commits of this process."""

    def __init__(self, database: Path) -> None:
        self.wal = database.with_name(database.name + "-wal")
        self._count_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._committed = 0  # commits completed (numbered as they complete)
        self._flushed = 0  # every commit up to this number is on disk
        # Every commit up to this number was in a flush that failed. A retry
        # would not tell: the kernel reports a lost write-back once, to the
        # first flush after it, and then forgets it.
        self._failed = 0

    def commit_done(self) -> None:
        """Return once the transaction this thread just committed is on disk.

        Call right after ``COMMIT`` returned, outside any lock of the
        database. A flush that started after this commit completed covers it:
        a writer that finds one done meanwhile returns without flushing.

        :raises OSError: the flush failed; the commit is visible but may not
            be durable.
        """
        with self._count_lock:
            self._committed += 1
            mine = self._committed
        with self._flush_lock:
            if mine <= self._failed:
                raise OSError(errno.EIO, "a flush of the database's log that held this commit failed")
            if self._flushed >= mine:
                return  # another writer's flush started after this commit
            with self._count_lock:
                target = self._committed  # each of these has written its frames
            try:
                self._flush()
            except OSError:
                self._failed = target  # every writer waiting on this flush is told, not only this one
                raise
            self._flushed = target

    def _flush(self) -> None:
        # Opened per flush: SQLite may delete the WAL when the last connection
        # to the database closes and start a new file later; a descriptor
        # kept open would then sync a file nobody writes to.
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # no log: the last connection checkpointed it into the database (synced)
        try:
            _datasync(fd)
        finally:
            os.close(fd)
