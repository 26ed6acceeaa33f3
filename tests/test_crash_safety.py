"""SIGKILL in the middle of uploads, commits and overwrites, then restart.

After a restart on the same config: every record points at a blob holding
exactly the recorded bytes, no partial blob exists, the staging folder is
empty, and the registry works (the interrupted version can be uploaded).
Each kill happens at a known moment, never after a guessed delay: the test
waits (bounded) for a visible sign that the server reached that point.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.staging import FLUSH_SIZE
from tests import crash_plugin
from tests.helpers import (
    Api,
    base_config,
    blob_files,
    make_tar,
    merge,
    package,
    staged_files,
    start_registry,
    wait_for,
)
from tests.hostile_servers import HostileServer, half_then_wait, serve

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0


def big_package(salt: str) -> bytes:
    """A valid tar.gz that does not compress, of three staging flushes: half of
    it is more than one flush, so half an upload reaches the staging file."""
    return make_tar({"noise.bin": _noise(3 * FLUSH_SIZE, salt), "src/main.py": salt.encode()})


def _noise(size: int, salt: str) -> bytes:
    out = bytearray()
    seed = salt.encode()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])


class Crashable:
    """A registry on its own folder, killed and restarted by the test."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, storage: str = "filesystem") -> None:
        self.root = root
        tables = merge(base_config(root), {"storage": {"backend": storage}})
        if storage != "filesystem":
            tables = merge(tables, {"plugins": {"modules": ["tests.crash_plugin"]}})
        self.process = start_registry(root, tables, env={"PYTHONPATH": str(PROJECT_ROOT), **(env or {})})
        self.token = self.process.token("crash")
        self.known: set[str] = set()

    @property
    def packages(self) -> Path:
        return self.root / "packages"

    @property
    def staging(self) -> Path:
        return self.packages / ".staging"

    def api(self) -> Api:
        return Api(self.process.url, self.token)

    def upload(self, code: str, data: bytes, **fields: Any) -> httpx.Response:
        self.known.add(hashlib.sha256(data).hexdigest())
        api = self.api()
        try:
            return api.upload(code, data, **fields)
        finally:
            api.close()

    def kill_and_restart(self, env_changes: dict[str, str | None] | None = None) -> None:
        self.process.kill()
        for name, value in (env_changes or {}).items():
            if value is None:
                self.process.env.pop(name, None)
            else:
                self.process.env[name] = value
        self.process.start()

    def records(self) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.root / 'registry.db'}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute("SELECT * FROM packages ORDER BY id").fetchall()
        finally:
            conn.close()

    def check_consistent(self) -> list[sqlite3.Row]:
        """The invariants after a crash and restart."""
        assert self.staging.is_dir()
        assert staged_files(self.staging) == [], "staging folder not emptied at start-up"
        records = self.records()
        for record in records:
            blob = self.packages.joinpath(*record["blob_key"].split("/"))
            assert blob.is_file(), f"record {record['id']} points at a missing blob"
            data = blob.read_bytes()
            assert len(data) == record["package_size"]
            assert hashlib.sha256(data).hexdigest() == record["sha256"]
        for blob in blob_files(self.packages):
            digest = hashlib.sha256(blob.read_bytes()).hexdigest()
            assert digest in self.known, f"partial or foreign blob {blob}"
        api = self.api()
        try:
            for record in records:
                if record["is_deleted"]:
                    continue
                body = api.download(record["code"], record["id"], module=record["module"])
                assert body.status_code == 200, body.text
                assert hashlib.sha256(body.content).hexdigest() == record["sha256"]
        finally:
            api.close()
        return records

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def crashable(tmp_path: Path) -> Iterator[Callable[..., Crashable]]:
    made: list[Crashable] = []

    def make(**kwargs: Any) -> Crashable:
        registry = Crashable(tmp_path / f"registry-{len(made)}", **kwargs)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.stop()


def in_background(call: Callable[[], object]) -> threading.Thread:
    """Run a request that will never be answered (the server gets killed)."""
    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def multipart(data: bytes, version: str, file_name: str = "pkg.tar.gz") -> tuple[bytes, str]:
    boundary = "crash-" + uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n{version}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"{file_name}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def staged_bytes(registry: Crashable) -> int:
    return sum(p.stat().st_size for p in staged_files(registry.staging))


