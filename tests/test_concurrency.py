"""Stress: many clients at once, and the SQLite write lock held from outside.

Exactly one upload of a version wins; the others get 409 (other bytes), 200
(identical bytes) or 200 overwrites, and the final record and its single
blob agree. Writers queue on the database instead of failing: no client and
no log line ever sees "database is locked".
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.service import WRITE_THREADS
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    package,
    start_registry,
)
from tests.hostile_servers import HostileServer, serve

CLIENTS = 24
WAIT = 30.0


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, str]]:
    root = tmp_path_factory.mktemp("concurrency")
    process = start_registry(root, base_config(root))
    yield process, process.token("stress")
    process.stop()


@pytest.fixture(scope="module")
def origin() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


def together(count: int, action: Callable[[Api, int], httpx.Response], registry: RegistryProcess,
             token: str) -> list[httpx.Response]:
    """Run ``action`` from ``count`` clients released at the same moment."""
    barrier = threading.Barrier(count)
    clients = [Api(registry.url, token) for _ in range(count)]

    def run(index: int) -> httpx.Response:
        barrier.wait(WAIT)
        return action(clients[index], index)

    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(run, range(count)))
    finally:
        for client in clients:
            client.close()


def blobs(registry: RegistryProcess, code: str) -> list[Path]:
    return sorted(blob_files(registry.config.parent / "packages" / code))


def blobs_settled(registry: RegistryProcess, code: str, most: int, limit: float = 10.0) -> int:
    """How many blobs ``code`` has once the count reaches ``most`` or stays
    the same for a second (at most ``limit`` seconds, well within the
    database's timeout, so no upload waiting for its lock gives up meanwhile).

    Fewer than ``most`` is possible when a write thread is busy elsewhere,
    such as the job runner's poll, itself waiting for the held lock."""
    deadline = time.monotonic() + limit
    count, since = len(blobs(registry, code)), time.monotonic()
    while count < most and time.monotonic() < deadline and time.monotonic() - since < 1.0:
        time.sleep(0.02)
        now = len(blobs(registry, code))
        if now != count:
            count, since = now, time.monotonic()
    return count


def no_lock_errors(responses: list[httpx.Response], registry: RegistryProcess) -> None:
    for response in responses:
        assert response.status_code < 500, response.text
        assert "locked" not in response.text.lower()
    log = registry.log.read_text()
    assert "database is locked" not in log
    assert "Traceback" not in log


def record_and_blob_agree(registry: RegistryProcess, token: str, code: str, version: str) -> dict[str, Any]:
    api = Api(registry.url, token)
    try:
        listing = api.list(code, include_deleted="true").json()
        (record,) = [r for r in listing["results"] if r["version"] == version]
        body = api.download(code, record["id"]).content
    finally:
        api.close()
    assert hashlib.sha256(body).hexdigest() == record["sha256_signature"]
    assert len(body) == int(record["package_size"])
    (blob,) = blobs(registry, code)
    assert blob.read_bytes() == body
    return record  # type: ignore[no-any-return]


def test_many_clients_different_bytes_one_wins(busy: tuple[RegistryProcess, str], code: str) -> None:
    registry, token = busy
    payloads = [package(salt=f"{code}-{i}") for i in range(CLIENTS)]
    responses = together(CLIENTS, lambda api, i: api.upload(code, payloads[i], version="1.0.0"), registry, token)
    no_lock_errors(responses, registry)
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: CLIENTS - 1}, statuses
    (winner,) = [i for i, r in enumerate(responses) if r.status_code == 201]
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "PACKAGE_ALREADY_EXISTS"
            assert response.json()["data"]["sha256_signature"] == hashlib.sha256(payloads[winner]).hexdigest()
    record = record_and_blob_agree(registry, token, code, "1.0.0")
    assert record["sha256_signature"] == hashlib.sha256(payloads[winner]).hexdigest()


def test_many_clients_identical_bytes(busy: tuple[RegistryProcess, str], code: str) -> None:
    registry, token = busy
    data = package(salt=code)
    responses = together(CLIENTS, lambda api, i: api.upload(code, data, version="1.0.0"), registry, token)
    no_lock_errors(responses, registry)
    assert Counter(r.status_code for r in responses) == {201: 1, 200: CLIENTS - 1}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.json()["created"] for r in responses}) == 1
    record_and_blob_agree(registry, token, code, "1.0.0")


def test_many_clients_mixed_bytes(busy: tuple[RegistryProcess, str], code: str) -> None:
    """Half send bytes A, half send their own: whoever wins, the rest follow the rules."""
    registry, token = busy
    common = package(salt=code + "-common")
    payloads = [common if i % 2 == 0 else package(salt=f"{code}-{i}") for i in range(CLIENTS)]
    responses = together(CLIENTS, lambda api, i: api.upload(code, payloads[i], version="2.0"), registry, token)
    no_lock_errors(responses, registry)
    (winner,) = [i for i, r in enumerate(responses) if r.status_code == 201]
    for i, response in enumerate(responses):
        if i == winner:
            continue
        if payloads[i] == payloads[winner]:
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 409, response.text
    record = record_and_blob_agree(registry, token, code, "2.0")
    assert record["sha256_signature"] == hashlib.sha256(payloads[winner]).hexdigest()


