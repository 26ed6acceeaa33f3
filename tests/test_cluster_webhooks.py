"""Webhooks of two ``registry serve`` instances on one PostgreSQL database and
one S3 bucket (moto's server): the outbox both drain delivers each event once,
and an instance killed while delivering leaves the event to the other, which
delivers it again, with the same ``X-Registry-Event-Id``, once the lease lapses."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_plugins.postgres_store import PostgresStore
from registry_plugins.store_sqlite import SQLiteStore

from registry.records import DELIVERED, FAILED, PENDING, Delivery
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    free_port,
    package,
    start_registry,
)
from tests.test_crash_safety import WAIT, wait_for
from tests.test_postgres import pg_config, run, with_password
from tests.test_s3 import s3_config
from tests.test_storage_conformance import DUMMY_AWS_ENV, MotoServer

#: seconds per delivery attempt; the lease is this plus the plugin's margin
TIMEOUT = 6


class Receiver:
    """A webhook receiver on loopback. Records every attempt as (event id,
    body); with ``hold_first``, the first attempt is never answered (the
    handler waits until :meth:`close`), later ones get 204."""

    def __init__(self, hold_first: bool = False, port: int = 0) -> None:
        self.attempts: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.attempts.append((self.headers.get("X-Registry-Event-Id", ""), body))
                    held = hold_first and len(receiver.attempts) == 1
                if held:
                    receiver.released.wait()
                    return
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def seen(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return list(self.attempts)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def start_cluster(tmp_path: Path, pg_url: str, moto: MotoServer, bucket: str,
                  receiver: Receiver) -> list[RegistryProcess]:
    instances = []
    for name in ("a", "b"):
        root = tmp_path / name
        tables = s3_config(root, moto, bucket)
        shared = pg_config(root, pg_url)
        tables["database"], tables["ui"] = shared["database"], shared["ui"]
        tables["webhooks"] = {"urls": [receiver.url], "max_attempts": 3, "timeout": TIMEOUT}
        instances.append(start_registry(root, tables, env=DUMMY_AWS_ENV))
    return instances


@pytest.fixture
def moto_bucket() -> Iterator[tuple[MotoServer, str]]:
    moto = MotoServer()
    try:
        yield moto, moto.create_bucket("hooks")
    finally:
        moto.stop()


@pytest.fixture
def outbox(pg_url: str) -> Iterator[PostgresStore]:
    """The instances' database, read directly to see the outbox's rows."""
    store = PostgresStore(pg_url, pool_size=1)
    yield store
    store.close()


def deliveries(store: PostgresStore) -> list[Delivery]:
    return store.page_deliveries(0, 1000)


def test_each_event_is_delivered_once_by_one_of_two_instances(
        tmp_path: Path, pg_url: str, moto_bucket: tuple[MotoServer, str], outbox: PostgresStore) -> None:
    receiver = Receiver()
    instances = start_cluster(tmp_path, pg_url, *moto_bucket, receiver)
    a, b = instances
    token = a.token("alice")
    apis = [Api(a.url, token), Api(b.url, token)]
    try:
        expected = []
        for n in range(8):
            api, other = apis[n % 2], apis[(n + 1) % 2]
            made = api.upload(f"hooks{n % 3}", package(f"1.0.{n}", salt=str(n)), version=f"1.0.{n}")
            assert made.status_code == 201, made.text
            expected.append(("stored", made.json()["id"]))
            if n % 4 == 0:  # a change on one instance, undone on the other
                assert other.delete(f"hooks{n % 3}", made.json()["id"]).status_code == 204
                assert api.restore(f"hooks{n % 3}", made.json()["id"]).status_code == 200
                expected += [("deleted", made.json()["id"]), ("restored", made.json()["id"])]
        # every delivery settled: nothing more will be sent
        wait_for(lambda: outbox.count_deliveries_by_state()[PENDING] == 0 and len(receiver.seen()) >= len(expected),
                 "the outbox to be drained")
        assert outbox.count_deliveries_by_state() == {PENDING: 0, DELIVERED: len(expected), FAILED: 0}
        seen = receiver.seen()
        ids = [event_id for event_id, _ in seen]
        assert len(ids) == len(set(ids)) == len(expected), "each event exactly once"
        assert sorted((body["event"], body["id"]) for _, body in seen) == sorted(expected)
        assert {d.event_id for d in deliveries(outbox)} == set(ids)
        assert all(d.attempts == 0 and d.holder is None for d in deliveries(outbox))
    finally:
        for api in apis:
            api.close()
        for instance in instances:
            instance.stop()
        receiver.close()


def test_an_instance_killed_while_delivering_leaves_the_event_to_the_other(
        tmp_path: Path, pg_url: str, moto_bucket: tuple[MotoServer, str], outbox: PostgresStore) -> None:
    receiver = Receiver(hold_first=True)
    instances = start_cluster(tmp_path, pg_url, *moto_bucket, receiver)
    by_pid = {instance.process.pid: instance for instance in instances if instance.process is not None}
    token = instances[0].token("alice")
    api = Api(instances[0].url, token)
    try:
        made = api.upload("crash", package("1.0.0"), version="1.0.0")
        assert made.status_code == 201, made.text
        wait_for(lambda: len(receiver.seen()) == 1, "the first attempt to reach the receiver")
        [claimed] = deliveries(outbox)
        assert claimed.state == PENDING and claimed.holder is not None
        holder_pid = int(claimed.holder.split(":")[1])
        assert holder_pid in by_pid, f"{claimed.holder} is neither instance ({sorted(by_pid)})"
        by_pid[holder_pid].kill()
        survivor = next(instance for pid, instance in by_pid.items() if pid != holder_pid)

        # the lease (TIMEOUT plus its margin) lapses, then the survivor delivers it again
        deadline = time.monotonic() + TIMEOUT + WAIT
        while time.monotonic() < deadline and outbox.count_deliveries_by_state()[DELIVERED] == 0:
            time.sleep(0.1)
        seen = receiver.seen()
        assert len(seen) == 2, seen
        (first_id, first), (second_id, second) = seen
        assert first_id == second_id and first == second == {**first, "event": "stored", "id": made.json()["id"]}
        [done] = deliveries(outbox)
        assert done.state == DELIVERED and done.attempts == 0, "the attempt cut short by the crash is not counted"
        assert claimed.lease_until is not None and done.updated >= claimed.lease_until, \
            "delivered again only after the dead holder's lease lapsed"
        survivor_api = Api(survivor.url, token)
        try:
            assert survivor_api.list("crash").json()["count"] == 1
        finally:
            survivor_api.close()
    finally:
        api.close()
        for instance in instances:
            instance.stop()
        receiver.close()


def test_a_pending_delivery_moves_with_copy_records(tmp_path: Path, pg_url: str) -> None:
    """An event a single SQLite registry could not deliver yet is delivered,
    with its id, by an instance on the PostgreSQL database it was copied to."""
    port = free_port()  # nothing listens yet: every attempt fails and backs off
    hooks = {"urls": [f"http://127.0.0.1:{port}/hook"], "max_attempts": 10, "timeout": 1}
    single = base_config(tmp_path / "single")
    single["webhooks"] = hooks
    server = start_registry(tmp_path / "single", single)
    api = Api(server.url, server.token("alice"))
    try:
        made = api.upload("moved", package("1.0.0"), version="1.0.0")
        assert made.status_code == 201, made.text
    finally:
        api.close()
        server.stop()
    store = SQLiteStore(tmp_path / "single" / "registry.db")
    [waiting] = store.page_deliveries(0, 10)
    store.close()
    assert waiting.state == PENDING and waiting.attempts >= 1 and waiting.holder is None

    copied = run(server.config, "copy-records", "--to", with_password(pg_url))
    assert copied.returncode == 0 and "1 webhook delivery(ies)" in copied.stdout, copied.stdout + copied.stderr
    receiver = Receiver(port=port)
    tables = pg_config(tmp_path / "cluster", pg_url)
    tables["webhooks"] = hooks
    instance = start_registry(tmp_path / "cluster", tables)
    target = PostgresStore(pg_url, pool_size=1)
    try:
        wait_for(lambda: target.count_deliveries_by_state()[DELIVERED] == 1, "the copied delivery to be made")
        [(event_id, body)] = receiver.seen()
        assert event_id == waiting.event_id and body["id"] == made.json()["id"] and body["event"] == "stored"
    finally:
        target.close()
        instance.stop()
        receiver.close()
