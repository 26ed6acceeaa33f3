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
async def test_local_segments_recover_from_a_lost_segment(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "root")
    await storage.startup()
    upload_id = uuid.uuid4().hex
    state = await storage.resumable().begin(upload_id)
    for offset in (0, 100, 200):
        state = await storage.resumable().append(upload_id, state, offset, chunk_file(tmp_path, os.urandom(100)))
    # As after a crash of the machine: the second segment never reached the disk.
    (storage.staging_dir / "resumable" / upload_id / f"{100:020d}.seg").write_bytes(b"short")
    kept, lost_from = await storage.resumable().recover(upload_id, state)
    assert lost_from == 100 and kept == {"segments": state["segments"][:1]}
