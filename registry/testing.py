"""Conformance suites any storage or record-store plugin can run against itself.

:class:`RecordStoreConformance` (at the end) pins the record store's rules the
same way: every versioning rule, list order, filters and pagination,
credentials, events, copying, one winner among racing commits of a version
from threads and from processes, and the leases of background jobs and
resumable uploads (one winner among processes racing to claim a job).


The tests pin what the core relies on from a :class:`registry.storage.Storage`:
put and read back, ranged reads, delete, exists, an overwrite done the core's
way (a fresh key, then the old one deleted), atomicity (a failed put leaves
nothing under its key) and an object larger than a multipart part. They use
only the public ``Storage`` interface, so they hold for any backend.

Use it from a plugin's own tests (pytest and its bundled ``anyio`` plugin are
needed; this module is not imported by the service)::

    import pytest
    from registry.testing import StorageConformance

    class TestMyStorage(StorageConformance):
        @pytest.fixture
        def storage(self, tmp_path):
            return MyStorage(tmp_path / "blobs")   # not started: the suite starts it

        @pytest.fixture
        def large_object_size(self):               # optional: > your part size
            return 3 * MY_PART_SIZE + 1

A parametrized module-level ``storage`` fixture runs the suite over several
backends at once (see the registry's ``tests/test_storage_conformance.py``).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from registry.auth import CredentialStore, authenticate
from registry.catalog import PackageDetails, Summary
from registry.errors import (
    DatabaseUnavailable,
    ObjectStoreException,
    PackageAlreadyExists,
    PackageNotFound,
    RegistryError,
    Unauthenticated,
)
from registry.leases import holder_is_dead, make_holder
from registry.records import (
    CANCELLED,
    COMPLETING,
    DELIVERED,
    FAILED,
    PENDING,
    QUEUED,
    RECEIVING,
    RUNNING,
    SUCCEEDED,
    AuditEvent,
    NewCredential,
    NewJob,
    NewOutboxEvent,
    NewPackage,
    NewUpload,
    Order,
    Outcome,
    PageKey,
    Record,
    utc_now,
)
from registry.storage import BlobMissing, Storage, new_blob_key
from registry.store import BackupUnsupported, RecordStore
from registry.transfers import MAX_DOWNLOAD_CHUNK

MiB = 1024 * 1024
#: Default size of the "large" object: over two 8 MiB parts, not a multiple of 1 MiB.
LARGE_OBJECT_SIZE = 17 * MiB + 4321
#: A stream must come in chunks no larger than this (it streams; it does not
#: load the blob into memory).
MAX_CHUNK_SIZE = 8 * MiB
#: Size of the medium blob used for ranged reads: spans several 1 MiB reads.
RANGE_BLOB_SIZE = 2 * MiB + 777

__all__ = [
    "LARGE_OBJECT_SIZE",
    "MAX_CHUNK_SIZE",
    "CredentialLocker",
    "RecordStoreConformance",
    "StorageConformance",
    "new_package",
    "read_blob",
    "stage",
]


async def stage(storage: Storage, data: bytes) -> Path:
    """Write ``data`` to a fresh file in ``storage.staging_dir``, as the core does."""

    def write() -> Path:
        storage.staging_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=storage.staging_dir, prefix="conformance-", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Path(name)

    return await anyio.to_thread.run_sync(write)


async def read_chunks(storage: Storage, key: str, start: int = 0, end: int | None = None) -> list[bytes]:
    """Every chunk ``storage.open`` yields, the stream closed afterwards."""
    stream = storage.open(key, start, end)
    try:
        return [chunk async for chunk in stream]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def read_blob(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``start``..``end`` of a blob, joined."""
    return b"".join(await read_chunks(storage, key, start, end))


async def put_bytes(storage: Storage, key: str, data: bytes) -> None:
    """Stage ``data`` and put it under ``key``; remove what ``put`` left (as the core does)."""
    staged = await stage(storage, data)
    try:
        await storage.put(staged, key)
    finally:
        staged.unlink(missing_ok=True)


def _key() -> str:
    return new_blob_key("conformance", "default")


@pytest.mark.anyio
class StorageConformance:
    """The suite. Subclass it and provide a ``storage`` fixture (not started).

    The suite's own ``store`` fixture starts that storage, hands it to each
    test and shuts it down afterwards. Each test uses fresh keys, so a storage
    may be shared between tests.
    """

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    def large_object_size(self) -> int:
        """Override to exceed your backend's multipart part size."""
        return LARGE_OBJECT_SIZE

    @pytest.fixture
    async def store(self, storage: Storage) -> AsyncIterator[Storage]:
        await storage.startup()
        try:
            yield storage
        finally:
            await storage.shutdown()

    # -- life cycle -----------------------------------------------------------

    async def test_startup_is_idempotent_and_check_passes(self, store: Storage) -> None:
        await store.startup()
        await store.check()
        assert isinstance(store.staging_dir, Path)
        assert store.staging_dir.is_dir()

    # -- put, read, exists, delete --------------------------------------------

    async def test_put_then_read_back(self, store: Storage) -> None:
        key, data = _key(), os.urandom(4096)
        await put_bytes(store, key, data)
        assert await store.exists(key)
        assert await read_blob(store, key) == data

    async def test_blob_does_not_depend_on_the_staged_file(self, store: Storage) -> None:
        """After ``put`` the core deletes the staged file; the blob must not change."""
        key, data = _key(), b"original bytes" * 100
        staged = await stage(store, data)
        await store.put(staged, key)
        if staged.exists():
            staged.write_bytes(b"scribbled over")
            staged.unlink()
        assert await read_blob(store, key) == data

    async def test_keys_hold_separate_blobs(self, store: Storage) -> None:
        first, second = _key(), _key()
        await put_bytes(store, first, b"first")
        await put_bytes(store, second, b"second")
        assert await read_blob(store, first) == b"first"
        assert await read_blob(store, second) == b"second"

    async def test_missing_key(self, store: Storage) -> None:
        key = _key()
        assert not await store.exists(key)
        with pytest.raises(BlobMissing):
            await read_blob(store, key)

    async def test_delete(self, store: Storage) -> None:
        key = _key()
        await put_bytes(store, key, b"to be deleted")
        await store.delete(key)
        assert not await store.exists(key)
        with pytest.raises(BlobMissing):
            await read_blob(store, key)

    async def test_listing_shows_blobs_and_never_staging(self, store: Storage) -> None:
        """``iter_blobs`` (optional) lists put blobs with their sizes, not staged files."""
        key, data = _key(), b"listed" * 50
        await put_bytes(store, key, data)
        in_flight = await stage(store, b"an upload still arriving")
        try:
            listed = {info.key: info async for info in store.iter_blobs()}
        except NotImplementedError:
            pytest.skip(f"{type(store).__name__} does not list its blobs")
        finally:
            in_flight.unlink(missing_ok=True)
        assert listed[key].size == len(data)
        assert listed[key].modified.tzinfo is not None
        assert all(in_flight.name not in listed_key for listed_key in listed)
        await store.delete(key)
        assert key not in {info.key async for info in store.iter_blobs()}

    async def test_delete_of_a_missing_key_is_not_an_error(self, store: Storage) -> None:
        key = _key()
        await store.delete(key)
        assert not await store.exists(key)

    # -- ranges -----------------------------------------------------------------

    @pytest.mark.parametrize(
        ("start", "end"),
        [
            (0, None),
            (0, 1),
            (0, 10),
            (10, 20),
            (5, None),
            (MiB - 1, MiB + 1),  # across the usual 1 MiB read size
            (RANGE_BLOB_SIZE - 1, None),  # the last byte
            (RANGE_BLOB_SIZE - 100, RANGE_BLOB_SIZE),  # to the exact end
            (123, RANGE_BLOB_SIZE - 456),
        ],
    )
    async def test_range_reads(self, store: Storage, start: int, end: int | None) -> None:
        key, data = _key(), os.urandom(RANGE_BLOB_SIZE)
        await put_bytes(store, key, data)
        assert await read_blob(store, key, start, end) == data[start:end]

    @pytest.mark.parametrize(("start", "end"), [(10, 10), (100, None), (150, None)])
    async def test_empty_ranges_read_nothing(self, store: Storage, start: int, end: int | None) -> None:
        """An empty range, or a start at or past the end (a 100-byte blob), reads b""."""
        key = _key()
        await put_bytes(store, key, bytes(range(100)))
        assert await read_blob(store, key, start, end) == b""

    async def test_a_blob_streams_in_bounded_chunks(self, store: Storage) -> None:
        """A download holds one chunk at a time: no chunk is larger than
        :data:`registry.transfers.MAX_DOWNLOAD_CHUNK`, however large the blob."""
        key, data = _key(), os.urandom(3 * MAX_DOWNLOAD_CHUNK + 17)
        await put_bytes(store, key, data)
        chunks = await read_chunks(store, key)
        assert b"".join(chunks) == data
        assert max(len(chunk) for chunk in chunks) <= MAX_DOWNLOAD_CHUNK

    async def test_a_stream_closed_early_releases_cleanly(self, store: Storage) -> None:
        key, data = _key(), os.urandom(RANGE_BLOB_SIZE)
        await put_bytes(store, key, data)
        stream = store.open(key)
        first = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        assert data.startswith(first) and first
        assert await read_blob(store, key, 1, 3) == data[1:3]

    # -- the core's overwrite: a fresh key, then the old one deleted --------------

    async def test_overwrite_via_new_key(self, store: Storage) -> None:
        old_key, new_key = _key(), _key()
        await put_bytes(store, old_key, b"version one")
        await put_bytes(store, new_key, b"version two, longer")
        assert await read_blob(store, old_key) == b"version one"  # untouched until deleted
        await store.delete(old_key)
        assert await read_blob(store, new_key) == b"version two, longer"
        assert not await store.exists(old_key)

    # -- atomicity ------------------------------------------------------------------

    async def test_a_failed_put_leaves_nothing_under_the_key(self, store: Storage) -> None:
        key = _key()
        vanished = store.staging_dir / "never-written.part"
        with pytest.raises(ObjectStoreException):
            await store.put(vanished, key)
        assert not await store.exists(key)
        with pytest.raises(BlobMissing):
            await read_blob(store, key)

    # -- a large object -------------------------------------------------------------

    async def test_large_object(self, store: Storage, large_object_size: int) -> None:
        key, data = _key(), os.urandom(large_object_size)
        await put_bytes(store, key, data)
        assert await store.exists(key)
        chunks = await read_chunks(store, key)
        assert max(len(chunk) for chunk in chunks) <= MAX_CHUNK_SIZE, "open() must stream"
        assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
        middle = large_object_size // 2
        assert await read_blob(store, key, middle - 3, middle + 5) == data[middle - 3:middle + 5]
        tail = large_object_size - MiB - 17
        assert await read_blob(store, key, tail) == data[tail:]


