"""The database going away, restarting or staying locked: 503 ``DATABASE_UNAVAILABLE``
with ``Retry-After``, nothing half-written, reads unaffected by waiting writers,
and service again once the database is back, without restarting the registry."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from registry.tus import encode_metadata
from tests import helpers
from tests.helpers import Api, base_config, blob_files, package, start_registry
from tests.pg import PgServer
from tests.test_postgres import PASSWORD, pg_config


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "DATABASE_UNAVAILABLE"
    assert response.headers["bkapi-error-code"] == "DATABASE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) > 0


def staged_files(packages_root: Path) -> list[Path]:
    """Upload files left in the filesystem storage's staging folder."""
    return helpers.staged_files(packages_root / ".staging")


def wait_until_ready(url: str) -> None:
    """Poll /readyz until it answers 200 (the pool reconnects in the background)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the registry did not become ready again")


def test_postgres_stopped_then_back(tmp_path: Path, pg_server: PgServer) -> None:
    if not pg_server.controllable:
        pytest.skip("REGISTRY_TEST_POSTGRES_URL names a server these tests cannot stop")
    url = pg_server.new_database()
    server = start_registry(tmp_path, pg_config(tmp_path, url))
    api = Api(server.url, server.token("alice"))
    try:
        first = api.upload("down", package("1.0.0"), version="1.0.0")
        assert first.status_code == 201, first.text
        blobs_before = set(blob_files(tmp_path / "packages"))
        pg_server.stop()
        try:
            assert_unavailable(api.upload("down", package("2.0.0"), version="2.0.0"))
            assert_unavailable(api.list("down"))
            assert_unavailable(api.delete("down", first.json()["id"]))
            ready = httpx.get(f"{server.url}/readyz")
            assert_unavailable(ready)
            assert set(blob_files(tmp_path / "packages")) == blobs_before, "no blob without a record"
            assert staged_files(tmp_path / "packages") == []
        finally:
            pg_server.start()
        wait_until_ready(server.url)
        again = api.upload("down", package("2.0.0"), version="2.0.0")
        assert again.status_code == 201, again.text
        assert [r["version"] for r in api.list("down").json()["results"]] == ["2.0.0", "1.0.0"]
        assert server.process is not None and server.process.poll() is None, "no restart was needed"
    finally:
        api.close()
        server.stop()
    log = server.log.read_text()
    assert "database unavailable" in log and PASSWORD not in log


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def test_sqlite_locked_by_another_process(tmp_path: Path) -> None:
    tables = base_config(tmp_path)
    tables["database"]["timeout"] = 1
    server = start_registry(tmp_path, tables)
    api = Api(server.url, server.token("alice"))
    locker = None
    try:
        first = api.upload("locked", package("1.0.0"), version="1.0.0")
        assert first.status_code == 201, first.text
        blobs_before = set(blob_files(tmp_path / "packages"))
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path / "registry.db")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"

        with ThreadPoolExecutor(6) as pool:
            uploads = [pool.submit(api.upload, "locked", package(f"2.{n}.0"), version=f"2.{n}.0") for n in range(6)]
            # while writers wait on the lock, reads answer
            listed = api.list("locked")
            assert listed.status_code == 200 and listed.json()["count"] == 1
            assert api.get("locked", first.json()["id"]).status_code == 200
            assert api.download("locked", first.json()["id"]).status_code == 200
            for future in uploads:
                assert_unavailable(future.result())
        assert_unavailable(api.delete("locked", first.json()["id"]))
        # background jobs and resumable uploads live in the same store: 503, and nothing kept
        assert_unavailable(api.http.post(Api.path("locked", suffix="jobs/"),
                                         json={"package_url": "http://127.0.0.1:9/p.tar.gz"}))
        tus = api.http.post(Api.path("locked", suffix="uploads/"),
                            headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100",
                                     "Upload-Metadata": encode_metadata({"filename": "p.tar.gz"})})
        assert_unavailable(tus)
        assert tus.headers["tus-resumable"] == "1.0.0"
        assert not (tmp_path / "packages" / ".staging" / "resumable").exists(), "the upload's storage is undone"
        assert set(blob_files(tmp_path / "packages")) == blobs_before, "no blob without a record"
        assert staged_files(tmp_path / "packages") == []
        assert httpx.get(f"{server.url}/readyz").status_code == 200, "reads work, so the registry is ready"
    finally:
        if locker is not None:
            locker.communicate("", timeout=30)
    try:
        again = api.upload("locked", package("2.0.0"), version="2.0.0")
        assert again.status_code == 201, again.text
        assert api.list("locked").json()["count"] == 2
    finally:
        api.close()
        server.stop()
