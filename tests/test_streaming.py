"""Uploads are inspected while they stream in: no second read, early refusal."""

from __future__ import annotations

import gzip
import hashlib
import os
import select
import socket
import tarfile
import threading
import zlib
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from registry.archive import ArchiveLimits, inspect_following
from registry.staging import READ_AHEAD, StagingFile, UploadAbandoned
from tests.helpers import Api, RegistryProcess, make_zip, package

LIMITS = ArchiveLimits(max_members=1000, max_unpacked_size=10**10, max_compression_ratio=100)


@pytest.mark.anyio
async def test_follower_reads_while_the_upload_is_written(tmp_path: Path) -> None:
    data = package("1.0.0", salt="follow")
    seen: list[int] = []

    def follow(upload):  # type: ignore[no-untyped-def]
        info = inspect_following(upload, LIMITS)
        seen.append(upload.consumed)
        return info

    async with StagingFile(tmp_path, 10**9, follower=follow) as staged:
        for start in range(0, len(data), 100):
            await staged.write(data[start:start + 100])
        await staged.finish()
        info = await staged.followed()
        await staged.synced()
        assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert info.format == "tar.gz"
    assert info.app_desc is not None
    assert seen == [len(data)]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_a_follower_reading_small_pieces_gets_every_byte_once(tmp_path: Path) -> None:
    """The decompressors read 8 KiB at a time: served from larger reads of
    the file, the pieces are still every written byte in order, and
    ``consumed`` counts what was handed out, not what was read ahead."""
    data = os.urandom(3 * READ_AHEAD + 12_345)
    handed: list[int] = []

    def follow(upload):  # type: ignore[no-untyped-def]
        pieces = []
        while piece := upload.read(8192):
            pieces.append(piece)
            handed.append(upload.consumed - sum(map(len, pieces)))
        return b"".join(pieces)

    async with StagingFile(tmp_path, 10**9, follower=follow) as staged:
        for start in range(0, len(data), 100_000):
            await staged.write(data[start:start + 100_000])
        await staged.finish()
        assert await staged.followed() == data
    assert handed and set(handed) == {0}


@pytest.mark.anyio
async def test_an_abandoned_upload_releases_its_follower(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    started = threading.Event()

    def follow(upload):  # type: ignore[no-untyped-def]
        started.set()
        try:
            return inspect_following(upload, LIMITS)
        except BaseException as exc:
            errors.append(exc)
            raise

    with pytest.raises(RuntimeError):
        async with StagingFile(tmp_path, 10**9, follower=follow) as staged:
            await staged.write(gzip.compress(b"\0" * 1024)[:20])
            # the follower runs in a shared pool: let it start and wait for bytes
            await anyio.to_thread.run_sync(started.wait)
            raise RuntimeError("client went away")
    assert len(errors) == 1 and isinstance(errors[0], UploadAbandoned)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_zip_is_inspected_once_complete(tmp_path: Path) -> None:
    data = make_zip({"app_desc.yaml": b"spec_version: 2\napp_version: 3.1\n", "a.py": b"print(1)\n"})
    async with StagingFile(tmp_path, 10**9, follower=lambda u: inspect_following(u, LIMITS)) as staged:
        await staged.write(data)
        await staged.finish()
        info = await staged.followed()
    assert info.format == "zip"
    assert info.members == 2


def bomb_prefix() -> bytes:
    """The start of a tar.gz: a header for 200 MB of zeros and those zeros,
    compressed and sync-flushed so they can be decompressed without the rest."""
    header = tarfile.TarInfo("zeros")
    header.size = 200_000_000
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
    out = [compressor.compress(header.tobuf())]
    block = bytes(1024 * 1024)
    for _ in range(header.size // len(block)):
        out.append(compressor.compress(block))
    out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(out)


def test_a_bomb_is_refused_while_the_upload_is_still_arriving(registry: RegistryProcess, token: str, code: str) -> None:
    """The client sends the bomb's first part, then keeps trickling bytes that
    never finish the body: the refusal arrives while it is still sending."""
    boundary = "streaming-boundary"
    preamble = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n1\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"b.tar.gz\"\r\n"
                "Content-Type: application/gzip\r\n\r\n").encode()
    first = preamble + bomb_prefix()
    filler = bytes(256 * 1024)
    host, port = registry.url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            f"POST {Api.path(code)} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        conn.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        for _ in range(400):  # at most 100 MiB more, and never the end of the body
            if select.select([conn], [], [], 0.05)[0]:
                answer = conn.recv(65536)
                break
            conn.sendall(b"%x\r\n%s\r\n" % (len(filler), filler))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"INVALID_PACKAGE" in answer