# -- record stores ----------------------------------------------------------------

StoreFactory = Callable[[], RecordStore]
#: ``lock(store, credential_id)``: a context that holds, from another
#: connection, the lock a write to that credential's row would wait for
CredentialLocker = Callable[[RecordStore, int], AbstractContextManager[None]]
#: how long a lock holder keeps the lock when the store under test waits for
#: it: long enough that a waiting store writes only after the release (and
#: so fails the test), not a measure of speed
LOCK_HOLD_SECONDS = 5.0


def new_package(version: str = "1.0.0", *, code: str = "app", module: str = "default", salt: str = "",
                size: int = 100, name: str | None = None, operator: str = "alice") -> NewPackage:
    """A package record to commit: distinct ``salt`` means distinct bytes (sha256)."""
    return NewPackage(
        code=code, module=module, version=version,
        package_name=name or f"{module}-{version}.tar.gz", package_size=size,
        sha256=hashlib.sha256(f"{code}/{module}/{version}/{salt}".encode()).hexdigest(),
        blob_key=new_blob_key(code, module), format="tar.gz", file_name="", origin="upload",
        source_url="", operator=operator,
    )


def commit_in_process(factory: StoreFactory, new: NewPackage) -> str:
    """Commit ``new`` through a store built by ``factory`` in this (child) process;
    returns the outcome's value, or the error code it raised."""
    store = factory()
    try:
        store.migrate()
        return store.commit(new, allow_overwrite=False).outcome.value
    except RegistryError as exc:
        return exc.code
    finally:
        store.close()


def migrate_in_process(factory: StoreFactory) -> int:
    """Migrate a store built by ``factory`` in this (child) process; how many migrations it applied."""
    store = factory()
    try:
        return len(store.migrate())
    finally:
        store.close()


def counted_by_records(store: RecordStore) -> dict[tuple[str, str], tuple[int, int]]:
    """Every module's (live, all) records, counted one record at a time
    (``page_by_id``): what the store's counters must say."""
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    after = 0
    while page := store.page_by_id(after, 500):
        for record in page:
            live, every = counts.get((record.code, record.module), (0, 0))
            counts[(record.code, record.module)] = (live + (not record.is_deleted), every + 1)
        after = page[-1].id
    return counts


def assert_counts_exact(store: RecordStore, absent: tuple[str, str] = ("app", "nothing")) -> None:
    """The store's counts (a listing's ``count`` with and without deleted
    records, the applications and modules summaries) equal the records'."""
    truth = counted_by_records(store)
    for (code, module), (live, every) in truth.items():
        assert store.list(code, module, limit=1)[0] == live, (code, module)
        assert store.list(code, module, limit=1, include_deleted=True)[0] == every, (code, module)
    if absent not in truth:
        assert store.list(*absent)[0] == 0 and store.list(*absent, include_deleted=True)[0] == 0
    codes = sorted({code for code, _ in truth})
    count, apps = store.applications(limit=1000)
    assert count == len(codes) and [a.name for a in apps] == codes
    some = frozenset(codes[::2]) | {"no-such-app"}
    assert store.applications(apps=some, limit=1)[0] == len(some) - 1
    assert store.applications(search_term="p", limit=1)[0] == sum("p" in code for code in codes)
    for app in apps:
        mine = {module: counts for (code, module), counts in truth.items() if code == app.name}
        assert (app.modules, app.packages) == (len(mine), sum(live for live, _ in mine.values())), app
        assert [(m.name, m.packages) for m in store.modules(app.name)] == [
            (module, mine[module][0]) for module in sorted(mine)]


def churn(store: RecordStore, seed: int, steps: int = 40) -> None:
    """Uploads, overwrites, deletes and restores of a few shared versions in
    two modules, chosen by ``seed``; the refusals the rules give are expected."""
    chooser = random.Random(seed)
    for step in range(steps):
        code = chooser.choice(("app", "app", "other"))
        module = chooser.choice(("default", "web"))
        version = f"1.{chooser.randrange(6)}.0"
        action = chooser.randrange(4)
        try:
            if action <= 1:
                store.commit(new_package(version, code=code, module=module, salt=f"{seed}-{step}" if action else ""),
                             allow_overwrite=chooser.random() < 0.5)
                continue
            record = store.find_version(code, module, version)
            if record is None:
                continue
            if action == 2:
                store.soft_delete(code, module, record.id)
            else:
                store.restore(code, module, record.id)
        except (PackageAlreadyExists, PackageNotFound):
            pass


def churn_in_process(factory: StoreFactory, seed: int, barrier: Any) -> None:
    """:func:`churn` through a store built by ``factory`` in this (child) process."""
    store = factory()
    try:
        store.migrate()
        barrier.wait()
        churn(store, seed)
    finally:
        store.close()


def new_job(job_id: str, *, code: str = "app", module: str = "default") -> NewJob:
    """A background job to queue."""
    return NewJob(id=job_id, code=code, module=module, package_url="http://example.com/x.tar.gz",
                  request={"version": None, "allow_overwrite": False, "sha256": None, "sealed_url": "x"},
                  operator="alice")


def new_upload(upload_id: str, *, expires_in: float = 60.0, length: int = 100) -> NewUpload:
    """A resumable upload to create, expiring ``expires_in`` seconds from now."""
    return NewUpload(id=upload_id, code="app", module="default", length=length,
                     metadata={"filename": "a.tar.gz", "version": None}, operator="alice",
                     storage_state={"segments": []}, expires=utc_now() + timedelta(seconds=expires_in))


def dead_holder() -> str:
    """The lease-holder name of a process of this host that has exited."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(make_holder)


def new_event(event_id: str, *targets: str) -> NewOutboxEvent:
    """A webhook event to queue for ``targets``."""
    return NewOutboxEvent(event_id=event_id, targets=targets, payload={"event": "stored", "id": 1, "note": "é"})


def claim_deliveries_in_process(factory: StoreFactory, barrier: Any, targets: list[str]) -> list[int]:
    """Claim deliveries through a store built by ``factory`` in this (child)
    process, after every racer reached ``barrier``; the ids it got."""
    store = factory()
    try:
        store.migrate()
        holder = make_holder()
        barrier.wait()
        return [delivery.id for delivery in store.claim_deliveries(holder, 60, targets)]
    finally:
        store.close()


def claim_in_process(factory: StoreFactory, barrier: Any) -> str | None:
    """Claim a job through a store built by ``factory`` in this (child) process,
    after every racer reached ``barrier``; the job's id, or None."""
    store = factory()
    try:
        store.migrate()
        holder = make_holder()
        barrier.wait()
        job = store.claim_job(holder, 60)
        return None if job is None else job.id
    finally:
        store.close()


