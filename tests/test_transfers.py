"""Transfers in flight cost little: a bounded thread pool for uploads, bounded
buffers for downloads, and nothing left behind by an upload cut short."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from registry import transfers
from registry.archive import ArchiveLimits, inspect_following
from registry.staging import StagingFile
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    inprocess_registry,
    make_tar,
    package,
    staged_files,
    start_registry,
)

LIMITS = ArchiveLimits(max_members=1000, max_unpacked_size=10**10, max_compression_ratio=100)
IN_FLIGHT = 64
#: The issue's bound for 64 uploads in flight (one thread per upload, or
#: two, would be far above it).
MAX_THREADS = 60
BOUNDARY = "test-transfers-boundary"


def _noisy_package(salt: str, size: int) -> bytes:
    """A tar.gz of about ``size`` bytes that gzip cannot shrink (two members)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in (("noise.bin", os.urandom(size)), ("src/main.py", salt.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for ``condition`` (not a timing assertion: the deadline only ends a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _read_chars(pid: int) -> int:
    """Bytes the process has read through read-like system calls (``pread`` included)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar")


def _multipart(version: str, data: bytes) -> bytes:
    """The body of a raw multipart upload."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n{version}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"p.tar.gz\"\r\n"
            "Content-Type: application/gzip\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one whole response with a Content-Length: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise AssertionError(f"connection closed before the response head: {data!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return int(lines[0].split()[1]), body


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A registry of this test alone: its threads and memory are this test's."""
    server = start_registry(tmp_path / "server", base_config(tmp_path / "server"))
    try:
        yield server
    finally:
        server.stop()


def _head(path: str, token: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n").encode()


def test_64_uploads_in_flight_share_a_bounded_pool_and_all_succeed(own_registry: RegistryProcess, tmp_path: Path) -> None:
    token = own_registry.token()
    path = Api.path("many")
    staging = tmp_path / "server" / "packages" / ".staging"
    packages = [_noisy_package(f"upload-{n}", 256 * 1024) for n in range(IN_FLIGHT)]
    bodies = [_multipart(f"1.0.{n}", data) for n, data in enumerate(packages)]
    sockets = [socket.create_connection(("127.0.0.1", own_registry.port)) for _ in range(IN_FLIGHT)]
    try:
        for sock, body in zip(sockets, bodies, strict=True):
            sock.sendall(_head(path, token, len(body)) + body[: len(body) // 2])
        # every upload is now in flight: its staging file exists, half of it received
        _until(lambda: len(staged_files(staging)) == IN_FLIGHT, f"{IN_FLIGHT} staging files")
        assert own_registry.process is not None
        threads = _status(own_registry.process.pid, "Threads")
        assert threads < MAX_THREADS, f"{threads} threads with {IN_FLIGHT} uploads in flight"
        for sock, body in zip(sockets, bodies, strict=True):
            sock.sendall(body[len(body) // 2:])
        answers = [_response(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    for n, (status, body) in enumerate(answers):
        assert status == 201, body
        assert json.loads(body)["sha256_signature"] == hashlib.sha256(packages[n]).hexdigest()
    api = Api(own_registry.url, token)
    try:
        for n in (0, IN_FLIGHT // 2, IN_FLIGHT - 1):
            record = json.loads(answers[n][1])
            assert api.download("many", record["id"]).content == packages[n]
    finally:
        api.close()
    assert staged_files(staging) == []


def test_uploads_cut_off_mid_way_leave_no_staging_file(own_registry: RegistryProcess, tmp_path: Path) -> None:
    token = own_registry.token()
    path = Api.path("cut")
    staging = tmp_path / "server" / "packages" / ".staging"
    count = 16
    bodies = [_multipart(f"2.0.{n}", _noisy_package(f"cut-{n}", 4 * transfers.MAX_UPLOAD_BATCH))
              for n in range(count)]
    sockets = [socket.create_connection(("127.0.0.1", own_registry.port)) for _ in range(count)]
    try:
        for sock, body in zip(sockets, bodies, strict=True):
            sock.sendall(_head(path, token, len(body)) + body[: len(body) // 2])
        _until(lambda: len(staged_files(staging)) == count, f"{count} staging files")
        # some bytes of each are written (batches reached the writer pool)
        _until(lambda: all(p.stat().st_size > 0 for p in staged_files(staging)), "written batches")
    finally:
        for sock in sockets:
            sock.close()
    _until(lambda: staged_files(staging) == [], "the staging files to go")
    api = Api(own_registry.url, token)
    try:
        assert api.list("cut").json()["count"] == 0
        ok = api.upload("cut", _noisy_package("after", 1024), version="3.0.0")
        assert ok.status_code == 201, ok.text
    finally:
        api.close()


def test_a_client_that_stops_reading_a_download_is_not_buffered(tmp_path: Path) -> None:
    size = 32 * 1024 * 1024
    clients = 4
    server = start_registry(tmp_path / "server", base_config(tmp_path / "server"))
    try:
        token = server.token()
        api = Api(server.url, token)
        try:
            sent = api.upload("stall", _noisy_package("stall", size), version="1.0.0")
            assert sent.status_code == 201, sent.text
            record = sent.json()
        finally:
            api.close()
        assert server.process is not None
        pid = server.process.pid
        request = (f"GET {Api.path('stall', suffix=str(record['id']) + '/download/')} HTTP/1.1\r\n"
                   f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
        read_before, rss_before = _read_chars(pid), _status(pid, "VmRSS") * 1024
        stalled = []
        try:
            for _ in range(clients):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(request)
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                stalled.append(sock)  # and never read again
            # Wait until the server stops reading the blob (it would read
            # every client's whole copy if it buffered the file).
            history = [_read_chars(pid)]
            whole = clients * size

            def settled() -> bool:
                history.append(_read_chars(pid))
                recent = history[-20:]
                return history[-1] - read_before >= whole or (len(recent) == 20 and recent[0] == recent[-1])

            _until(settled, "the server to stop reading")
            read = history[-1] - read_before
            grown = _status(pid, "VmRSS") * 1024 - rss_before
            assert read < whole // 2, f"read {read} bytes of {whole} for clients that read nothing"
            assert grown < size, f"RSS grew by {grown} bytes"
            # the stalled downloads still complete once their clients read
            received = 0
            sock = stalled[0]
            sock.settimeout(60)
            while received < size:
                chunk = sock.recv(1024 * 1024)
                assert chunk, f"cut after {received} bytes"
                received += len(chunk)
        finally:
            for sock in stalled:
                sock.close()
    finally:
        server.stop()


def _read_all(upload) -> int:  # type: ignore[no-untyped-def]
    """A follower that reads everything written (and waits for more)."""
    total = 0
    while chunk := upload.read():
        total += len(chunk)
    return total


@pytest.mark.anyio
async def test_a_cancelled_upload_removes_its_file_while_batches_are_written(tmp_path: Path) -> None:
    in_flight = transfers.uploads_in_flight.value
    written = anyio.Event()

    async def upload() -> None:
        async with StagingFile(tmp_path, 10**12, follower=_read_all) as staged:
            chunk = os.urandom(64 * 1024)
            while True:
                await staged.write(chunk)
                if staged.size >= 4 * transfers.MAX_UPLOAD_BATCH:
                    written.set()

    async with anyio.create_task_group() as group:
        group.start_soon(upload)
        await written.wait()
        assert len(list(tmp_path.iterdir())) == 1
        group.cancel_scope.cancel()
    assert list(tmp_path.iterdir()) == []
    assert transfers.uploads_in_flight.value == in_flight


@pytest.mark.anyio
async def test_stalled_uploads_do_not_hold_every_inspection_thread(tmp_path: Path) -> None:
    """More stalled uploads than inspection threads: another upload is still
    inspected, and the stalled ones are inspected once they complete."""
    stalled_data = [_noisy_package(f"stalled-{n}", 64 * 1024) for n in range(transfers.FOLLOWER_THREADS + 2)]
    done = make_tar({"src/app.py": b"print(1)\n"})

    def follow(upload):  # type: ignore[no-untyped-def]
        return inspect_following(upload, LIMITS)

    stalled = [StagingFile(tmp_path, 10**9, follower=follow) for _ in stalled_data]
    opened = [await s.__aenter__() for s in stalled]
    try:
        for staged, data in zip(opened, stalled_data, strict=True):
            await staged.write(data[:1024])
            await staged._flush()  # the follower gets bytes to start on, then waits for more
        with anyio.fail_after(120):  # a hang, not a timing: a follower thread frees within FOLLOW_GRACE
            async with StagingFile(tmp_path, 10**9, follower=follow) as other:
                await other.write(done)
                await other.finish()
                assert (await other.followed()).members == 1
            for staged, data in zip(opened, stalled_data, strict=True):
                await staged.write(data[1024:])
                await staged.finish()
                assert (await staged.followed()).members == 2
                assert staged.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        for staged in stalled:
            await staged.__aexit__(None, None, None)
    assert list(tmp_path.iterdir()) == []


def test_pool_threads_are_bounded_and_started_on_use() -> None:
    pool = transfers.Pool("test-pool", 2)
    seen: set[int] = set()
    gate = threading.Event()

    def work() -> None:
        seen.add(threading.get_ident())
        gate.wait()

    futures = [pool.submit(work) for _ in range(8)]
    _until(lambda: len(seen) == 2, "two threads busy")
    assert pool.queued == 6
    gate.set()
    for future in futures:
        future.result()
    assert len(seen) == 2 and pool.queued == 0


@pytest.mark.anyio
async def test_a_cancelled_caller_of_run_to_end_waits_for_the_call_to_end() -> None:
    """As with anyio's thread hand-off: a caller cancelled while its call runs
    (a record commit, say) moves on only once the call has ended, so what the
    call did is settled; the result or error of a call not cancelled is the caller's."""
    pool = transfers.Pool("test-run-to-end", 1)
    started, release = threading.Event(), threading.Event()
    ended: list[float] = []

    def commit() -> None:
        started.set()
        release.wait(10)
        ended.append(time.monotonic())

    async def caller() -> None:
        await pool.run_to_end(commit)

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        assert await anyio.to_thread.run_sync(started.wait, 10)
        group.cancel_scope.cancel()
        threading.Timer(0.3, release.set).start()
    left = time.monotonic()
    assert ended and ended[0] <= left, "the caller moved on before its call ended"
    assert await pool.run_to_end(lambda: 6 * 7) == 42
    with pytest.raises(ZeroDivisionError):
        await pool.run_to_end(lambda: 1 / 0)


@pytest.mark.anyio
async def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    """As with anyio's hand-off cancelled while it waits for a thread: a call
    still queued when its caller is cancelled is dropped, and the caller moves
    on at once (a shutdown never waits for writes nobody waits for any more)."""
    pool = transfers.Pool("test-run-to-end-queued", 1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        started.set()
        release.wait(10)

    async def caller() -> None:
        await pool.run_to_end(ran.append, "queued")

    holding = pool.submit(hold)
    try:
        assert await anyio.to_thread.run_sync(started.wait, 10)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(caller)
                await anyio.sleep(0.05)
                group.cancel_scope.cancel()
        assert not release.is_set(), "the caller waited for the call ahead of its own"
    finally:
        release.set()
    holding.result(10)
    assert await pool.run_to_end(lambda: 6 * 7) == 42
    assert ran == [] and pool.queued == 0


@pytest.mark.anyio
async def test_a_registry_shut_down_leaves_no_store_thread(tmp_path: Path) -> None:
    """The record store's read and write threads belong to their registry:
    once it is shut down they end, so a process that starts and stops
    registries (a test run, an embedding application) does not collect them."""
    before = set(threading.enumerate())
    async with inprocess_registry(tmp_path, base_config(tmp_path), "threads") as client:
        stored = await client.post(Api.path("threads"), files={"package": ("p.tar.gz", package("1.0.0"))})
        assert stored.status_code == 201, stored.text
        assert (await client.get(Api.path("threads", suffix=f"{stored.json()['id']}/"))).status_code == 200
        started = [t for t in set(threading.enumerate()) - before if t.name.startswith("store-")]
        assert started, "the store calls ran in no store thread"
    _until(lambda: not any(t.is_alive() for t in started), "the store threads to end")


def test_a_cached_read_returns_the_bytes_or_defers_to_the_pool(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    with blob.open("rb") as f:
        for offset, size in ((0, 300_000), (1000, 4096), (299_000, 4096), (300_000, 10)):
            got = transfers.read_cached(f.fileno(), size, offset)
            assert got is None or got == data[offset:offset + size][: len(got)]
            if got is not None and offset < len(data):
                assert got  # something cached was read, or None: never a false end of file