# -- the scenarios -------------------------------------------------------------------------

def test_kill_during_a_slow_file_upload(crashable: Callable[..., Crashable]) -> None:
    """Half a multipart body sent (and partly written to staging), then SIGKILL."""
    registry = crashable()
    base = registry.upload("crash", package(salt="base"), version="0.1.0")
    assert base.status_code == 201, base.text
    data = big_package("slow-upload")
    body, content_type = multipart(data, "1.0.0")
    head = (
        f"POST /bkapps/applications/crash/modules/default/source_package/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{registry.process.port}\r\nAuthorization: Bearer {registry.token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", registry.process.port), timeout=WAIT) as client:
        client.sendall(head + body[: len(body) // 2 + FLUSH_SIZE // 2])
        wait_for(lambda: staged_bytes(registry) > 0, "part of the upload to reach the staging file")
        registry.kill_and_restart()
    records = registry.check_consistent()
    assert [r["version"] for r in records] == ["0.1.0"]
    again = registry.upload("crash", data, version="1.0.0")
    assert again.status_code == 201, again.text
    registry.check_consistent()


def test_kill_during_a_link_download(crashable: Callable[..., Crashable]) -> None:
    """The origin sends half the package and waits; SIGKILL while the fetch is in flight."""
    registry = crashable()
    data = big_package("half-link")
    half_sent = threading.Event()
    server = HostileServer()
    try:
        url = server.route("/half.tar.gz", half_then_wait(data, half_sent))
        api = registry.api()
        thread = in_background(lambda: api.link("crash", url, version="1.0.0"))
        assert half_sent.wait(WAIT)
        wait_for(lambda: staged_bytes(registry) > 0, "the fetched half to reach the staging file")
        registry.kill_and_restart()
        thread.join(WAIT)
        api.close()
    finally:
        server.close()
    assert registry.check_consistent() == []
    registry.known.add(hashlib.sha256(data).hexdigest())
    server = HostileServer()
    try:
        api = registry.api()
        response = api.link("crash", server.route("/whole.tar.gz", serve(data)), version="1.0.0")
        api.close()
    finally:
        server.close()
    assert response.status_code == 201, response.text
    registry.check_consistent()


def test_kill_during_a_commit(crashable: Callable[..., Crashable]) -> None:
    """The blob is in place and the record transaction waits for the database
    (the test holds its write lock): SIGKILL there. No record may point at a
    blob that is not whole, and the blob itself is whole."""
    registry = crashable()
    data = package(salt="commit")
    registry.known.add(hashlib.sha256(data).hexdigest())
    blobs_before = set(blob_files(registry.packages))
    lock = sqlite3.connect(registry.root / "registry.db", timeout=WAIT, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        api = registry.api()
        thread = in_background(lambda: api.upload("crash", data, version="1.0.0"))
        wait_for(lambda: set(blob_files(registry.packages)) - blobs_before != set(), "the blob to be put")
        registry.process.kill()
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    thread.join(WAIT)
    api.close()
    registry.process.start()
    assert registry.check_consistent() == []
    again = registry.upload("crash", data, version="1.0.0")
    assert again.status_code == 201, again.text
    registry.check_consistent()


@pytest.mark.parametrize("point", ["put-after", "delete-before"])
def test_kill_during_an_overwrite(crashable: Callable[..., Crashable], tmp_path: Path, point: str) -> None:
    """``put-after``: the new blob is in place, the record still names the old
    one. ``delete-before``: the record names the new blob, the old one is not
    deleted yet. Either way the record and its blob agree after a restart."""
    marker = tmp_path / f"paused-{point}"
    registry = crashable(storage=crash_plugin.NAME, env={crash_plugin.MARKER_ENV: str(marker)})
    old, new = package(salt="old-bytes"), package(salt="new-bytes")
    first = registry.upload("crash", old, version="1.0.0")
    assert first.status_code == 201, first.text
    # Arm the pause point only now (a restart with it set in the environment).
    registry.kill_and_restart({crash_plugin.POINT_ENV: point})
    registry.known.add(hashlib.sha256(new).hexdigest())
    api = registry.api()
    thread = in_background(lambda: api.upload("crash", new, version="1.0.0", allow_overwrite="true"))
    wait_for(marker.exists, f"the server to pause at {point}")
    registry.kill_and_restart({crash_plugin.POINT_ENV: None})
    thread.join(WAIT)
    api.close()
    (record,) = registry.check_consistent()
    expected = old if point == "put-after" else new
    assert record["sha256"] == hashlib.sha256(expected).hexdigest()
    assert record["id"] == first.json()["id"]
    # And the overwrite can simply be retried.
    retry = registry.upload("crash", new, version="1.0.0", allow_overwrite="true")
    assert retry.status_code == 200, retry.text
    (record,) = registry.check_consistent()
    assert record["sha256"] == hashlib.sha256(new).hexdigest()


def test_kill_with_many_uploads_in_flight(crashable: Callable[..., Crashable]) -> None:
    """Several uploads of different versions at once, some half sent: SIGKILL."""
    registry = crashable()
    done = [registry.upload("crash", package(salt=f"done-{i}"), version=f"0.{i}") for i in range(3)]
    assert all(r.status_code == 201 for r in done)
    sockets = []
    try:
        for i in range(4):
            data = big_package(f"flight-{i}")
            registry.known.add(hashlib.sha256(data).hexdigest())
            body, content_type = multipart(data, f"2.{i}")
            head = (
                f"POST /bkapps/applications/crash/modules/default/source_package/ HTTP/1.1\r\n"
                f"Host: x\r\nAuthorization: Bearer {registry.token}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            client = socket.create_connection(("127.0.0.1", registry.process.port), timeout=WAIT)
            sockets.append(client)
            client.sendall(head + body[: len(body) * (i + 1) // 5])
        wait_for(lambda: staged_bytes(registry) > 0, "uploads to reach staging")
        registry.kill_and_restart()
    finally:
        for client in sockets:
            client.close()
    records = registry.check_consistent()
    assert sorted(r["version"] for r in records) == ["0.0", "0.1", "0.2"]


def test_second_serve_on_a_taken_port_spares_uploads_in_flight(crashable: Callable[..., Crashable]) -> None:
    """A ``registry serve`` started by mistake on the running server's port
    fails to bind before its start-up could empty the shared staging folder,
    so the upload in flight still completes."""
    registry = crashable()
    data = big_package("second-serve")
    registry.known.add(hashlib.sha256(data).hexdigest())
    body, content_type = multipart(data, "1.0.0")
    head = (
        f"POST /bkapps/applications/crash/modules/default/source_package/ HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {registry.token}\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", registry.process.port), timeout=WAIT) as client:
        client.sendall(head + body[: len(body) // 2])
        wait_for(lambda: staged_bytes(registry) > 0, "part of the upload to reach the staging file")
        second = registry.process.cli("serve", "--port", str(registry.process.port), check=False)
        assert second.returncode != 0
        assert "address already in use" in second.stderr.lower()
        assert staged_bytes(registry) > 0, "the second serve emptied the running server's staging folder"
        client.sendall(body[len(body) // 2:])
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
    (record,) = registry.check_consistent()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


def test_sweep_empties_the_staging_folder(tmp_path: Path) -> None:
    """Whatever a crash left in staging goes at start-up, and nothing outside it."""
    from registry.staging import sweep_staging

    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "upload-1.part").write_bytes(b"partial")
    (staging / "upload-2.part").write_bytes(b"")
    keep = tmp_path / "blob-outside"
    keep.write_bytes(b"keep me")
    (staging / "link-out").symlink_to(keep)
    (staging / "dangling").symlink_to(tmp_path / "nothing")
    (staging / "dir-link-out").symlink_to(tmp_path, target_is_directory=True)
    assert sweep_staging(staging) == 5
    assert list(staging.iterdir()) == []
    assert keep.read_bytes() == b"keep me"
    assert sweep_staging(tmp_path / "missing") == 0