def test_many_clients_overwriting(busy: tuple[RegistryProcess, str], code: str) -> None:
    registry, token = busy
    payloads = [package(salt=f"{code}-{i}") for i in range(CLIENTS)]
    responses = together(
        CLIENTS, lambda api, i: api.upload(code, payloads[i], version="3.0", allow_overwrite="true"), registry, token
    )
    no_lock_errors(responses, registry)
    assert Counter(r.status_code for r in responses) == {201: 1, 200: CLIENTS - 1}
    assert len({r.json()["id"] for r in responses}) == 1
    record = record_and_blob_agree(registry, token, code, "3.0")
    assert record["sha256_signature"] in {hashlib.sha256(p).hexdigest() for p in payloads}


def test_many_link_and_file_uploads_overwriting(busy: tuple[RegistryProcess, str], origin: HostileServer,
                                                code: str) -> None:
    """Both routes at once on one version, with overwrite: still one record, one blob."""
    registry, token = busy
    payloads = [package(salt=f"{code}-{i}") for i in range(CLIENTS)]
    urls = [origin.route(f"/{code}/{i}.tar.gz", serve(payloads[i])) for i in range(CLIENTS)]

    def act(api: Api, i: int) -> httpx.Response:
        if i % 2:
            return api.link(code, urls[i], version="4.0", allow_overwrite=True)
        return api.upload(code, payloads[i], version="4.0", allow_overwrite="true")

    responses = together(CLIENTS, act, registry, token)
    no_lock_errors(responses, registry)
    assert Counter(r.status_code for r in responses) == {201: 1, 200: CLIENTS - 1}
    record_and_blob_agree(registry, token, code, "4.0")


def test_many_versions_with_reads_and_deletes(busy: tuple[RegistryProcess, str], code: str) -> None:
    """Writers of many versions, readers and soft deletes, all at once."""
    registry, token = busy
    seed = Api(registry.url, token)
    try:
        victim = seed.upload(code, package(salt=code + "-victim"), version="victim").json()["id"]
    finally:
        seed.close()
    count = 40

    def act(api: Api, i: int) -> httpx.Response:
        kind = i % 4
        if kind == 0:
            return api.list(code)
        if kind == 1:
            return api.delete(code, victim) if i % 8 == 1 else api.restore(code, victim)
        return api.upload(code, package(salt=f"{code}-{i}"), version=f"5.{i}")

    responses = together(count, act, registry, token)
    no_lock_errors(responses, registry)
    uploads = [r for i, r in enumerate(responses) if i % 4 in (2, 3)]
    assert all(r.status_code == 201 for r in uploads), [r.text for r in uploads if r.status_code != 201]
    api = Api(registry.url, token)
    try:
        listing = api.list(code, include_deleted="true", limit=1000).json()
    finally:
        api.close()
    assert listing["count"] == len(uploads) + 1
    assert len(blobs(registry, code)) == len(uploads) + 1


def test_writers_queue_behind_a_held_write_lock(busy: tuple[RegistryProcess, str], code: str) -> None:
    """Another process holds SQLite's write lock while uploads arrive: as many
    as there are write threads put their blob and wait for the lock, the rest
    wait for a write thread (no other thread is held by a locked database);
    every one commits once the lock is released."""
    registry, token = busy
    count = WRITE_THREADS + 4
    payloads = [package(salt=f"{code}-{i}") for i in range(count)]
    lock = sqlite3.connect(registry.config.parent / "registry.db", timeout=WAIT, isolation_level=None)
    results: list[httpx.Response] = []
    try:
        lock.execute("BEGIN IMMEDIATE")
        worker = threading.Thread(target=lambda: results.extend(together(
            count, lambda api, i: api.upload(code, payloads[i], version=f"6.{i}"), registry, token)))
        worker.start()
        reached = blobs_settled(registry, code, WRITE_THREADS)
        time.sleep(0.5)  # room for any upload that would wrongly go further
        assert reached > 0, "uploads did not reach the commit"
        assert len(blobs(registry, code)) <= WRITE_THREADS, "more uploads than write threads went on"
        assert not results  # every one of them is waiting for the database
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    worker.join(WAIT)
    assert len(results) == count
    no_lock_errors(results, registry)
    assert all(r.status_code == 201 for r in results), [r.text for r in results]


def test_identical_retries_under_a_held_lock(busy: tuple[RegistryProcess, str], code: str) -> None:
    """The same bytes sent by many clients while the lock is held: one 201, the rest 200."""
    registry, token = busy
    data = package(salt=code)
    lock = sqlite3.connect(registry.config.parent / "registry.db", timeout=WAIT, isolation_level=None)
    results: list[httpx.Response] = []
    try:
        lock.execute("BEGIN IMMEDIATE")
        worker = threading.Thread(target=lambda: results.extend(together(
            CLIENTS, lambda api, i: api.upload(code, data, version="7.0"), registry, token)))
        worker.start()
        blobs_settled(registry, code, min(CLIENTS, WRITE_THREADS))
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    worker.join(WAIT)
    no_lock_errors(results, registry)
    assert Counter(r.status_code for r in results) == {201: 1, 200: CLIENTS - 1}
    record_and_blob_agree(registry, token, code, "7.0")
