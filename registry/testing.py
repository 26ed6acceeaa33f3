"""A conformance suite any storage plugin can run against itself.

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
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
import pytest

from registry.errors import ObjectStoreException
from registry.storage import BlobMissing, Storage, new_blob_key

MiB = 1024 * 1024
#: Default size of the "large" object: over two 8 MiB parts, not a multiple of 1 MiB.
LARGE_OBJECT_SIZE = 17 * MiB + 4321
#: A stream must come in chunks no larger than this (it streams; it does not
#: load the blob into memory).
MAX_CHUNK_SIZE = 8 * MiB
#: Size of the medium blob used for ranged reads: spans several 1 MiB reads.
RANGE_BLOB_SIZE = 2 * MiB + 777

__all__ = ["LARGE_OBJECT_SIZE", "MAX_CHUNK_SIZE", "StorageConformance", "read_blob", "stage"]


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