class RecordStoreConformance:
    """The record-store suite. Subclass it and provide ``make_store``: a
    picklable callable with no arguments that returns a new, not yet migrated
    store on one empty database (called again in child processes and for a
    second instance, which must see the same data)::

        class TestMyStore(RecordStoreConformance):
            @pytest.fixture
            def make_store(self, tmp_path):
                return functools.partial(MyStore, make_empty_database())
    """

    #: commits racing for one version, in threads and in processes
    RACERS = 8

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> Iterator[RecordStore]:
        store = make_store()
        store.migrate()
        yield store
        store.close()

    @pytest.fixture
    def lock_credential(self) -> CredentialLocker:
        """Override to check that noting a credential's use never waits for a lock."""
        pytest.skip("the store's tests provide no lock_credential fixture")

    # -- life cycle ------------------------------------------------------------------

    def test_migrations_apply_once(self, make_store: StoreFactory) -> None:
        fresh = make_store()
        try:
            pending = fresh.pending_migrations()
            assert pending, "an empty database has every migration pending"
            assert [m.number for m in pending] == list(range(1, len(pending) + 1))
            assert fresh.migrate() == pending
            assert fresh.pending_migrations() == []
            fresh.check()
        finally:
            fresh.close()
        again = make_store()
        try:
            assert again.migrate() == []
            assert again.is_empty()
        finally:
            again.close()

    def test_instances_starting_together_migrate_once(self, make_store: StoreFactory) -> None:
        context = multiprocessing.get_context("spawn")
        with context.Pool(4) as pool:
            applied = pool.map(migrate_in_process, [make_store] * 4)
        *none, one = sorted(applied)
        assert none == [0, 0, 0] and one > 0
        store = make_store()
        try:
            assert store.pending_migrations() == []
        finally:
            store.close()

    # -- the versioning rules ------------------------------------------------------------

    def test_new_version_is_created(self, store: RecordStore) -> None:
        new = new_package()
        result = store.commit(new, allow_overwrite=False)
        assert result.outcome is Outcome.CREATED and result.unused_blob_key is None
        record = result.record
        assert (record.code, record.module, record.version, record.sha256, record.blob_key) == (
            new.code, new.module, new.version, new.sha256, new.blob_key)
        assert not record.is_deleted and not record.revived and record.deleted_at is None
        assert record.created.tzinfo is not None and record.created == record.updated
        assert abs((utc_now() - record.created).total_seconds()) < 3600
        assert store.get("app", "default", record.id) == record
        assert store.find_version("app", "default", "1.0.0") == record
        assert store.get("app", "other", record.id) is None
        assert store.find_version("app", "default", "9.9.9") is None

    def test_identical_upload_changes_nothing(self, store: RecordStore) -> None:
        first = store.commit(new_package(), allow_overwrite=False).record
        again = new_package()
        result = store.commit(again, allow_overwrite=False)
        assert result.outcome is Outcome.IDENTICAL
        assert result.record == first
        assert result.unused_blob_key == again.blob_key

    def test_other_bytes_conflict_without_overwrite(self, store: RecordStore) -> None:
        first = store.commit(new_package(), allow_overwrite=False).record
        with pytest.raises(PackageAlreadyExists) as caught:
            store.commit(new_package(salt="b"), allow_overwrite=False)
        assert caught.value.data == {"sha256_signature": first.sha256}
        assert store.get("app", "default", first.id) == first

    def test_overwrite_replaces_bytes_and_keeps_the_id(self, store: RecordStore) -> None:
        first = store.commit(new_package(), allow_overwrite=False).record
        other = new_package(salt="b", size=200)
        result = store.commit(other, allow_overwrite=True)
        assert result.outcome is Outcome.OVERWRITTEN
        assert result.unused_blob_key == first.blob_key
        assert result.record.id == first.id
        assert (result.record.sha256, result.record.blob_key, result.record.package_size) == (
            other.sha256, other.blob_key, 200)
        assert result.record.created == first.created and result.record.updated >= first.updated

    def test_delete_then_upload_revives_the_same_id(self, store: RecordStore) -> None:
        first = store.commit(new_package(), allow_overwrite=False).record
        deleted, changed = store.soft_delete("app", "default", first.id)
        assert changed and deleted.is_deleted and deleted.deleted_at is not None
        assert store.soft_delete("app", "default", first.id) == (deleted, False)
        revived = store.commit(new_package(salt="b"), allow_overwrite=False)
        assert revived.outcome is Outcome.REVIVED and revived.unused_blob_key == first.blob_key
        assert revived.record.id == first.id and not revived.record.is_deleted and revived.record.revived
        assert revived.record.deleted_at is None

    def test_restore_undoes_a_delete_once(self, store: RecordStore) -> None:
        first = store.commit(new_package(), allow_overwrite=False).record
        store.soft_delete("app", "default", first.id)
        restored, changed = store.restore("app", "default", first.id)
        assert changed and not restored.is_deleted and restored.deleted_at is None
        assert restored.sha256 == first.sha256 and restored.blob_key == first.blob_key
        again, changed = store.restore("app", "default", first.id)
        assert not changed and again == restored

    def test_restore_after_re_upload_conflicts(self, store: RecordStore) -> None:
        first = store.commit(new_package(), allow_overwrite=False).record
        store.soft_delete("app", "default", first.id)
        newer = store.commit(new_package(salt="b"), allow_overwrite=False).record
        with pytest.raises(PackageAlreadyExists):
            store.restore("app", "default", first.id)
        assert store.get("app", "default", first.id) == newer

    def test_missing_ids_are_not_found(self, store: RecordStore) -> None:
        with pytest.raises(PackageNotFound):
            store.soft_delete("app", "default", 424242)
        with pytest.raises(PackageNotFound):
            store.restore("app", "default", 424242)
        record = store.commit(new_package(), allow_overwrite=False).record
        with pytest.raises(PackageNotFound):
            store.soft_delete("app", "elsewhere", record.id)

    def test_broken_record_is_healed_by_its_own_bytes(self, store: RecordStore) -> None:
        first = store.commit(new_package(), allow_overwrite=False).record
        assert store.set_broken(first.id, first.blob_key, "sha256 mismatch")
        assert not store.set_broken(first.id, "app/default/" + "0" * 32, None)
        assert store.get("app", "default", first.id).broken == "sha256 mismatch"  # type: ignore[union-attr]
        again = new_package()
        result = store.commit(again, allow_overwrite=False)
        assert result.outcome is Outcome.OVERWRITTEN and result.unused_blob_key == first.blob_key
        assert result.record.broken is None and result.record.blob_key == again.blob_key

    # -- listing -----------------------------------------------------------------------------

    def test_list_orders_filters_and_pages(self, store: RecordStore) -> None:
        sizes = {"1.0.0": 300, "1.1.0": 100, "2.0.0": 200, "0.9.0": 100}
        ids = {v: store.commit(new_package(v, size=s), allow_overwrite=False).record.id for v, s in sizes.items()}
        store.commit(new_package("9.9.9", module="other"), allow_overwrite=False)
        count, page = store.list("app", "default")
        assert count == 4 and [r.version for r in page] == ["0.9.0", "2.0.0", "1.1.0", "1.0.0"]
        assert [r.version for r in store.list("app", "default", order_by=Order.CREATED)[1]] == list(sizes)
        assert [r.version for r in store.list("app", "default", order_by=Order.VERSION)[1]] == sorted(sizes)
        assert [r.version for r in store.list("app", "default", order_by=Order.VERSION_DESC)[1]] == sorted(
            sizes, reverse=True)
        # equal sizes: ties broken by id, in the order's direction
        assert [r.version for r in store.list("app", "default", order_by=Order.PACKAGE_SIZE)[1]] == [
            "1.1.0", "0.9.0", "2.0.0", "1.0.0"]
        assert [r.version for r in store.list("app", "default", order_by=Order.PACKAGE_SIZE_DESC)[1]] == [
            "1.0.0", "2.0.0", "0.9.0", "1.1.0"]
        store.soft_delete("app", "default", ids["1.1.0"])
        assert store.list("app", "default")[0] == 3
        count, page = store.list("app", "default", include_deleted=True, order_by=Order.CREATED)
        assert count == 4 and [r.is_deleted for r in page] == [False, True, False, False]
        count, page = store.list("app", "default", order_by=Order.CREATED, limit=2, offset=1)
        assert count == 3 and [r.version for r in page] == ["2.0.0", "0.9.0"]
        assert store.list("app", "default", offset=10) == (3, [])
        assert store.list("app", "nothing") == (0, [])

    def test_search_is_a_literal_substring(self, store: RecordStore) -> None:
        for version, name in [("1.0.0", "Web-1.tar.gz"), ("1.0.1", "web_100%.tar.gz"), ("2.0.0", "api.tar.gz")]:
            store.commit(new_package(version, name=name), allow_overwrite=False)

        def found(term: str) -> list[str]:
            return sorted(r.version for r in store.list("app", "default", search_term=term)[1])

        assert found("1.0") == ["1.0.0", "1.0.1"]
        assert found("WEB") == ["1.0.0", "1.0.1"]
        assert found("100%") == ["1.0.1"]
        assert found("_") == ["1.0.1"]
        assert found("%") == ["1.0.1"]
        assert found("\\") == []
        assert store.list("app", "default", search_term="api")[0] == 1

    def test_search_with_a_nul_finds_nothing(self, store: RecordStore) -> None:
        """No stored name holds NUL (they are made printable at ingest), and a
        term with one (a client's ``%00``) finds nothing rather than failing in
        the database's query syntax or driver."""
        store.commit(new_package("1.0.0", name="web.tar.gz"), allow_overwrite=False)
        for term in ("\x00", "web\x00", "we\x00b.tar"):
            assert store.list("app", "default", search_term=term) == (0, [])
            assert store.list("app", "default", search_term=term, include_deleted=True) == (0, [])
            assert store.applications(search_term=term) == (0, [])
        assert store.list("app", "default", search_term="web")[0] == 1

    def test_keyset_pages_walk_every_order_both_ways(self, store: RecordStore) -> None:
        # equal sizes and versions that sort apart from their ids: ties must break by id
        for n in range(7):
            store.commit(new_package(f"{n % 3}.{n}.0", size=100 + n % 2), allow_overwrite=False)
        store.soft_delete("app", "default", store.find_version("app", "default", "1.1.0").id)  # type: ignore[union-attr]
        for order in Order:
            for include_deleted in (False, True):
                count, whole = store.list("app", "default", order_by=order, include_deleted=include_deleted)
                assert count == len(whole) == (7 if include_deleted else 6)
                forward: list[Record] = []
                after: PageKey | None = None
                while True:
                    total, page = store.list("app", "default", order_by=order, limit=2, after=after,
                                             include_deleted=include_deleted)
                    assert total == count
                    if not page:
                        break
                    forward += page
                    after = PageKey.of(page[-1], order)
                assert [r.id for r in forward] == [r.id for r in whole], order
                backward: list[Record] = []
                before: PageKey | None = None
                while True:
                    _, page = store.list("app", "default", order_by=order, limit=2, after=before,
                                         backward=True, include_deleted=include_deleted)
                    if not page:
                        break
                    backward = page + backward
                    before = PageKey.of(page[0], order)
                assert [r.id for r in backward] == [r.id for r in whole], order

    def test_keyset_pages_see_each_record_once_while_the_module_changes(self, store: RecordStore) -> None:
        for n in range(20):
            store.commit(new_package(f"1.{n:02d}.0", size=n % 4), allow_overwrite=False)
        for order in Order:
            _, start = store.list("app", "default", order_by=order)
            present = {r.id for r in start}
            seen: list[int] = []
            after: PageKey | None = None
            step = 0
            while True:
                _, page = store.list("app", "default", order_by=order, limit=3, after=after)
                if not page:
                    break
                seen += [r.id for r in page]
                after = PageKey.of(page[-1], order)
                # between pages (the first few): a new version, and a record not yet seen goes away
                step += 1
                if step <= 4:
                    store.commit(new_package(f"9.{order.value}.{step}", size=step % 4), allow_overwrite=False)
                unseen = sorted(present - set(seen))
                if unseen:
                    store.soft_delete("app", "default", unseen[len(unseen) // 2])
                    present.discard(unseen[len(unseen) // 2])
            assert len(seen) == len(set(seen)), order
            assert present <= set(seen), order

    def test_search_finds_the_same_through_its_index(self, store: RecordStore) -> None:
        for n in range(30):
            store.commit(new_package(f"3.{n}.0", name=f"Service-{n:03d}.tar.gz"), allow_overwrite=False)
        count, page = store.list("app", "default", search_term="service-01", order_by=Order.VERSION, limit=4)
        assert count == 10 and [r.version for r in page] == ["3.10.0", "3.11.0", "3.12.0", "3.13.0"]
        count, page = store.list("app", "default", search_term="service-01", order_by=Order.VERSION,
                                 limit=4, offset=8)
        assert count == 10 and [r.version for r in page] == ["3.18.0", "3.19.0"]
        assert store.list("app", "default", search_term="service-01", offset=20) == (10, [])
        _, first = store.list("app", "default", search_term="service-01", order_by=Order.VERSION, limit=4)
        count, page = store.list("app", "default", search_term="service-01", order_by=Order.VERSION, limit=4,
                                 after=PageKey.of(first[-1], Order.VERSION))
        assert count == 10 and [r.version for r in page] == ["3.14.0", "3.15.0", "3.16.0", "3.17.0"]
        store.soft_delete("app", "default", first[0].id)
        assert store.list("app", "default", search_term="SERVICE-01")[0] == 9
        assert store.list("app", "default", search_term="service-01", include_deleted=True)[0] == 10
        assert store.list("app", "default", search_term='e-0"')[0] == 0
        assert store.list("app", "default", search_term="3.2")[0] == 11  # 3.2.0, 3.20.0 … 3.29.0
        assert store.list("app", "nothing", search_term="service")[0] == 0

    def test_import_records_in_a_batch(self, store: RecordStore) -> None:
        first = store.commit(new_package("1.0.0"), allow_overwrite=False).record
        batch = [replace(first, id=first.id + n, version=f"2.{n}.0", package_name=f"batch-{n}.tar.gz",
                         blob_key=new_blob_key("app", "default")) for n in range(1, 6)]
        assert store.import_records([*batch, first]) == 5  # the existing id is left alone
        assert store.import_records([]) == 0
        assert store.list("app", "default")[0] == 6
        assert store.list("app", "default", search_term="batch-3")[0] == 1
        assert store.commit(new_package("3.0.0"), allow_overwrite=False).record.id > batch[-1].id

    # -- maintenance queries -------------------------------------------------------------------

    def test_maintenance_queries(self, store: RecordStore) -> None:
        records = [store.commit(new_package(f"1.{n}.0", size=10 * (n + 1)), allow_overwrite=False).record
                   for n in range(3)]
        store.commit(new_package("1.0.0", module="two"), allow_overwrite=False)
        assert store.all_blob_keys() == {r.blob_key for r in records} | {
            store.find_version("app", "two", "1.0.0").blob_key}  # type: ignore[union-attr]
        assert store.blob_totals() == (4, 10 + 20 + 30 + 100)
        assert [r.id for r in store.page_by_id(0, 2)] == [records[0].id, records[1].id]
        assert [r.id for r in store.page_by_id(records[1].id, 10)] == [records[2].id, records[2].id + 1]
        assert store.modules_with_more_live_than(2) == [("app", "default")]
        assert store.modules_with_more_live_than(0) == [("app", "default"), ("app", "two")]
        deleted, _ = store.soft_delete("app", "default", records[0].id)
        assert deleted.deleted_at is not None
        assert store.purgeable(deleted.deleted_at - timedelta(seconds=1)) == []
        assert store.purgeable(utc_now() + timedelta(seconds=1)) == [deleted]
        assert store.mark_purged(deleted)
        assert not store.mark_purged(deleted)
        purged = store.get("app", "default", deleted.id)
        assert purged is not None and purged.purged_at is not None
        assert not store.is_blob_referenced(deleted.blob_key)
        assert store.is_blob_referenced(records[1].blob_key)
        assert deleted.blob_key not in store.all_blob_keys()
        assert store.purgeable(utc_now() + timedelta(seconds=1)) == []
        with pytest.raises(PackageNotFound):
            store.restore("app", "default", deleted.id)
        # a record restored before gc marks it is never purged
        live = store.soft_delete("app", "default", records[1].id)[0]
        store.restore("app", "default", live.id)
        assert not store.mark_purged(live)

    # -- credentials and events -------------------------------------------------------------------

    def test_credentials(self, store: RecordStore) -> None:
        token = store.add_credential(NewCredential("token", "alice", "h1", "spr_abcd", ["b", "a", "a"], False))
        secret = store.add_credential(NewCredential("app_secret", "app1", "h2", "", [], True))
        store.add_credential(NewCredential("app_secret", "app1", "h3", "", [], False))
        assert token.apps == ["a", "b"] and token.created.tzinfo is not None and token.revoked_at is None
        assert store.credential_by_hash("token", "h1") == token
        assert store.credential_by_hash("app_secret", "h1") is None
        assert store.credential_by_hash("token", "nope") is None
        assert [c.secret_hash for c in store.credentials_named("app_secret", "app1")] == ["h2", "h3"]
        assert secret.read_only
        assert store.revoke_credential(token.id)
        assert not store.revoke_credential(token.id)
        assert not store.revoke_credential(424242)
        assert store.credential_by_hash("token", "h1") is None
        listed = store.list_credentials()
        assert [c.id for c in listed] == sorted(c.id for c in listed) and len(listed) == 3
        assert listed[0].revoked_at is not None

    def test_credential_expiry_and_last_used_are_kept(self, store: RecordStore) -> None:
        expires = utc_now() + timedelta(days=90)
        made = store.add_credential(NewCredential("token", "alice", "h1", "spr_abcd", [], False, expires_at=expires))
        forever = store.add_credential(NewCredential("app_secret", "app1", "h2", "abcd", [], False))
        assert made.expires_at == expires and made.last_used is None
        assert forever.expires_at is None and forever.last_used is None
        used = utc_now()
        assert store.note_credential_use(made.id, used, stale_before=used - timedelta(minutes=1))
        [listed, _] = store.list_credentials()
        assert listed.last_used == used and listed.expires_at == expires
        assert store.credential_by_hash("token", "h1") == listed
        # noted less than the interval ago (by any process): no second write
        assert not store.note_credential_use(made.id, used + timedelta(seconds=30), stale_before=used)
        assert store.list_credentials()[0].last_used == used
        later = used + timedelta(minutes=2)
        assert store.note_credential_use(made.id, later, stale_before=later - timedelta(minutes=1))
        assert store.list_credentials()[0].last_used == later
        assert store.list_credentials()[1].last_used is None, "only that credential was noted"

    def test_an_expired_credential_is_not_authenticated(self, store: RecordStore) -> None:
        credentials = CredentialStore(store)
        token = credentials.create_token("alice", [], False, expires_in=timedelta(0))  # expires at once
        secret = credentials.create_app_secret("app1", [], expires_in=timedelta(0))
        live = credentials.create_token("bob", [], False, expires_in=timedelta(days=1))
        with pytest.raises(Unauthenticated):
            authenticate(credentials, ("token", token))
        with pytest.raises(Unauthenticated):
            authenticate(credentials, ("app", "app1", secret))
        principal = authenticate(credentials, ("token", live))
        assert principal is not None and principal.operator == "bob"
        by_name = {c.name: c for c in store.list_credentials()}
        assert by_name["bob"].last_used is not None, "a successful authentication notes the use"
        assert by_name["alice"].last_used is None and by_name["app1"].last_used is None
        assert [info.status(utc_now()) for info in credentials.list()] == ["expired", "expired", "active"]

    def test_noting_a_use_never_waits_for_a_lock(self, store: RecordStore,
                                                 lock_credential: CredentialLocker) -> None:
        credential = store.add_credential(NewCredential("token", "alice", "h1", "spr_abcd", [], False))
        locked, returned = threading.Event(), threading.Event()

        def hold() -> None:
            with lock_credential(store, credential.id):
                locked.set()
                returned.wait(LOCK_HOLD_SECONDS)  # a store that waits writes after this

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert locked.wait(60), "the lock holder did not get the lock"
            now = utc_now()
            try:
                written = store.note_credential_use(credential.id, now, stale_before=now)
            except DatabaseUnavailable:
                written = False
        finally:
            returned.set()
            holder.join()
        assert written is False
        assert store.list_credentials()[0].last_used is None

    def test_events(self, store: RecordStore) -> None:
        assert store.recent_events() == []
        made = [store.add_event(AuditEvent(kind=kind, time=utc_now(), operator="carol", code=code, module="m",
                                           package_id=n, version="1.0.0", sha256="ab" * 32, package_size=5,
                                           payload={"event": kind, "n": n}))
                for n, (kind, code) in enumerate([("stored", "a"), ("deleted", "b"), ("restored", "a")])]
        assert [e.id for e in made] == sorted(e.id for e in made) and made[0].id > 0
        assert [e.kind for e in store.recent_events()] == ["restored", "deleted", "stored"]
        assert [e.kind for e in store.recent_events(code="a")] == ["restored", "stored"]
        assert [e.kind for e in store.recent_events(limit=1)] == ["restored"]
        assert store.recent_events(code="zzz") == []
        assert store.recent_events()[0].payload == {"event": "restored", "n": 2}
        assert store.page_events(made[0].id, 10) == made[1:]

    def test_events_added_together(self, store: RecordStore) -> None:
        first = store.add_event(AuditEvent(kind="stored", time=utc_now(), operator="a", code="app", module="m",
                                           package_id=1, version="1.0.0", sha256="ab" * 32, package_size=5,
                                           payload={"n": 0}))
        batch = [AuditEvent(kind="stored", time=utc_now(), operator="a", code="app", module="m", package_id=n,
                            version=f"1.{n}.0", sha256="cd" * 32, package_size=n, payload={"n": n})
                 for n in range(1, 6)]
        added = store.add_events(batch)
        assert [e.version for e in added] == [e.version for e in batch]  # in order, with their ids
        assert [e.id for e in added] == sorted(e.id for e in added) and added[0].id > first.id
        assert store.page_events(first.id, 10) == added
        assert store.add_events([]) == []

    def test_credential_by_id_is_live_only(self, store: RecordStore) -> None:
        token = store.add_credential(NewCredential("token", "alice", "h1", "spr_abcd", ["a"], True))
        other = store.add_credential(NewCredential("app_secret", "app1", "h2", "", [], False))
        assert store.credential_by_id(token.id) == token
        assert store.credential_by_id(other.id) == other
        assert store.credential_by_id(424242) is None
        assert store.revoke_credential(token.id)
        assert store.credential_by_id(token.id) is None, "a revoked credential ends its web sessions"
        assert store.credential_by_id(other.id) == other

    def test_package_events_are_one_records_oldest_first(self, store: RecordStore) -> None:
        def add(kind: str, package_id: int, code: str = "app", module: str = "default") -> AuditEvent:
            return store.add_event(AuditEvent(kind=kind, time=utc_now(), operator="dave", code=code, module=module,
                                              package_id=package_id, version="1.0.0", sha256="cd" * 32,
                                              package_size=7))

        mine = [add("stored", 1), add("overwritten", 1)]
        add("stored", 2)
        add("stored", 1, module="other")  # same id, other module: not this record's
        add("stored", 1, code="else")
        mine += [add("deleted", 1), add("restored", 1)]
        assert store.package_events("app", "default", 1) == mine
        assert [e.kind for e in store.package_events("app", "default", 1, limit=2)] == ["deleted", "restored"]
        assert store.package_events("app", "default", 99) == []

    # -- browsing ---------------------------------------------------------------------------------

    def test_applications_and_modules_summaries(self, store: RecordStore) -> None:
        def commit(code: str, module: str, version: str) -> int:
            return store.commit(new_package(version, code=code, module=module), allow_overwrite=False).record.id

        oldest_a = commit("a", "default", "1.0.0")
        newest_a = commit("a", "default", "1.1.0")
        web = commit("a", "web", "1.0.0")
        gone = commit("b", "default", "1.0.0")
        store.soft_delete("b", "default", gone)
        commit("c_x", "default", "1.0.0")
        commit("cax", "default", "1.0.0")

        def updated(code: str, module: str, package_id: int) -> object:
            record = store.get(code, module, package_id)
            assert record is not None
            return record.updated

        count, apps = store.applications()
        assert count == 4 and [a.name for a in apps] == ["a", "b", "c_x", "cax"]
        a, b = apps[0], apps[1]
        assert (a.modules, a.packages) == (2, 3)
        assert a.last_uploaded is not None and a.last_uploaded.tzinfo is not None
        assert a.last_uploaded == updated("a", "web", web)
        # an application whose packages are all deleted is listed, with none live
        assert b == Summary("b", 1, 0, None)
        # scope: only the credential's codes, even unknown ones
        assert store.applications(apps=frozenset({"b", "zzz"})) == (1, [b])
        # search: a literal substring (``_`` and ``%`` match themselves)
        assert [x.name for x in store.applications(search_term="_")[1]] == ["c_x"]
        assert store.applications(search_term="%") == (0, [])
        assert [x.name for x in store.applications(search_term="C", apps=frozenset({"a", "cax"}))[1]] == ["cax"]
        # pages: the count is of every match
        assert store.applications(limit=2, offset=1) == (4, [b, apps[2]])
        assert store.applications(offset=10) == (4, [])

        modules = store.modules("a")
        assert [(m.name, m.modules, m.packages) for m in modules] == [("default", 0, 2), ("web", 0, 1)]
        assert modules[0].last_uploaded == updated("a", "default", newest_a)
        store.soft_delete("a", "default", newest_a)
        after = store.modules("a")[0]
        # a deleted package is no one's last upload
        assert (after.packages, after.last_uploaded) == (1, updated("a", "default", oldest_a))
        assert store.modules("b") == [Summary("default", 0, 0, None)]
        assert store.modules("nope") == []

    def test_details_are_kept_with_the_record(self, store: RecordStore) -> None:
        first = PackageDetails("appVersion: 1.0.0\n名字: 演示\n", False, ["app_desc.yaml", "src/主.py"], 2)
        record = store.commit(replace(new_package(), details=first), allow_overwrite=False).record
        assert store.package_details(record.id) == first
        assert store.package_details(424242) is None
        # identical bytes change nothing, details included
        store.commit(replace(new_package(), details=PackageDetails(None)), allow_overwrite=False)
        assert store.package_details(record.id) == first
        # an overwrite replaces them, with none when none were captured
        second = PackageDetails(None, False, ["main.py"], 1)
        store.commit(replace(new_package(salt="b"), details=second), allow_overwrite=True)
        assert store.package_details(record.id) == second
        store.commit(new_package(salt="c"), allow_overwrite=True)
        assert store.package_details(record.id) is None
        # a revive replaces them too
        store.soft_delete("app", "default", record.id)
        third = PackageDetails("x" * 70_000, True, [f"f{n}" for n in range(200)], 5000)
        revived = store.commit(replace(new_package(salt="d"), details=third), allow_overwrite=False)
        assert revived.outcome is Outcome.REVIVED and store.package_details(record.id) == third
        # a commit that fails keeps nothing of its details
        with pytest.raises(PackageAlreadyExists):
            store.commit(replace(new_package(salt="e"), details=first), allow_overwrite=False)
        assert store.package_details(record.id) == third
        other = store.commit(new_package("2.0.0"), allow_overwrite=False).record
        assert store.package_details(other.id) is None
        assert store.page_details(0, 10) == [(record.id, third)]
        assert store.page_details(record.id, 10) == []

    def test_import_keeps_ids_and_is_idempotent(self, store: RecordStore, make_store: StoreFactory) -> None:
        record = store.commit(new_package(), allow_overwrite=False).record
        credential = store.add_credential(NewCredential("token", "alice", "h1", "spr_abcd", [], False))
        event = store.add_event(AuditEvent(kind="stored", time=utc_now(), operator="a", code="app", module="m",
                                           package_id=record.id, version="1", sha256="0" * 64, package_size=1))
        assert not store.is_empty()
        assert store.import_records([record]) == 0
        assert store.import_credentials([credential]) == 0
        assert store.import_events([event]) == 0
        assert store.import_records([]) == 0
        moved = replace(record, id=record.id + 100, version="7.0.0", blob_key=new_blob_key("app", "default"))
        assert store.import_records([moved, record]) == 1
        assert store.get("app", "default", moved.id) == moved
        details = PackageDetails("appVersion: 7.0.0\n", False, ["app_desc.yaml"], 1)
        assert store.import_details(moved.id, details)
        assert not store.import_details(moved.id, PackageDetails(None))
        assert store.package_details(moved.id) == details
        assert store.page_details(0, 10) == [(moved.id, details)]
        after = store.commit(new_package("8.0.0"), allow_overwrite=False).record
        assert after.id > moved.id, "new ids continue after imported ones"
        used = utc_now()
        copied = replace(credential, id=credential.id + 100, secret_hash="h9", last_used=used,
                         expires_at=used + timedelta(days=1))
        assert store.import_credentials([copied]) == 1
        assert store.list_credentials()[-1] == copied, "expiry and last use are copied too"


    # -- per-module counts ----------------------------------------------------------------------

    def test_counts_follow_every_versioning_rule(self, store: RecordStore) -> None:
        assert_counts_exact(store)
        assert store.applications() == (0, [])
        one = store.commit(new_package("1.0.0"), allow_overwrite=False).record
        two = store.commit(new_package("2.0.0"), allow_overwrite=False).record
        assert_counts_exact(store)
        assert store.list("app", "default")[0] == 2
        store.commit(new_package("1.0.0"), allow_overwrite=False)  # identical
        with pytest.raises(PackageAlreadyExists):
            store.commit(new_package("1.0.0", salt="b"), allow_overwrite=False)
        store.commit(new_package("1.0.0", salt="c"), allow_overwrite=True)  # overwritten
        assert_counts_exact(store)
        assert store.list("app", "default")[0] == 2
        store.soft_delete("app", "default", one.id)
        store.soft_delete("app", "default", one.id)  # already deleted: no change
        assert_counts_exact(store)
        assert (store.list("app", "default")[0], store.list("app", "default", include_deleted=True)[0]) == (1, 2)
        store.restore("app", "default", one.id)
        store.restore("app", "default", one.id)  # already live: no change
        assert_counts_exact(store)
        assert store.list("app", "default")[0] == 2
        store.soft_delete("app", "default", two.id)
        assert store.commit(new_package("2.0.0", salt="d"), allow_overwrite=False).outcome is Outcome.REVIVED
        with pytest.raises(PackageAlreadyExists):
            store.restore("app", "default", two.id)
        assert_counts_exact(store)
        assert store.list("app", "default")[0] == 2
        # a purged record is still a deleted one: shown with the deleted ones
        gone, _ = store.soft_delete("app", "default", one.id)
        assert store.mark_purged(gone)
        assert store.set_broken(two.id, store.get("app", "default", two.id).blob_key, "bad")  # type: ignore[union-attr]
        assert_counts_exact(store)
        assert (store.list("app", "default")[0], store.list("app", "default", include_deleted=True)[0]) == (1, 2)
        # other modules and applications keep their own counts
        store.commit(new_package("1.0.0", module="web"), allow_overwrite=False)
        store.commit(new_package("1.0.0", code="other"), allow_overwrite=False)
        assert_counts_exact(store)
        # imports count what they insert, deleted records as deleted, skipped ids not at all
        base = max(r.id for r in store.page_by_id(0, 100))
        template = store.get("app", "web", store.find_version("app", "web", "1.0.0").id)  # type: ignore[union-attr]
        assert template is not None
        batch = [replace(template, id=base + n, version=f"5.{n}.0", module="imported",
                         blob_key=new_blob_key("app", "imported"), is_deleted=n % 3 == 0,
                         deleted_at=utc_now() if n % 3 == 0 else None) for n in range(1, 8)]
        assert store.import_records([*batch, template]) == 7
        assert store.import_records(batch) == 0
        assert_counts_exact(store)
        assert (store.list("app", "imported")[0], store.list("app", "imported", include_deleted=True)[0]) == (5, 7)

    def test_counts_stay_exact_under_racing_threads(self, store: RecordStore) -> None:
        barrier = threading.Barrier(self.RACERS)

        def run(seed: int) -> None:
            barrier.wait()
            churn(store, seed)

        with ThreadPoolExecutor(self.RACERS) as pool:
            list(pool.map(run, range(self.RACERS)))
        assert counted_by_records(store), "the churn stored something"
        assert_counts_exact(store)

    def test_counts_stay_exact_under_racing_processes(self, store: RecordStore, make_store: StoreFactory) -> None:
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager:
            barrier = manager.Barrier(4)
            with context.Pool(4) as pool:
                pool.starmap(churn_in_process, [(make_store, 100 + n, barrier) for n in range(4)])
        assert counted_by_records(store)
        assert_counts_exact(store)

    def test_counts_survive_a_backup_and_its_restore(self, store: RecordStore, tmp_path: Path) -> None:
        churn(store, 7)
        before = counted_by_records(store)
        folder = tmp_path / "counts-backup"
        folder.mkdir()
        try:
            copy = store.backup_to(folder)
        except BackupUnsupported:
            pytest.skip("the store is backed up by the database's own tools")
        try:
            assert counted_by_records(copy) == before
            assert_counts_exact(copy)
        finally:
            copy.close()
        churn(store, 8)
        store.commit(new_package("1.0.0", module="later"), allow_overwrite=False)
        store.restore_from(folder)
        assert counted_by_records(store) == before
        assert_counts_exact(store, absent=("app", "later"))
        churn(store, 9)
        assert_counts_exact(store)

    def test_applications_page_by_key_both_ways(self, store: RecordStore) -> None:
        codes = [f"app{n:02d}" for n in range(7)]
        for code in codes:
            store.commit(new_package("1.0.0", code=code), allow_overwrite=False)
        forward: list[str] = []
        after: str | None = None
        while True:
            count, page = store.applications(limit=3, after=after)
            assert count == 7
            if not page:
                break
            forward += [a.name for a in page]
            after = page[-1].name
        assert forward == codes
        backward: list[str] = []
        before: str | None = None
        while True:
            _, page = store.applications(limit=3, after=before, backward=True)
            if not page:
                break
            backward = [a.name for a in page] + backward
            before = page[0].name
        assert backward == codes
        assert [a.name for a in store.applications(limit=2, after="app03", apps=frozenset(codes[:5]))[1]] == [
            "app04"]
        assert store.applications(limit=2, after="app03", search_term="5") == (1, store.applications(
            search_term="5")[1])

    # -- races ----------------------------------------------------------------------------------

    def _race_threads(self, store: RecordStore, packages: list[NewPackage]) -> list[str]:
        barrier = threading.Barrier(len(packages))

        def one(new: NewPackage) -> str:
            barrier.wait()
            try:
                return store.commit(new, allow_overwrite=False).outcome.value
            except RegistryError as exc:
                return exc.code

        with ThreadPoolExecutor(len(packages)) as pool:
            return list(pool.map(one, packages))

    def test_racing_threads_create_a_version_once(self, store: RecordStore) -> None:
        outcomes = self._race_threads(store, [new_package("3.0.0", salt=str(n)) for n in range(self.RACERS)])
        assert sorted(outcomes) == ["PACKAGE_ALREADY_EXISTS"] * (self.RACERS - 1) + ["created"]
        assert store.list("app", "default")[0] == 1

    def test_racing_threads_with_identical_bytes(self, store: RecordStore) -> None:
        outcomes = self._race_threads(store, [new_package("3.0.0") for _ in range(self.RACERS)])
        assert sorted(outcomes) == ["created"] + ["identical"] * (self.RACERS - 1)

    def test_racing_processes_create_a_version_once(self, store: RecordStore, make_store: StoreFactory) -> None:
        context = multiprocessing.get_context("spawn")
        jobs = [(make_store, new_package("4.0.0", salt=str(n))) for n in range(self.RACERS)]
        with context.Pool(min(self.RACERS, 4)) as pool:
            outcomes = pool.starmap(commit_in_process, jobs)
        assert sorted(outcomes) == ["PACKAGE_ALREADY_EXISTS"] * (self.RACERS - 1) + ["created"]
        count, [winner] = store.list("app", "default")
        assert count == 1 and winner.version == "4.0.0"

    # -- background jobs ------------------------------------------------------------------------

    def test_a_job_is_created_queued(self, store: RecordStore) -> None:
        job = store.create_job(new_job("j_1"))
        assert (job.id, job.state, job.attempts, job.holder, job.lease_until) == ("j_1", QUEUED, 0, None, None)
        assert job.request["sealed_url"] == "x" and job.result is None and job.bytes_total is None
        assert job.created.tzinfo is not None and job.created == job.updated
        assert store.get_job("app", "default", "j_1") == job
        assert store.get_job("app", "other", "j_1") is None
        assert store.get_job("app", "default", "j_2") is None
        assert store.count_jobs_by_state() == {QUEUED: 1, RUNNING: 0, SUCCEEDED: 0, FAILED: 0, CANCELLED: 0}

    def test_a_job_is_claimed_once_while_its_lease_holds(self, store: RecordStore) -> None:
        store.create_job(new_job("j_1"))
        first = store.claim_job("host:1:a", 60)
        assert first is not None and first.state == RUNNING and first.attempts == 1
        assert first.holder == "host:1:a" and first.lease_until is not None and first.lease_until > utc_now()
        assert store.claim_job("host:2:b", 60) is None
        assert store.heartbeat_job("j_1", "host:1:a", 60, 10, 100)
        assert not store.heartbeat_job("j_1", "host:2:b", 60, 10, 100)
        beating = store.get_job("app", "default", "j_1")
        assert beating is not None and (beating.bytes_received, beating.bytes_total) == (10, 100)
        assert not store.finish_job("j_1", "host:2:b", SUCCEEDED, {"status": 201}, 100, 100)
        assert store.finish_job("j_1", "host:1:a", SUCCEEDED, {"status": 201}, 100, 100)
        done = store.get_job("app", "default", "j_1")
        assert done is not None and done.state == SUCCEEDED and done.result == {"status": 201}
        assert done.holder is None and done.lease_until is None
        assert not store.heartbeat_job("j_1", "host:1:a", 60, 1, 1), "a finished job takes no heartbeat"
        assert store.claim_job("host:2:b", 60) is None
        with pytest.raises(ValueError):
            store.finish_job("j_1", "host:1:a", RUNNING, None, 0, None)

    def test_jobs_are_claimed_oldest_first(self, store: RecordStore) -> None:
        for job_id in ("j_b", "j_a", "j_c"):
            store.create_job(new_job(job_id))
        claimed = [store.claim_job(f"h:{n}:x", 60) for n in range(4)]
        assert [job.id if job else None for job in claimed] == ["j_b", "j_a", "j_c", None]

    def test_many_live_claims_do_not_hide_a_queued_job(self, store: RecordStore) -> None:
        for n in range(61):
            store.create_job(new_job(f"j_{n:03d}"))
        for n in range(60):  # held by live processes of other hosts
            assert store.claim_job(f"elsewhere-{n}:1:x", 3600) is not None
        last = store.claim_job("here:1:x", 60)
        assert last is not None and last.id == "j_060"

    def test_an_expired_lease_or_a_dead_holder_gives_the_job_away(self, store: RecordStore) -> None:
        store.create_job(new_job("j_1"))
        assert store.claim_job("elsewhere:1:a", 0) is not None
        again = store.claim_job("elsewhere:2:b", 60)
        assert again is not None and again.id == "j_1" and again.attempts == 2 and again.bytes_received == 0
        assert not store.finish_job("j_1", "elsewhere:1:a", SUCCEEDED, {}, 1, 1), "the old holder lost it"
        store.create_job(new_job("j_2"))
        dead = dead_holder()
        assert holder_is_dead(dead) and not holder_is_dead(make_holder())
        assert store.claim_job(dead, 3600) is not None
        taken = store.claim_job(make_holder(), 60)
        assert taken is not None and taken.id == "j_2" and taken.attempts == 2

    def test_cancel_stops_the_holder_and_finished_jobs_expire(self, store: RecordStore) -> None:
        store.create_job(new_job("j_1"))
        store.create_job(new_job("j_2"))
        assert store.claim_job("h:1:a", 60) is not None
        cancelled = store.cancel_job("app", "default", "j_1")
        assert cancelled is not None and cancelled.state == CANCELLED and cancelled.holder is None
        assert not store.heartbeat_job("j_1", "h:1:a", 60, 1, 2)
        assert not store.finish_job("j_1", "h:1:a", SUCCEEDED, {}, 1, 2)
        assert store.cancel_job("other", "default", "j_1") is None
        assert store.cancel_job("app", "default", "j_9") is None
        queued = store.cancel_job("app", "default", "j_2")
        assert queued is not None and queued.state == CANCELLED
        assert store.claim_job("h:1:a", 60) is None, "a cancelled job is never claimed"
        assert store.count_jobs_by_state()[CANCELLED] == 2
        assert store.expire_jobs(utc_now() - timedelta(hours=1)) == 0
        assert store.expire_jobs(utc_now() + timedelta(seconds=1)) == 2
        assert store.get_job("app", "default", "j_1") is None

    def test_unfinished_jobs_never_expire(self, store: RecordStore) -> None:
        store.create_job(new_job("j_1"))
        store.create_job(new_job("j_2"))
        store.claim_job("h:1:a", 60)
        assert store.expire_jobs(utc_now() + timedelta(days=1)) == 0
        assert store.count_jobs_by_state()[QUEUED] == 1

    def test_racing_processes_claim_a_job_once(self, store: RecordStore, make_store: StoreFactory) -> None:
        store.create_job(new_job("j_only"))
        context = multiprocessing.get_context("spawn")
        racers = 4
        with context.Manager() as manager:
            barrier = manager.Barrier(racers)
            with context.Pool(racers) as pool:
                won = pool.starmap(claim_in_process, [(make_store, barrier)] * racers)
        assert sorted(won, key=str) == [None] * (racers - 1) + ["j_only"], won
        job = store.get_job("app", "default", "j_only")
        assert job is not None and job.attempts == 1 and job.state == RUNNING

    def test_racing_threads_claim_each_job_once(self, store: RecordStore) -> None:
        for n in range(self.RACERS // 2):
            store.create_job(new_job(f"j_{n}"))
        barrier = threading.Barrier(self.RACERS)

        def one(n: int) -> str | None:
            barrier.wait()
            job = store.claim_job(f"h:{n}:x", 60)
            return None if job is None else job.id

        with ThreadPoolExecutor(self.RACERS) as pool:
            won = [job_id for job_id in pool.map(one, range(self.RACERS)) if job_id]
        assert sorted(won) == sorted(f"j_{n}" for n in range(self.RACERS // 2))

    # -- resumable uploads ----------------------------------------------------------------------

    def test_upload_write_lease_and_progress(self, store: RecordStore) -> None:
        upload_id = "u" * 32
        made = store.create_upload(new_upload(upload_id))
        assert (made.offset, made.state, made.holder, made.storage_state) == (0, RECEIVING, None, {"segments": []})
        assert made.expires > utc_now() and made.created.tzinfo is not None
        assert store.get_upload("app", "default", upload_id) == made
        assert store.get_upload("app", "other", upload_id) is None
        assert store.lock_upload("f" * 32, "h:1:a", 60) is None
        locked = store.lock_upload(upload_id, "h:1:a", 60)
        assert locked is not None and locked.holder == "h:1:a"
        assert store.lock_upload(upload_id, "h:2:b", 60) is None
        assert store.lock_upload(upload_id, "h:1:a", 60) is not None, "the holder may take it again"
        store.renew_upload_lock(upload_id, "h:1:a", 60)
        later = utc_now() + timedelta(seconds=120)
        ignored = store.save_progress(upload_id, "h:2:b", 50, {"x": 1}, later)
        assert ignored is not None and ignored.offset == 0, "only the holder writes"
        saved = store.save_progress(upload_id, "h:1:a", 10, {"segments": [[0, 10]]}, later)
        assert saved is not None and saved.offset == 10 and saved.holder == "h:1:a" and saved.expires == later
        assert store.count_uploads_in_progress() == 1
        released = store.save_progress(upload_id, "h:1:a", 20, {"segments": [[0, 10], [10, 10]]}, later,
                                       release=True)
        assert released is not None and released.offset == 20 and released.holder is None
        assert released.storage_state == {"segments": [[0, 10], [10, 10]]}
        assert store.lock_upload(upload_id, "h:2:b", 60) is not None
        store.unlock_upload(upload_id, "h:1:a")
        assert store.lock_upload(upload_id, "h:1:a", 60) is None, "another holder's unlock does nothing"
        store.unlock_upload(upload_id, "h:2:b")
        assert store.lock_upload(upload_id, "h:1:a", 60) is not None
        assert store.save_progress("f" * 32, "h:1:a", 1, {}, later) is None

    def test_an_expired_write_lease_or_a_dead_holder_gives_the_upload_away(self, store: RecordStore) -> None:
        store.create_upload(new_upload("a" * 32))
        assert store.lock_upload("a" * 32, "elsewhere:1:a", 0) is not None
        assert store.lock_upload("a" * 32, "elsewhere:2:b", 60) is not None
        store.create_upload(new_upload("b" * 32))
        assert store.lock_upload("b" * 32, dead_holder(), 3600) is not None
        assert store.lock_upload("b" * 32, make_holder(), 60) is not None

    def test_finish_keeps_the_outcome_and_uploads_expire(self, store: RecordStore) -> None:
        upload_id = "c" * 32
        store.create_upload(new_upload(upload_id))
        store.lock_upload(upload_id, "h:1:a", 60)
        completing = store.save_progress(upload_id, "h:1:a", 100, {"segments": [[0, 100]]},
                                         utc_now() + timedelta(seconds=60), state=COMPLETING)
        assert completing is not None and completing.state == COMPLETING and completing.holder == "h:1:a"
        assert store.count_uploads_in_progress() == 1
        keep_until = utc_now() + timedelta(seconds=30)
        store.finish_upload(upload_id, "h:2:b", FAILED, {"code": "X"}, keep_until)
        unchanged = store.get_upload("app", "default", upload_id)
        assert unchanged is not None and unchanged.state == COMPLETING, "only the holder finishes"
        store.finish_upload(upload_id, "h:1:a", SUCCEEDED, {"status": 201, "id": 7}, keep_until)
        done = store.get_upload("app", "default", upload_id)
        assert done is not None and done.state == SUCCEEDED and done.result == {"status": 201, "id": 7}
        assert done.storage_state == {} and done.holder is None and done.expires == keep_until
        assert store.count_uploads_in_progress() == 0
        store.create_upload(new_upload("d" * 32, expires_in=-1))
        store.create_upload(new_upload("e" * 32, expires_in=3600))
        assert [u.id for u in store.expired_uploads(utc_now())] == ["d" * 32]
        assert [u.id for u in store.expired_uploads(utc_now() + timedelta(seconds=45))] == ["d" * 32, upload_id]
        assert len(store.expired_uploads(utc_now() + timedelta(seconds=45), limit=1)) == 1
        store.delete_upload("d" * 32)
        store.delete_upload("d" * 32)
        assert store.get_upload("app", "default", "d" * 32) is None
        assert [u.id for u in store.expired_uploads(utc_now())] == []

    def test_jobs_and_uploads_are_imported_as_they_are(self, store: RecordStore, make_store: StoreFactory) -> None:
        store.create_job(new_job("j_1"))
        store.create_job(new_job("j_2"))
        store.claim_job("h:1:a", 60)
        store.create_upload(new_upload("a" * 32))
        store.lock_upload("a" * 32, "h:1:a", 60)
        store.create_upload(new_upload("b" * 32))
        assert not store.is_empty()
        jobs = store.page_jobs("", 10)
        assert [j.id for j in jobs] == ["j_1", "j_2"] and store.page_jobs("j_1", 10) == jobs[1:]
        uploads = store.page_uploads("", 1) + store.page_uploads("a" * 32, 10)
        assert [u.id for u in uploads] == ["a" * 32, "b" * 32]
        assert store.import_jobs(jobs) == 0 and store.import_uploads(uploads) == 0
        moved_job = replace(jobs[0], id="j_3", result={"status": 200})
        moved_upload = replace(uploads[0], id="c" * 32, offset=40)
        assert store.import_jobs([moved_job]) == 1 and store.import_uploads([moved_upload]) == 1
        assert store.get_job("app", "default", "j_3") == moved_job
        assert store.get_upload("app", "default", "c" * 32) == moved_upload

    # -- the webhook outbox ------------------------------------------------------------------------

    def test_an_event_is_queued_once_per_target(self, store: RecordStore) -> None:
        made = store.add_outbox(new_event("e1", "t1", "t2"))
        assert [(d.event_id, d.target, d.state, d.attempts) for d in made] == [("e1", "t1", PENDING, 0),
                                                                                ("e1", "t2", PENDING, 0)]
        assert made[0].id < made[1].id and made[0].payload == {"event": "stored", "id": 1, "note": "é"}
        assert made[0].holder is None and made[0].lease_until is None and made[0].last_error is None
        assert made[0].created.tzinfo is not None and made[0].next_attempt <= utc_now()
        assert store.count_deliveries_by_state() == {PENDING: 2, DELIVERED: 0, FAILED: 0}
        assert not store.is_empty()

    def test_a_target_receives_its_deliveries_one_at_a_time_in_order(self, store: RecordStore) -> None:
        first, = store.add_outbox(new_event("e1", "t1"))
        second, = store.add_outbox(new_event("e2", "t1"))
        other, = store.add_outbox(new_event("e3", "t2"))
        claimed = store.claim_deliveries("h:1:a", 60, ["t1", "t2"])
        assert [d.id for d in claimed] == [first.id, other.id], "the head of each target only"
        assert claimed[0].holder == "h:1:a" and claimed[0].lease_until is not None
        assert claimed[0].lease_until > utc_now() and claimed[0].attempts == 0
        assert store.claim_deliveries("h:2:b", 60, ["t1", "t2"]) == [], "claimed heads hold their queues"
        assert not store.delivered(first.id, "h:2:b"), "only the holder settles a delivery"
        assert store.delivered(first.id, "h:1:a")
        assert not store.delivered(first.id, "h:1:a"), "settled once"
        assert [d.id for d in store.claim_deliveries("h:2:b", 60, ["t1", "t2"])] == [second.id]
        assert store.claim_deliveries("h:3:c", 60, ["t9"]) == []
        assert store.claim_deliveries("h:3:c", 60, []) == []
        done = store.page_deliveries(0, 1)[0]
        assert done.state == DELIVERED and done.holder is None and done.lease_until is None

    def test_a_failed_attempt_backs_off_and_the_last_one_gives_up(self, store: RecordStore) -> None:
        first, = store.add_outbox(new_event("e1", "t1"))
        second, = store.add_outbox(new_event("e2", "t1"))
        assert [d.id for d in store.claim_deliveries("h:1:a", 60, ["t1"])] == [first.id]
        assert store.delivery_failed(first.id, "h:1:a", "HTTP 500", utc_now() - timedelta(seconds=1))
        assert not store.delivery_failed(first.id, "h:1:a", "again", None), "no longer claimed"
        again = store.claim_deliveries("h:2:b", 60, ["t1"])
        assert [(d.id, d.attempts, d.last_error) for d in again] == [(first.id, 1, "HTTP 500")]
        assert store.delivery_failed(first.id, "h:2:b", "gave up", None)
        failed = store.page_deliveries(0, 1)[0]
        assert (failed.state, failed.attempts, failed.holder) == (FAILED, 2, None)
        assert [d.id for d in store.claim_deliveries("h:2:b", 60, ["t1"])] == [second.id], \
            "a given-up head no longer holds its target's queue"
        third, = store.add_outbox(new_event("e3", "t2"))
        store.add_outbox(new_event("e4", "t2"))
        store.claim_deliveries("h:1:a", 60, ["t2"])
        assert store.delivery_failed(third.id, "h:1:a", "timeout", utc_now() + timedelta(hours=1))
        assert store.claim_deliveries("h:1:a", 60, ["t2"]) == [], "backing off, and holding its queue"
        assert store.count_deliveries_by_state() == {PENDING: 3, DELIVERED: 0, FAILED: 1}

    def test_an_expired_lease_or_a_release_gives_the_delivery_away(self, store: RecordStore) -> None:
        first, = store.add_outbox(new_event("e1", "t1"))
        assert [d.id for d in store.claim_deliveries("elsewhere:1:a", 0, ["t1"])] == [first.id]
        taken = store.claim_deliveries("elsewhere:2:b", 60, ["t1"])
        assert [(d.id, d.holder, d.attempts) for d in taken] == [(first.id, "elsewhere:2:b", 0)], \
            "a crashed attempt is not counted"
        assert not store.delivered(first.id, "elsewhere:1:a"), "the old holder lost it"
        second, = store.add_outbox(new_event("e2", "t2"))
        assert store.claim_deliveries("h:3:c", 3600, ["t2"])
        assert store.release_deliveries("h:3:c") == 1
        assert [d.id for d in store.claim_deliveries("h:4:d", 60, ["t2"])] == [second.id]
        assert store.delivered(first.id, "elsewhere:2:b") and store.delivered(second.id, "h:4:d")

    def test_finished_deliveries_expire_pending_ones_never(self, store: RecordStore) -> None:
        first, second = store.add_outbox(new_event("e1", "t1", "t2"))
        store.add_outbox(new_event("e2", "t3"))
        store.claim_deliveries("h:1:a", 60, ["t1", "t2"])
        store.delivered(first.id, "h:1:a")
        store.delivery_failed(second.id, "h:1:a", "gave up", None)
        assert store.expire_deliveries(utc_now() - timedelta(hours=1)) == 0
        assert store.expire_deliveries(utc_now() + timedelta(seconds=1)) == 2
        assert [d.event_id for d in store.page_deliveries(0, 10)] == ["e2"]

    def test_racing_threads_claim_each_delivery_once(self, store: RecordStore) -> None:
        targets = [f"t{n}" for n in range(self.RACERS)]
        for target in targets:
            store.add_outbox(new_event(f"e-{target}", target))
        barrier = threading.Barrier(self.RACERS)

        def one(n: int) -> list[int]:
            barrier.wait()
            return [d.id for d in store.claim_deliveries(f"h:{n}:x", 60, targets)]

        with ThreadPoolExecutor(self.RACERS) as pool:
            won = [delivery for claimed in pool.map(one, range(self.RACERS)) for delivery in claimed]
        assert sorted(won) == sorted(d.id for d in store.page_deliveries(0, 100))

    def test_racing_processes_claim_each_delivery_once(self, store: RecordStore,
                                                       make_store: StoreFactory) -> None:
        targets = [f"t{n}" for n in range(6)]
        for target in targets:
            store.add_outbox(new_event(f"e-{target}", target))
        context = multiprocessing.get_context("spawn")
        racers = 4
        with context.Manager() as manager:
            barrier = manager.Barrier(racers)
            with context.Pool(racers) as pool:
                won = pool.starmap(claim_deliveries_in_process, [(make_store, barrier, targets)] * racers)
        claimed = [delivery for ids in won for delivery in ids]
        assert sorted(claimed) == sorted(d.id for d in store.page_deliveries(0, 100)), won

    def test_deliveries_are_imported_as_they_are(self, store: RecordStore) -> None:
        store.add_outbox(new_event("e1", "t1", "t2"))
        store.claim_deliveries("h:1:a", 60, ["t1"])
        head = store.page_deliveries(0, 1)
        kept = head + store.page_deliveries(head[0].id, 10)
        assert [d.target for d in kept] == ["t1", "t2"] and kept[0].holder == "h:1:a"
        assert store.import_deliveries(kept) == 0
        moved = replace(kept[0], id=kept[-1].id + 100, event_id="e0", attempts=3, last_error="HTTP 502")
        assert store.import_deliveries([moved, kept[1]]) == 1
        assert store.page_deliveries(kept[-1].id, 10) == [moved]
        later, = store.add_outbox(new_event("e2", "t3"))
        assert later.id > moved.id, "new deliveries follow the imported ones"
