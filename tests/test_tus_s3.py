"""Resumable uploads on the S3 backend (moto's server on loopback): the bytes
are an S3 multipart upload, chunks below S3's 5 MiB part minimum are buffered
as a tail object, and a partial upload survives a kill -9 of the server."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from registry_plugins.s3_resumable import MIN_PART

from tests import pausing_s3_plugin
from tests.crash_plugin import MARKER_ENV, POINT_ENV
from tests.helpers import Api, app_desc, make_tar, merge, start_registry
from tests.pg import PgServer
from tests.test_crash_safety import PROJECT_ROOT
from tests.test_postgres import pg_config
from tests.test_s3 import s3_config
from tests.test_storage_conformance import DUMMY_AWS_ENV, MotoServer
from tests.test_tus import TUS, create, offset_of, patch

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:
    return moto.create_bucket("tus")


def resumable_objects(moto: MotoServer, bucket: str) -> tuple[list[str], list[str]]:
    """(keys under the resumable folder, multipart uploads in progress)."""
    client = moto.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="packages/.resumable/").get("Contents", [])]
    uploads = [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return keys, uploads


def test_chunks_smaller_than_a_part_survive_a_kill(tmp_path: Path, moto: MotoServer, bucket: str,
                                                   code: str) -> None:
    body = make_tar({"app_desc.yaml": app_desc("7.0.0"), "payload.bin": os.urandom(12 * MiB)})
    process = start_registry(tmp_path, s3_config(tmp_path, moto, bucket), env=DUMMY_AWS_ENV)
    try:
        api = Api(process.url, process.token("s3tus"))
        url = create(api, code, len(body))
        offset = 0
        for size in (1 * MiB, 3 * MiB, 2 * MiB + 5):  # below, below, then past one part
            assert patch(api, url, offset, body[offset:offset + size]).status_code == 204
            offset += size
        assert offset > MIN_PART
        process.kill()
        # Nothing local is needed to go on, as on another instance: the bytes are in the bucket.
        shutil.rmtree(tmp_path / "staging", ignore_errors=True)
        process.start()
        api.close()
        api = Api(process.url, process.token("s3tus"))
        path = Api.path(code, suffix="uploads/" + url.rsplit("/", 1)[1])
        assert offset_of(api, path) == offset
        last = patch(api, path, offset, body[offset:])
        assert last.status_code == 204, last.text
        record = api.get(code, int(last.headers["registry-package-id"])).json()
        assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
        assert api.download(code, record["id"]).content == body
        keys, uploads = resumable_objects(moto, bucket)
        assert keys == [] and uploads == []
        api.close()
    finally:
        process.stop()


def test_termination_and_bad_bytes_leave_nothing_in_the_bucket(tmp_path: Path, moto: MotoServer, bucket: str,
                                                               code: str) -> None:
    process = start_registry(tmp_path, s3_config(tmp_path, moto, bucket), env=DUMMY_AWS_ENV)
    try:
        api = Api(process.url, process.token("s3tus"))
        url = create(api, code, 6 * MiB + 10)
        assert patch(api, url, 0, os.urandom(6 * MiB)).status_code == 204
        assert resumable_objects(moto, bucket) != ([], [])
        assert api.http.delete(url, headers=TUS).status_code == 204
        assert resumable_objects(moto, bucket) == ([], [])
        junk = b"not an archive" * 1000
        url = create(api, code, len(junk))
        response = patch(api, url, 0, junk)
        assert response.status_code == 400 and response.json()["code"] == "INVALID_PACKAGE"
        assert resumable_objects(moto, bucket) == ([], [])
        assert api.list(code, include_deleted="true").json()["count"] == 0
        api.close()
    finally:
        process.stop()



def test_a_crash_while_the_completing_patch_stores_the_package_leaves_an_upload_that_ends(
        tmp_path: Path, moto: MotoServer, bucket: str, code: str, pg_server: PgServer) -> None:
    """The completing PATCH of an upload this process did not follow joins
    its parts in S3 (no part can be added after), then stores the package.
    A crash of the database server just after the package reached the
    bucket, before its record was written, takes back every commit that
    did not wait for the log flush. The upload's offset and state must not
    be among them: back at an earlier offset, the rest sent again would go
    into parts that are gone, 503 for as long as the upload lives. So the
    ``completing`` save is durable where the storage joins parts (only the
    chunks' offsets of a PATCH are not), and the upload ends."""
    if not pg_server.controllable:
        pytest.skip("the test stops and starts the PostgreSQL server")
    body = make_tar({"app_desc.yaml": app_desc("7.2.0"), "payload.bin": os.urandom(16 * MiB)})
    first = 6 * MiB  # one part (above S3's minimum); the rest makes another and a tail
    admin = psycopg.connect(pg_server.admin_url, autocommit=True)
    # The log writer takes its time: a commit that does not wait for the flush
    # stays in the server's memory, where the crash takes it.
    admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
    admin.execute("SELECT pg_reload_conf()")
    marker = tmp_path / "paused"
    on_postgres = pg_config(tmp_path, pg_server.new_database())
    tables = merge(s3_config(tmp_path, moto, bucket), {
        "ui": on_postgres["ui"], "storage": {"backend": pausing_s3_plugin.NAME},
        "plugins": {"modules": ["tests.pausing_s3_plugin"]}})
    tables["database"] = on_postgres["database"]
    env = {**DUMMY_AWS_ENV, "PYTHONPATH": str(PROJECT_ROOT), MARKER_ENV: str(marker)}
    process = start_registry(tmp_path, tables, env=env)
    try:
        api = Api(process.url, process.token("s3tus"))
        url = create(api, code, len(body))
        path = Api.path(code, suffix="uploads/" + url.rsplit("/", 1)[1])
        assert patch(api, path, 0, body[:first]).status_code == 204
        api.close()
        process.kill()  # the next process does not follow the upload: it joins the parts in S3
        process.env[POINT_ENV] = "put-after"
        process.start()
        api = Api(process.url, process.token("s3tus"))
        def complete() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
                patch(api, path, first, body[first:])

        completing = threading.Thread(target=complete, daemon=True)
        completing.start()
        deadline = time.monotonic() + 60  # ends a hang, times nothing
        while not marker.exists():
            assert time.monotonic() < deadline, "the completing PATCH never stored the package"
            time.sleep(0.02)
        pg_server.stop()  # immediate: what is not yet in the log's files is gone
        process.kill()
        pg_server.start()
        api.close()
        del process.env[POINT_ENV]
        process.start()
        api = Api(process.url, process.token("s3tus"))
        offset = offset_of(api, path)
        last = patch(api, path, offset, body[offset:])
        assert last.status_code == 204, (offset, last.text)
        record = api.get(code, int(last.headers["registry-package-id"])).json()
        assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
        assert api.download(code, record["id"]).content == body
        api.close()
    finally:
        process.stop()
        admin.close()  # the crash ended its session
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET wal_writer_delay")
            admin.execute("SELECT pg_reload_conf()")


def test_gc_removes_the_bucket_bytes_of_uploads_no_record_names(tmp_path: Path, moto: MotoServer,
                                                               code: str) -> None:
    """As on the filesystem (test_tus): an upload's multipart upload, its parts
    and its tail, once no record names the upload, are removed by ``registry
    gc`` when older than the grace period; a recorded upload's stay and it goes on."""
    bucket = moto.create_bucket("tus-gc")
    process = start_registry(tmp_path, s3_config(tmp_path, moto, bucket), env=DUMMY_AWS_ENV)
    try:
        api = Api(process.url, process.token("s3gc"))
        kept_url, dropped_url = create(api, code, 8 * MiB), create(api, code, 8 * MiB)
        for url in (kept_url, dropped_url):  # a part of its multipart upload, then a tail object
            assert patch(api, url, 0, os.urandom(6 * MiB)).status_code == 204
            assert patch(api, url, 6 * MiB, os.urandom(1000)).status_code == 204
        kept_id, dropped_id = (url.rsplit("/", 1)[1] for url in (kept_url, dropped_url))
        with sqlite3.connect(tmp_path / "registry.db") as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (dropped_id,))

        young = process.cli("gc").stdout  # the default grace: an hour
        assert dropped_id not in young and "0 unrecorded upload(s)" in young
        dry = process.cli("gc", "--dry-run", "--grace-hours", "0").stdout
        assert f"would remove the bytes of resumable upload {dropped_id}, which no record names" in dry
        assert any(dropped_id in key for key in resumable_objects(moto, bucket)[0])
        done = process.cli("gc", "--grace-hours", "0").stdout
        assert f"removed the bytes of resumable upload {dropped_id}, which no record names" in done
        assert "1 unrecorded upload(s)" in done and kept_id not in done

        keys, _ = resumable_objects(moto, bucket)
        multiparts = [u["Key"] for u in moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
        assert not any(dropped_id in key for key in keys + multiparts)
        assert any(kept_id in key for key in keys) and any(kept_id in key for key in multiparts)
        assert offset_of(api, Api.path(code, suffix="uploads/" + kept_id)) == 6 * MiB + 1000
        api.close()
    finally:
        process.stop()
