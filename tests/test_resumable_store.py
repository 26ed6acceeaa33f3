"""The storage capability behind resumable uploads, on both built-in backends:
chunks appended in order read back as one stream, the state alone describes an
upload (a fresh store object continues it), discard leaves nothing."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from registry_plugins.s3_resumable import MIN_PART
from registry_plugins.storage_filesystem import FilesystemStorage
from registry_plugins.storage_s3 import S3Storage

from registry.storage import Storage
from tests.test_storage_conformance import DUMMY_AWS_ENV, MotoServer, s3_storage_for

MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(params=["filesystem", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path, moto: MotoServer,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Storage]:
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    store: Storage = (FilesystemStorage(tmp_path / "root") if request.param == "filesystem"
                      else s3_storage_for(moto, tmp_path))
    await store.startup()
    yield store
    await store.shutdown()


def chunk_file(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"chunk-{uuid.uuid4().hex}.part"
    path.write_bytes(data)
    return path


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


@pytest.mark.anyio
@pytest.mark.parametrize("sizes", [[10], [MiB, 3 * MiB, 2 * MiB + 5, 7], [MIN_PART + 1, 1]],
                         ids=["one-small", "small-then-past-a-part", "part-then-tail"])
async def test_chunks_read_back_in_order(storage: Storage, tmp_path: Path, sizes: list[int]) -> None:
    upload_id = uuid.uuid4().hex
    state = await storage.resumable().begin(upload_id)
    expected = b""
    for size in sizes:
        data = os.urandom(size)
        # A fresh capability object each time: the state is all it needs.
        state = await storage.resumable().append(upload_id, state, len(expected), chunk_file(tmp_path / "in", data))
        expected += data
    assert await storage.resumable().recover(upload_id, state) == (state, None)
    assert await read_all(storage.resumable().assemble(upload_id, state)) == expected
    await storage.resumable().discard(upload_id, state)
    listed = [blob async for blob in storage.iter_blobs()] if storage.name == "filesystem" else []
    assert listed == []


@pytest.mark.anyio
async def test_discard_leaves_nothing(storage: Storage, tmp_path: Path, moto: MotoServer) -> None:
    upload_id = uuid.uuid4().hex
    state = await storage.resumable().begin(upload_id)
    state = await storage.resumable().append(upload_id, state, 0, chunk_file(tmp_path / "in", os.urandom(MIN_PART)))
    state = await storage.resumable().append(upload_id, state, MIN_PART, chunk_file(tmp_path / "in", b"tail"))
    await storage.resumable().discard(upload_id, state)
    await storage.resumable().discard(upload_id, state)  # twice is not an error
    if isinstance(storage, FilesystemStorage):
        assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []
    else:
        assert isinstance(storage, S3Storage)
        client = moto.client()
        bucket = storage.bucket
        assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.anyio
async def test_local_files_recover_from_a_cut_file(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "root")
    await storage.startup()
    upload_id = uuid.uuid4().hex
    state = await storage.resumable().begin(upload_id)
    for offset in (0, 100, 200):
        state = await storage.resumable().append(upload_id, state, offset, chunk_file(tmp_path, os.urandom(100)))
    # As after a crash of the machine: the last 150 bytes never reached the disk.
    path = storage.resumable().in_place(upload_id)
    assert path is not None
    os.truncate(path, 150)
    assert await storage.resumable().recover(upload_id, state) == ({"size": 150}, 150)
    # An upload an older version kept as segment files starts again.
    assert await storage.resumable().recover(upload_id, {"segments": [[0, 100]]}) == ({"size": 0}, 0)


@pytest.mark.anyio
async def test_in_place_file_is_the_upload(storage: Storage, tmp_path: Path) -> None:
    """The filesystem offers each upload's own file, the core writes into it
    and reports the size; S3 offers none (chunks go through append)."""
    upload_id = uuid.uuid4().hex
    store = storage.resumable()
    state = await store.begin(upload_id)
    path = store.in_place(upload_id)
    if storage.name != "filesystem":
        assert path is None
        await store.discard(upload_id, state)
        return
    assert path is not None and path.is_file() and storage.staging_dir in path.parents
    data = os.urandom(1000)
    with path.open("r+b") as f:
        f.write(data + b"left by a chunk that was not accepted")
    state = await store.written(upload_id, state, 0, len(data))
    assert await store.recover(upload_id, state) == (state, None)
    assert await read_all(store.assemble(upload_id, state)) == data
    await store.discard(upload_id, state)
    assert not path.exists()
