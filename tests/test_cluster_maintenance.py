"""``registry gc`` and ``registry fsck`` run while two ``registry serve``
instances (one PostgreSQL database, one S3 bucket on moto's server, one shared
staging root) take uploads: neither collects an upload another process has in
flight, however old its staged bytes look, and gc still removes the staging
folder of a process that is gone."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.staging_folders import LOCK_NAME, PREFIX
from tests.helpers import (
    Api,
    RegistryProcess,
    package,
    registry_command,
    start_registry,
)
from tests.test_crash_safety import WAIT, big_package, multipart, wait_for
from tests.test_postgres import pg_config
from tests.test_s3 import s3_config
from tests.test_storage_conformance import DUMMY_AWS_ENV, MotoServer

#: older than gc's default grace period (1 hour)
AGED = 3 * 3600


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[Path, list[RegistryProcess]]]:
    """Two instances staging under one folder, as hosts sharing one root do."""
    moto = MotoServer()
    bucket = moto.create_bucket("maintenance")
    staging = tmp_path / "shared-staging"
    instances: list[RegistryProcess] = []
    try:
        for name in ("a", "b"):
            root = tmp_path / name
            tables = s3_config(root, moto, bucket)
            tables["storage"]["staging_dir"] = str(staging)
            shared = pg_config(root, pg_url)
            tables["database"], tables["ui"] = shared["database"], shared["ui"]
            instances.append(start_registry(root, tables, env=DUMMY_AWS_ENV))
        yield staging, instances
    finally:
        for instance in instances:
            instance.stop()
        moto.stop()


def folder_of(staging: Path, instance: RegistryProcess) -> Path:
    """The staging folder ``instance``'s process holds (named after its pid)."""
    assert instance.process is not None
    [folder] = [p for p in staging.glob(f"{PREFIX}*") if p.name.split("-")[-2] == str(instance.process.pid)]
    return folder


def staged_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME)


class SlowUpload:
    """An upload sent in two halves over a raw socket: in flight between them."""

    def __init__(self, instance: RegistryProcess, token: str, code: str, salt: str) -> None:
        self.data = big_package(salt)
        self.body, content_type = multipart(self.data, "1.0.0")
        head = (
            f"POST /bkapps/applications/{code}/modules/default/source_package/ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{instance.port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(self.body)}\r\n\r\n"
        ).encode()
        self.half = len(self.body) // 2
        self.socket = socket.create_connection(("127.0.0.1", instance.port), timeout=WAIT)
        self.socket.sendall(head + self.body[:self.half])

    def finish(self) -> tuple[int, str]:
        """Send the rest; the status and body of the answer."""
        self.socket.sendall(self.body[self.half:])
        answer = b""
        while chunk := self.socket.recv(65536):
            answer += chunk
        self.socket.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()


def age(path: Path) -> None:
    """Make everything under ``path`` look written :data:`AGED` seconds ago."""
    old = time.time() - AGED
    for item in [path, *path.rglob("*")]:
        os.utime(item, (old, old))


def test_gc_and_fsck_never_collect_uploads_in_flight(
        tmp_path: Path, cluster: tuple[Path, list[RegistryProcess]]) -> None:
    staging, (a, b) = cluster
    token = a.token("alice")
    apis = [Api(a.url, token), Api(b.url, token)]
    slow = [SlowUpload(a, token, "slowa", "a"), SlowUpload(b, token, "slowb", "b")]
    folders = [folder_of(staging, a), folder_of(staging, b)]
    for folder in folders:
        wait_for(lambda folder=folder: staged_bytes(folder) > 0, f"part of an upload to be staged in {folder.name}")
    # Uploads in flight for hours, as far as file times tell; and the folder
    # of a process that died (nobody holds its lock).
    for folder in folders:
        age(folder)
    dead = staging / f"{PREFIX}elsewhere-1-dead"
    dead.mkdir()
    (dead / LOCK_NAME).touch()
    (dead / "upload-left-behind").write_bytes(b"x" * 1000)
    age(dead)
    held = {folder: staged_bytes(folder) for folder in folders}

    # uploads and overwrites keep going on both instances meanwhile
    stop = threading.Event()
    outcomes: list[tuple[int, str, bytes]] = []

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            api = apis[n % 2]
            version = f"1.0.{n // 2}"
            data = package(version, salt=f"t{n}")
            answer = api.upload("busy", data, version=version, allow_overwrite=True)
            outcomes.append((answer.status_code, answer.text, data))
            n += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        env = {**os.environ, **DUMMY_AWS_ENV}
        gc = subprocess.Popen([*registry_command(), "--config", str(a.config), "gc"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        fsck = subprocess.Popen([*registry_command(), "--config", str(b.config), "fsck"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        gc_out, gc_err = gc.communicate(timeout=120)
        fsck_out, fsck_err = fsck.communicate(timeout=120)
        wait_for(lambda: len(outcomes) >= 4, "uploads to both instances during the runs")
    finally:
        stop.set()
        worker.join()

    assert gc.returncode == 0, gc_out + gc_err
    assert f"removed stale staging file {dead} (abandoned by its process)" in gc_out, gc_out
    assert "1 staging file(s)" in gc_out and "0 orphan blob(s)" in gc_out, gc_out
    assert fsck.returncode == 0 and " 0 problem(s)" in fsck_out, fsck_out + fsck_err
    assert not dead.exists()
    for folder, size in held.items():
        assert folder.name not in gc_out
        assert staged_bytes(folder) == size, f"{folder.name}'s upload in flight was touched"

    # the uploads in flight complete, and each instance serves the other's
    for upload in slow:
        status, text = upload.finish()
        assert status == 201, text
        record = httpx.Response(status, text=text).json()
        assert record["sha256_signature"] == hashlib.sha256(upload.data).hexdigest()
    assert apis[1].download("slowa", apis[1].list("slowa").json()["results"][0]["id"]).content == slow[0].data
    assert apis[0].download("slowb", apis[0].list("slowb").json()["results"][0]["id"]).content == slow[1].data
    for status, text, _ in outcomes:
        assert status in (200, 201), text
    listed = apis[0].list("busy", limit=100).json()["results"]
    newest = {}
    for status, text, data in outcomes:
        newest[httpx.Response(status, text=text).json()["version"]] = data
    assert {r["version"]: r["sha256_signature"] for r in listed} == {
        version: hashlib.sha256(data).hexdigest() for version, data in newest.items()}
    again = subprocess.run([*registry_command(), "--config", str(a.config), "fsck"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, **DUMMY_AWS_ENV}, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    for api in apis:
        api.close()


def test_gc_removes_abandoned_staging_folders_after_the_grace_period(tmp_path: Path) -> None:
    from tests.helpers import base_config
    from tests.test_postgres import run, write_config

    config = write_config(tmp_path, base_config(tmp_path))
    staging = tmp_path / "packages" / ".staging"
    old, new = staging / f"{PREFIX}gone-1-aaaa", staging / f"{PREFIX}gone-2-bbbb"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / LOCK_NAME).touch()
        (folder / "upload-x").write_bytes(b"x" * 10)
    age(old)
    dry = run(config, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove stale staging file {old} (abandoned by its process) (10 B)" in dry.stdout, dry.stdout
    assert str(new) not in dry.stdout, "made within the grace period: its process may be starting"
    assert old.exists()
    done = run(config, "gc")
    assert done.returncode == 0 and f"removed stale staging file {old}" in done.stdout, done.stdout
    assert not old.exists() and new.exists()
