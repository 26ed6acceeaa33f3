"""Package events: the audit table and webhooks, through a live server."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Api, base_config, package, start_registry


class Receiver:
    """A local webhook receiver that fails the first ``failures`` deliveries."""

    def __init__(self, failures: int) -> None:
        self.bodies: list[tuple[bytes, str]] = []
        self.attempts = 0
        self.event_ids: list[str] = []  # X-Registry-Event-Id of every attempt
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                receiver.event_ids.append(self.headers.get("X-Registry-Event-Id", ""))
                if receiver.attempts <= failures:
                    self.send_response(500)
                else:
                    receiver.bodies.append((body, self.headers.get("X-Registry-Signature", "")))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int) -> list[tuple[bytes, str]]:
        deadline = time.monotonic() + 20
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.bodies

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=1)
    yield r
    r.close()


def test_audit_table_and_webhooks(tmp_path: Path, receiver: Receiver) -> None:
    tables = base_config(tmp_path)
    tables["webhooks"] = {"urls": [receiver.url], "max_attempts": 3, "secret": "s3cret"}
    server = start_registry(tmp_path, tables)
    try:
        api = Api(server.url, server.token("carol"))
        first = api.upload("evt", package("1.0.0", salt="a"))
        assert first.status_code == 201
        package_id = first.json()["id"]
        assert api.upload("evt", package("1.0.0", salt="b"), allow_overwrite="true").status_code == 200
        assert api.delete("evt", package_id).status_code == 204
        assert api.restore("evt", package_id).status_code == 200
        api.close()

        delivered = receiver.wait_for(4)
        assert receiver.attempts == 5  # the first delivery failed once and was retried
        ids = receiver.event_ids
        assert ids[0] == ids[1] and len(set(ids)) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), \
            "one id per event, the same on its retry"
        kinds = [json.loads(body)["event"] for body, _ in delivered]
        assert kinds == ["stored", "overwritten", "deleted", "restored"]
        for body, signature in delivered:
            assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        stored = json.loads(delivered[0][0])
        assert stored["operator"] == "carol"
        assert stored["application"] == "evt"
        assert stored["id"] == package_id

        with sqlite3.connect(tmp_path / "registry.db") as db:
            rows = db.execute("SELECT kind, operator, package_id, sha256 FROM events ORDER BY id").fetchall()
        assert [row[0] for row in rows] == ["stored", "overwritten", "deleted", "restored"]
        assert {row[1] for row in rows} == {"carol"}
        assert rows[0][3] == hashlib.sha256(package("1.0.0", salt="a")).hexdigest()
        assert rows[1][3] == hashlib.sha256(package("1.0.0", salt="b")).hexdigest()

        listed = json.loads(server.cli("events", "--json").stdout)
        assert [e["kind"] for e in listed] == ["restored", "deleted", "overwritten", "stored"]
        assert listed[-1]["sha256"] == rows[0][3]
        table = server.cli("events", "--app", "evt").stdout
        assert "overwritten" in table and "carol" in table
        # times as every CLI table shows them (records, tokens): YYYY-MM-DD HH:MM:SS
        first_row = table.splitlines()[1].split()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", first_row[1]) and re.fullmatch(r"\d\d:\d\d:\d\d", first_row[2])
        assert server.cli("events", "--app", "other", "--json").stdout.strip() == "[]"
    finally:
        server.stop()


def test_dead_webhook_never_fails_an_upload(tmp_path: Path) -> None:
    """... and the log lines about it name the URL without its secrets."""
    from tests.helpers import free_port

    url = f"http://hookuser:HOOKPASSx@127.0.0.1:{free_port()}/gone?token=HOOKTOKENx&sig=HOOKSIGx"
    tables = base_config(tmp_path)
    tables["webhooks"] = {"urls": [url], "max_attempts": 2, "timeout": 1}
    server = start_registry(tmp_path, tables)
    try:
        api = Api(server.url, server.token())
        assert api.upload("dead", package("1.0.0")).status_code == 201
        api.close()
    finally:
        server.stop()  # drains the webhook queue: every attempt is logged by now
    log = server.log.read_text()
    assert "gave up after 2 attempts" in log
    for secret in ("hookuser", "HOOKPASSx", "HOOKTOKENx", "HOOKSIGx"):
        assert secret not in log


def test_concurrent_uploads_each_leave_one_event(tmp_path: Path) -> None:
    """Events of concurrent requests are written together (one transaction for
    those that wait on the same write); each upload still has its own event,
    in the trail before its answer."""
    from concurrent.futures import ThreadPoolExecutor

    registry = start_registry(tmp_path, base_config(tmp_path))
    try:
        token = registry.token("burst")

        def upload(n: int) -> int:
            api = Api(registry.url, token)
            try:
                answer = api.upload("burst", package(f"1.0.{n}", salt=f"burst-{n}"))
                assert answer.status_code == 201, answer.text
                # the event is committed before the answer: it is there at once
                events = sqlite3.connect(tmp_path / "registry.db").execute(
                    "SELECT COUNT(*) FROM events WHERE package_id = ?", (answer.json()["id"],)).fetchone()[0]
                assert events == 1
                return int(answer.json()["id"])
            finally:
                api.close()

        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(upload, range(48)))
        with sqlite3.connect(tmp_path / "registry.db") as db:
            rows = db.execute("SELECT package_id, kind FROM events ORDER BY id").fetchall()
        assert sorted(package_id for package_id, _ in rows) == sorted(ids)
        assert {kind for _, kind in rows} == {"stored"}
    finally:
        registry.stop()


@pytest.mark.anyio
async def test_an_event_the_store_refuses_costs_no_other_request_its_event(tmp_path: Path) -> None:
    """Events written together, one of them refused: the others are still kept
    (written one by one), and only the refused one's request hears of it."""
    import asyncio
    from types import SimpleNamespace

    import anyio.to_thread
    from registry_plugins.audit import EventWriter
    from registry_plugins.store_sqlite import SQLiteStore

    from registry.errors import DatabaseUnavailable
    from registry.records import AuditEvent, utc_now

    class RefusingStore(SQLiteStore):
        def add_events(self, events: Any) -> Any:
            if any(event.version == "bad" for event in events):
                raise DatabaseUnavailable("refused")
            return super().add_events(events)

    store = RefusingStore(tmp_path / "registry.db")
    store.migrate()
    try:
        registry = SimpleNamespace(records=store, write=lambda call, *args: anyio.to_thread.run_sync(call, *args))
        writer = EventWriter(registry)  # type: ignore[arg-type]
        versions = ["1.0", "1.1", "bad", "1.2", "1.3"]
        events = [AuditEvent(kind="stored", time=utc_now(), operator="a", code="app", module="m", package_id=n,
                             version=version, sha256="ab" * 32, package_size=1, payload={})
                  for n, version in enumerate(versions)]
        # all five are waiting before the writer first runs: they go as one batch
        outcomes = await asyncio.gather(*(writer.add(event) for event in events), return_exceptions=True)
        assert [isinstance(outcome, DatabaseUnavailable) for outcome in outcomes] == [False, False, True, False, False]
        assert sorted(event.version for event in store.recent_events()) == ["1.0", "1.1", "1.2", "1.3"]
    finally:
        store.close()
