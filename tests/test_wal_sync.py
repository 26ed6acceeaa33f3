"""The SQLite store's write path: every commit waits for a WAL flush that
started after it completed, writers arriving together share one, and the
writers of one process queue on a lock of their own within the timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from registry_plugins.sqlite_wal_sync import WalSync
from registry_plugins.store_sqlite import SQLiteStore

from registry.errors import DatabaseUnavailable
from registry.records import NewCredential


class CountingSync(WalSync):
    """A WalSync whose flushes are counted, the first one held until released."""

    def __init__(self, database: Path) -> None:
        super().__init__(database)
        self.flushes = 0
        self.first_started = threading.Event()
        self.release = threading.Event()

    def _flush(self) -> None:
        self.flushes += 1
        if self.flushes == 1:
            self.first_started.set()
            assert self.release.wait(30)
        super()._flush()


def test_each_commit_after_a_flush_gets_a_flush_of_its_own(tmp_path: Path) -> None:
    sync = CountingSync(tmp_path / "db")
    sync.release.set()
    for _ in range(5):
        sync.commit_done()
    assert sync.flushes == 5


def test_commits_waiting_behind_a_flush_share_the_next_one(tmp_path: Path) -> None:
    sync = CountingSync(tmp_path / "db")
    first = threading.Thread(target=sync.commit_done)
    first.start()
    assert sync.first_started.wait(30)
    # These commits complete while the first flush runs: it started before
    # them, so it cannot cover them; one more flush covers them all.
    waiting = [threading.Thread(target=sync.commit_done) for _ in range(8)]
    for thread in waiting:
        thread.start()
    while sync._committed < 9:  # every one has counted its commit and waits for the flush lock
        threading.Event().wait(0.01)
    sync.release.set()
    for thread in [first, *waiting]:
        thread.join(30)
    assert sync.flushes == 2


def test_the_store_flushes_its_wal_after_each_write(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "registry.db")
    sync = CountingSync(store.path)
    sync.release.set()
    store._wal_sync = sync
    try:
        store.migrate()
        before = sync.flushes
        store.add_credential(NewCredential(kind="token", name="a", secret_hash="h" * 64, hint="spr_abcd",
                                           apps=[], read_only=False))
        assert sync.flushes == before + 1
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: COMMIT does not sync
        # the flush found the log the commit wrote
        assert (tmp_path / "registry.db-wal").stat().st_size > 0
    finally:
        store.close()
    # and another connection reads it once the store is gone
    assert sqlite3.connect(tmp_path / "registry.db").execute("SELECT COUNT(*) FROM credentials").fetchone()[0] == 1


class FailingSecondFlush(CountingSync):
    """The first flush is held until released, the second fails like a lost write-back."""

    def _flush(self) -> None:
        if self.flushes == 1:  # the one after the held first flush
            self.flushes += 1
            raise OSError(5, "Input/output error")
        super()._flush()


def test_every_commit_of_a_failed_flush_is_told_so(tmp_path: Path) -> None:
    """A failed flush fails each commit it held, not only the writer that ran it:
    flushing again would succeed (the kernel reports a lost write-back once)
    and call commits durable that may be gone."""
    sync = FailingSecondFlush(tmp_path / "db")
    first = threading.Thread(target=sync.commit_done)
    first.start()
    assert sync.first_started.wait(30)
    failed: list[OSError] = []

    def commit() -> None:
        try:
            sync.commit_done()
        except OSError as exc:
            failed.append(exc)

    waiting = [threading.Thread(target=commit) for _ in range(4)]
    for thread in waiting:
        thread.start()
    while sync._committed < 5:
        threading.Event().wait(0.01)
    sync.release.set()
    for thread in [first, *waiting]:
        thread.join(30)
    assert len(failed) == 4 and sync.flushes == 2
    sync.commit_done()  # a commit after the failure gets a flush of its own
    assert sync.flushes == 3


def _credential(name: str) -> NewCredential:
    return NewCredential(kind="token", name=name, secret_hash="h" * 64, hint="spr_abcd", apps=[], read_only=False)


@contextmanager
def _write_held(store: SQLiteStore) -> Iterator[None]:
    """A write transaction of ``store`` open in another thread while inside."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._write():
            holding.set()
            assert release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(30)
    try:
        yield
    finally:
        release.set()
        holder.join(30)


def test_a_writer_waits_for_another_writer_of_its_process(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "registry.db")
    store.migrate()
    added: list[object] = []
    try:
        with _write_held(store):
            waiting = threading.Thread(target=lambda: added.append(store.add_credential(_credential("b"))))
            waiting.start()
            waiting.join(0.3)
            assert waiting.is_alive() and not added  # queued behind the open transaction
        waiting.join(30)
        assert len(added) == 1
    finally:
        store.close()


def test_a_writer_behind_a_held_write_gives_up_within_the_timeout(tmp_path: Path) -> None:
    """Both waits, for the process's lock and then SQLite's, add up to at most ``timeout``."""
    store = SQLiteStore(tmp_path / "registry.db", timeout=1.0)
    store.migrate()
    try:
        with _write_held(store):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="locked"):
                store.add_credential(_credential("b"))
            assert time.monotonic() - started < 1.9
    finally:
        store.close()


def test_noting_a_credential_use_never_waits_for_a_writer(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "registry.db", timeout=30.0)
    store.migrate()
    credential = store.add_credential(_credential("a"))
    now = datetime.now(UTC)
    try:
        with _write_held(store):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="locked"):
                store.note_credential_use(credential.id, now, now)
            assert time.monotonic() - started < 10  # at once, not after the 30 s timeout
        assert store.note_credential_use(credential.id, now, now)  # and the next one is noted
    finally:
        store.close()


def test_the_wait_for_the_process_lock_counts_against_sqlites(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock: the first writer of this
    process waits in SQLite's busy handler, holding the process's lock; a
    second, arriving later, waits for the process's lock until the first
    gives up, then for SQLite's only what is left of its own timeout. Each
    gives up ``timeout`` after it started, not the second after two."""
    timeout = 2.0
    store = SQLiteStore(tmp_path / "registry.db", timeout=timeout)
    store.migrate()
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    took: dict[str, float] = {}

    def write(name: str) -> None:
        started = time.monotonic()
        try:
            store.add_credential(_credential(name))
        except DatabaseUnavailable:
            took[name] = time.monotonic() - started

    try:
        other.execute("BEGIN IMMEDIATE")
        first = threading.Thread(target=write, args=("a",))
        first.start()
        time.sleep(0.5)  # the first now holds the process's lock, waiting in BEGIN IMMEDIATE
        second = threading.Thread(target=write, args=("b",))
        second.start()
        first.join(30)
        second.join(30)
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()
    assert set(took) == {"a", "b"}, "both writers gave up on the held lock"
    assert took["a"] < timeout + 0.7  # slack for a busy machine
    # the second waited for the first (about 1.5 s), then for SQLite's lock what was left
    assert timeout - 0.3 < took["b"] < timeout + 0.7  # without the sum: about 3.5 s
