"""Resumable uploads (tus 1.0.0 at ``P/uploads/``) on a live registry, filesystem storage.

The happy paths go through ``tuspy``, a tus client from PyPI; the protocol's
edges are raw HTTP. The S3 variant is in ``test_tus_s3.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from registry.assembly import MAX_OPEN
from registry.tus import encode_metadata
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    merge,
    package,
    start_registry,
)
from tests.test_jobs import big_package

TUS = {"Tus-Resumable": "1.0.0"}
MAX_SIZE = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Api]]:
    root = tmp_path_factory.mktemp("tus")
    process = start_registry(root, merge(base_config(root), {"limits": {"max_package_size": MAX_SIZE}}))
    client = Api(process.url, process.token("tus"))
    yield process, client
    client.close()
    process.stop()


def uploads_url(base: str, code: str) -> str:
    return f"{base}{Api.path(code)}uploads/"


def create(api: Api, code: str, length: int, **meta: str) -> str:
    headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": encode_metadata({"filename": "p.tar.gz", **meta})}
    response = api.http.post(Api.path(code, suffix="uploads/"), headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["tus-resumable"] == "1.0.0"
    location: str = response.headers["location"]
    return location


def patch(api: Api, url: str, offset: int, data: bytes, **headers: str) -> httpx.Response:
    return api.http.patch(url, content=data, headers={
        **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream", **headers})


def offset_of(api: Api, url: str) -> int:
    response = api.http.head(url, headers=TUS)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    return int(response.headers["upload-offset"])


def checksum(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


def upload_files(process: RegistryProcess, url: str = "") -> list[Path]:
    """Files in the staging area; with ``url``, only those of that upload."""
    staging = process.config.parent / "packages" / ".staging"
    upload_id = url.rstrip("/").rsplit("/", 1)[-1] if url else ""
    return [p for p in staging.rglob("*") if p.is_file() and upload_id in str(p)]


def test_options_announce_the_server(live: tuple[RegistryProcess, Api], code: str) -> None:
    process, _ = live
    response = httpx.options(uploads_url(process.url, code))
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    assert set(response.headers["tus-extension"].split(",")) == {"creation", "termination", "checksum"}
    assert response.headers["tus-max-size"] == str(MAX_SIZE)
    assert response.headers["tus-checksum-algorithm"].split(",") == ["sha256", "sha1"]


def test_tuspy_upload_stores_the_package(live: tuple[RegistryProcess, Api], code: str, tmp_path: Path) -> None:
    process, api = live
    body = big_package(300_000, version="2.0.0")
    path = tmp_path / "demo.tar.gz"
    path.write_bytes(body)
    client = tus_client.TusClient(uploads_url(process.url, code), headers=dict(api.http.headers))
    with path.open("rb") as stream:  # tuspy leaves a file it opened itself open
        uploader = client.uploader(file_stream=stream, chunk_size=64 * 1024, metadata={"filename": "demo.tar.gz"},
                                   upload_checksum=True)
        uploader.upload()
    assert uploader.url is not None
    status = api.http.get(uploader.url).json()
    assert status["state"] == "succeeded" and status["error"] is None
    record = api.get(code, status["package"]["id"]).json()
    assert {k: v for k, v in status["package"].items() if k != "status"} == record
    assert record["version"] == "2.0.0" and record["sha256_signature"] == hashlib.sha256(body).hexdigest()
    assert api.download(code, record["id"]).content == body
    assert upload_files(process, uploader.url or "?") == []


def test_completing_patch_answers_the_package_id(live: tuple[RegistryProcess, Api], code: str) -> None:
    _, api = live
    body = package("1.0.0", salt=code)
    url = create(api, code, len(body), version="1.0.0")
    half = len(body) // 2
    first = patch(api, url, 0, body[:half])
    assert first.status_code == 204 and first.headers["upload-offset"] == str(half)
    assert "registry-package-id" not in first.headers
    assert api.http.get(url).json() == {"state": "running", "package": None, "error": None}
    last = patch(api, url, half, body[half:])
    assert last.status_code == 204, last.text
    assert last.headers["upload-offset"] == str(len(body))
    package_id = int(last.headers["registry-package-id"])
    assert api.get(code, package_id).json()["version"] == "1.0.0"
    again = patch(api, url, len(body), b"")
    assert again.status_code == 409 and again.json()["code"] == "UPLOAD_OFFSET_MISMATCH"


def test_wrong_offset_is_409(live: tuple[RegistryProcess, Api], code: str) -> None:
    _, api = live
    url = create(api, code, 100)
    assert patch(api, url, 0, b"x" * 10).status_code == 204
    for wrong in (0, 5, 11):
        response = patch(api, url, wrong, b"y")
        assert response.status_code == 409 and response.json()["code"] == "UPLOAD_OFFSET_MISMATCH"
        assert response.headers["tus-resumable"] == "1.0.0"
    assert offset_of(api, url) == 10


def test_wrong_checksum_is_460_and_keeps_the_offset(live: tuple[RegistryProcess, Api], code: str) -> None:
    process, api = live
    body = package("1.0.0", salt=code)
    url = create(api, code, len(body))
    assert patch(api, url, 0, body[:10], **{"Upload-Checksum": checksum(body[:10])}).status_code == 204
    bad = patch(api, url, 10, body[10:], **{"Upload-Checksum": checksum(b"other bytes")})
    assert bad.status_code == 460 and bad.json()["code"] == "UPLOAD_CHECKSUM_MISMATCH"
    assert offset_of(api, url) == 10
    assert [p.stat().st_size for p in upload_files(process, url)] == [10], "none of the bad chunk was written"
    unknown = patch(api, url, 10, body[10:], **{"Upload-Checksum": "md5 " + base64.b64encode(b"0" * 16).decode()})
    assert unknown.status_code == 400 and offset_of(api, url) == 10
    good = patch(api, url, 10, body[10:], **{"Upload-Checksum": checksum(body[10:])})
    assert good.status_code == 204 and "registry-package-id" in good.headers


def test_a_chunk_past_the_length_keeps_nothing_and_the_upload_goes_on(live: tuple[RegistryProcess, Api],
                                                                      code: str) -> None:
    """A body without Content-Length that runs past Upload-Length is 413 once
    the server sees it pass (sent slowly, so after some of it was written into
    the upload's file): the offset stays, and the package is the client's bytes."""
    _, api = live
    body = big_package(3 * 1024 * 1024, version="6.0.0")
    url = create(api, code, len(body))
    first = 1024 * 1024
    assert patch(api, url, 0, body[:first]).status_code == 204

    def too_long() -> Iterator[bytes]:  # sent chunked: the server learns the size only as it comes
        for _ in range(64):
            time.sleep(0.002)
            yield b"\0" * (64 * 1024)

    refused = api.http.patch(url, content=too_long(), headers={
        **TUS, "Upload-Offset": str(first), "Content-Type": "application/offset+octet-stream"})
    assert refused.status_code == 413 and refused.json()["code"] == "PACKAGE_TOO_LARGE"
    assert offset_of(api, url) == first
    last = patch(api, url, first, body[first:])
    assert last.status_code == 204, last.text
    record = api.get(code, int(last.headers["registry-package-id"])).json()
    assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
    assert api.download(code, record["id"]).content == body


def test_more_uploads_at_once_than_are_kept_staged(live: tuple[RegistryProcess, Api], code: str) -> None:
    """More PATCHes in flight at once than the uploads a process keeps staged
    between PATCHes (assembly.MAX_OPEN): none is dropped under its request."""
    _, api = live
    count = MAX_OPEN + 2
    bodies = [package("1.0.0", salt=f"{code}-{n}") for n in range(count)]
    urls = [create(api, code, len(body), version=f"1.0.{n}") for n, body in enumerate(bodies)]
    all_started = threading.Barrier(count)

    def send(n: int) -> httpx.Response:
        body = bodies[n]

        def halves() -> Iterator[bytes]:
            yield body[:100]
            all_started.wait(timeout=30)
            time.sleep(0.3)  # every request's head is in: each has its staging file open
            yield body[100:]

        return api.http.patch(urls[n], content=halves(), headers={
            **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(len(body))})

    with ThreadPoolExecutor(count) as pool:
        responses = list(pool.map(send, range(count)))
    assert [r.status_code for r in responses] == [204] * count, [r.text for r in responses if r.status_code != 204]
    for response, body in zip(responses, bodies, strict=True):
        record = api.get(code, int(response.headers["registry-package-id"])).json()
        assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()


def test_termination_removes_the_bytes(live: tuple[RegistryProcess, Api], code: str) -> None:
    process, api = live
    url = create(api, code, 1000)
    assert patch(api, url, 0, b"z" * 500).status_code == 204
    assert [p.stat().st_size for p in upload_files(process, url)] == [500]  # kept in one file
    assert api.http.delete(url, headers=TUS).status_code == 204
    assert upload_files(process, url) == []
    for response in (api.http.head(url, headers=TUS), patch(api, url, 500, b"z"), api.http.get(url)):
        assert response.status_code == 404
    assert api.http.get(url).json()["code"] == "JOB_NOT_FOUND"


def test_creation_limits(live: tuple[RegistryProcess, Api], code: str) -> None:
    _, api = live
    path = Api.path(code, suffix="uploads/")
    meta = encode_metadata({"filename": "a.tar.gz"})
    too_large = api.http.post(path, headers={**TUS, "Upload-Length": str(MAX_SIZE + 1), "Upload-Metadata": meta})
    assert too_large.status_code == 413 and too_large.json()["code"] == "PACKAGE_TOO_LARGE"
    # 18 digits is the most any number header may have (it then fits any store's 64-bit column)
    huge = api.http.post(path, headers={**TUS, "Upload-Length": "9" * 18, "Upload-Metadata": meta})
    assert huge.status_code == 413
    for absurd in ("9" * 19, "9" * 40, "-1", "1e9", "", "0x10"):
        response = api.http.post(path, headers={**TUS, "Upload-Length": absurd, "Upload-Metadata": meta})
        assert response.status_code == 400, absurd
    no_version = api.http.post(path, headers={"Upload-Length": "10", "Upload-Metadata": meta})
    assert no_version.status_code == 412 and no_version.headers["tus-version"] == "1.0.0"
    bad_meta = api.http.post(path, headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "filename !!!"})
    assert bad_meta.status_code == 400
    no_name = api.http.post(path, headers={**TUS, "Upload-Length": "10",
                                           "Upload-Metadata": encode_metadata({"version": "1.0"})})
    assert no_name.status_code == 400
    bad_version = api.http.post(path, headers={**TUS, "Upload-Length": "10",
                                               "Upload-Metadata": encode_metadata({"filename": "a", "version": "../x"})})
    assert bad_version.status_code == 400 and "version" in bad_version.json()["fields_detail"]
    url = create(api, code, 10)
    assert patch(api, url, 0, b"x" * 11).status_code == 413
    assert offset_of(api, url) == 0
    absurd_offset = patch(api, url, 0, b"x", **{"Upload-Offset": "1" * 100})
    assert absurd_offset.status_code == 400
    wrong_type = api.http.patch(url, content=b"x", headers={**TUS, "Upload-Offset": "0",
                                                            "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415


def test_non_archive_bytes_fail_like_a_file_upload(live: tuple[RegistryProcess, Api], code: str) -> None:
    process, api = live
    body = b"this is not an archive" * 100
    expected = api.upload(code, body, version="1.0.0")
    url = create(api, code, len(body), version="1.0.0")
    response = patch(api, url, 0, body)
    assert response.status_code == expected.status_code == 400
    assert response.json() == expected.json()
    assert response.json()["code"] == "INVALID_PACKAGE"
    status = api.http.get(url).json()
    assert status["state"] == "failed" and status["error"] == expected.json()
    assert api.list(code, include_deleted="true").json()["count"] == 0
    assert upload_files(process, url) == []


def test_scoped_credentials(live: tuple[RegistryProcess, Api], code: str) -> None:
    process, api = live
    url = create(api, code, 10)
    other = Api(process.url, process.token("eve", apps=("not-this-one",)))
    try:
        assert other.http.head(url, headers=TUS).status_code == 403
        assert patch(other, url, 0, b"x").status_code == 403
        assert other.http.delete(url, headers=TUS).status_code == 403
    finally:
        other.close()
    assert offset_of(api, url) == 0


def test_resume_after_kill(tmp_path: Path, code: str) -> None:
    body = big_package(200_000, version="4.0.0")
    process = start_registry(tmp_path, base_config(tmp_path))
    try:
        api = Api(process.url, process.token("kill"))
        url = create(api, code, len(body))
        assert patch(api, url, 0, body[:70_000]).status_code == 204
        process.kill()
        api.close()
        process.start()
        api = Api(process.url, process.token("kill"))
        url = url.rsplit("/source_package/", 1)[1]
        url = Api.path(code, suffix=url)
        offset = offset_of(api, url)
        assert offset == 70_000
        last = patch(api, url, offset, body[offset:])
        assert last.status_code == 204, last.text
        record = api.get(code, int(last.headers["registry-package-id"])).json()
        assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
        assert len(list(blob_files(tmp_path / "packages" / code))) == 1
        api.close()
    finally:
        process.stop()


def test_bytes_past_the_recorded_offset_are_cut_off_after_a_kill(tmp_path: Path, code: str) -> None:
    """Killed while a PATCH was being written: the upload's file holds bytes
    past the recorded offset. The restarted server answers that offset, cuts
    the rest off when the upload goes on, and stores the client's bytes."""
    body = big_package(6 * 1024 * 1024, version="7.0.0")
    process = start_registry(tmp_path, base_config(tmp_path))
    try:
        api = Api(process.url, process.token("kill"))
        url = create(api, code, len(body))
        first = 1024 * 1024
        assert patch(api, url, 0, body[:first]).status_code == 204

        def garbage_then_wait() -> Iterator[bytes]:
            yield b"\xff" * (3 * 1024 * 1024)  # more than a batch: written before the rest comes
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and sum(p.stat().st_size for p in upload_files(process, url)) <= first:
                time.sleep(0.01)
            process.kill()  # the bytes past the offset are in the file, the offset is not recorded
            yield b"\xff"

        with pytest.raises(httpx.TransportError):
            api.http.patch(url, content=garbage_then_wait(), headers={
                **TUS, "Upload-Offset": str(first), "Content-Type": "application/offset+octet-stream"})
        assert [p.stat().st_size for p in upload_files(process, url)] > [first]
        api.close()
        process.start()
        api = Api(process.url, process.token("kill"))
        path = Api.path(code, suffix=url.rsplit("/source_package/", 1)[1])
        assert offset_of(api, path) == first
        middle = first + 1024 * 1024
        assert patch(api, path, first, body[first:middle]).status_code == 204
        assert [p.stat().st_size for p in upload_files(process, url)] == [middle], "nothing past the offset is kept"
        finish_and_check(api, code, path, middle, body)
        assert upload_files(process, url) == []
        api.close()
    finally:
        process.stop()


def finish_and_check(api: Api, code: str, path: str, offset: int, body: bytes) -> None:
    """Send the rest of ``body`` from ``offset`` in the completing PATCH; the
    stored package must be ``body`` exactly."""
    last = patch(api, path, offset, body[offset:])
    assert last.status_code == 204, last.text
    record = api.get(code, int(last.headers["registry-package-id"])).json()
    assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
    assert api.download(code, record["id"]).content == body


def _sent_then_killed(root: Path, code: str, body: bytes, sent: int) -> tuple[RegistryProcess, str, Path]:
    """A registry that took the first ``sent`` bytes of an upload of ``body``
    and was then killed: (the stopped process, the upload's URL, its file)."""
    process = start_registry(root, base_config(root))
    api = Api(process.url, process.token("crash"))
    try:
        url = create(api, code, len(body))
        assert patch(api, url, 0, body[:sent]).status_code == 204
    finally:
        api.close()
        process.kill()
    [file] = upload_files(process, url)
    return process, url, file


@pytest.mark.parametrize("state", ["receiving", "completing"])
@pytest.mark.parametrize("loss", ["cut", "gone", "segments"])
def test_an_upload_a_crash_of_the_machine_cut_short_resumes_where_its_file_ends(
        tmp_path: Path, code: str, state: str, loss: str) -> None:
    """After a crash of the machine the upload's file may hold fewer bytes
    than the recorded offset (nothing is fsynced until the upload is stored),
    or be gone with its folder (neither was synced). That happens while it
    receives, and while the completing PATCH stores it (``completing`` is
    recorded before the file is fsynced). The restarted server
    answers the offset of the bytes really kept, and the client's upload
    goes on from there to the package; never a 503 for as long as it lives.
    An upload begun by the older version (segment files) starts again at 0."""
    body = big_package(300_000, version="9.0.0")
    sent = 200_000
    process, url, file = _sent_then_killed(tmp_path, code, body, sent)
    try:
        upload_id = url.rsplit("/", 1)[1]
        if loss == "cut":
            kept = 120_000
            os.truncate(file, kept)
        elif loss == "gone":
            kept = 0
            file.unlink()
            file.parent.rmdir()
        else:  # begun by the older version, which kept segment files: it starts again
            kept = 0
            file.rename(file.parent / f"{0:020d}.seg")
        recorded = len(body) if state == "completing" else sent
        storage_state = {"segments": [[0, sent]]} if loss == "segments" else {"size": recorded}
        with sqlite3.connect(tmp_path / "registry.db") as db:  # completing: the last PATCH's bytes were recorded
            db.execute("UPDATE uploads SET state = ?, upload_offset = ?, storage_state = ? WHERE id = ?",
                       (state, recorded, json.dumps(storage_state), upload_id))
        process.start()
        api = Api(process.url, process.token("crash"))
        path = Api.path(code, suffix=url.rsplit("/source_package/", 1)[1])
        assert offset_of(api, path) == kept
        stale = patch(api, path, recorded, b"")
        assert stale.status_code == 409, stale.text
        assert stale.headers["upload-offset"] == str(kept)
        finish_and_check(api, code, path, kept, body)
        assert upload_files(process, url) == []
        api.close()
    finally:
        process.stop()


@pytest.mark.parametrize("client", ["empty PATCH", "HEAD alone"])
def test_an_upload_whose_completing_state_a_crash_took_back_ends(tmp_path: Path, code: str, client: str) -> None:
    """``completing`` is recorded without waiting for the record store's
    flush: a crash of the machine may take the upload back to ``receiving``
    with all its bytes recorded and kept. A client told that offset by
    ``HEAD`` either sends the empty PATCH at the end, which stores the
    package, or (as tus-js-client does) takes the upload for done and sends
    nothing more: the server then stores the package itself, seconds later."""
    body = big_package(300_000, version="9.1.0")
    sent = 200_000
    process, url, file = _sent_then_killed(tmp_path, code, body, sent)
    try:
        with file.open("ab") as f:  # the last PATCH's bytes, kept by the page cache
            f.write(body[sent:])
        with sqlite3.connect(tmp_path / "registry.db") as db:  # and recorded, but not "completing"
            db.execute("UPDATE uploads SET state = 'receiving', upload_offset = ?, storage_state = ? WHERE id = ?",
                       (len(body), json.dumps({"size": len(body)}), url.rsplit("/", 1)[1]))
        process.start()
        api = Api(process.url, process.token("crash"))
        path = Api.path(code, suffix=url.rsplit("/source_package/", 1)[1])
        assert offset_of(api, path) == len(body)
        if client == "empty PATCH":
            finish_and_check(api, code, path, len(body), body)
        else:
            deadline = time.monotonic() + 60  # ends a hang, times nothing
            while (outcome := api.http.get(path).json())["state"] == "running":
                assert time.monotonic() < deadline, "the server never finished the upload"
                time.sleep(0.2)
            assert outcome["state"] == "succeeded", outcome
            record = api.get(code, outcome["package"]["id"]).json()
            assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
            assert api.download(code, record["id"]).content == body
            assert patch(api, path, len(body), b"").status_code == 409  # over: a late PATCH changes nothing
        assert upload_files(process, url) == []
        api.close()
    finally:
        process.stop()


def test_an_upload_expired_under_its_patch_leaves_no_file_open(tmp_path: Path, code: str) -> None:
    """``registry gc`` removes an upload that expires while a PATCH writes
    to it (expiry takes no lease): the PATCH answers 404, and the server
    keeps no descriptor of the removed file (it would hold its disk space
    until the process ends, when no PATCH of the upload comes again)."""
    process = start_registry(tmp_path, merge(base_config(tmp_path), {"uploads": {"expire_after": 2}}))
    try:
        api = Api(process.url, process.token("expiry"))
        url = create(api, code, 3 * 1024 * 1024)
        first = 1024 * 1024
        assert patch(api, url, 0, os.urandom(first)).status_code == 204
        upload_id = url.rsplit("/", 1)[1]

        def expire_meanwhile() -> Iterator[bytes]:
            yield os.urandom(first)
            time.sleep(2.5)  # past expire_after since the last PATCH
            assert f"removed expired resumable upload {upload_id}" in process.cli("gc").stdout
            yield os.urandom(first)

        response = api.http.patch(url, content=expire_meanwhile(), headers={
            **TUS, "Upload-Offset": str(first), "Content-Type": "application/offset+octet-stream"})
        assert response.status_code == 404, response.text
        assert process.process is not None
        fds = Path(f"/proc/{process.process.pid}/fd")
        held = [target for target in (os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()) if upload_id in target]
        assert held == []
        api.close()
    finally:
        process.stop()


def test_gc_removes_the_bytes_of_uploads_no_record_names(tmp_path: Path, code: str) -> None:
    """Bytes kept for a resumable upload whose record is gone (a process died
    between deleting the record and its bytes, or between keeping the bytes
    and recording the upload) are removed by ``registry gc`` once older than
    the grace period; a recorded upload's, however old, and a young folder stay."""
    process = start_registry(tmp_path, base_config(tmp_path))
    try:
        api = Api(process.url, process.token("unrecorded"))
        kept_url, dropped_url = create(api, code, 4096), create(api, code, 4096)
        for url in (kept_url, dropped_url):
            assert patch(api, url, 0, os.urandom(1000)).status_code == 204
        kept_id, dropped_id = (url.rsplit("/", 1)[1] for url in (kept_url, dropped_url))
        folders = tmp_path / "packages" / ".staging" / "resumable"
        young_id = "f" * 32
        (folders / young_id).mkdir()  # bytes about to be recorded by an upload being created
        with sqlite3.connect(tmp_path / "registry.db") as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (dropped_id,))
        an_hour_ago = time.time() - 2 * 3600
        for upload_id in (kept_id, dropped_id):
            for path in (folders / upload_id, folders / upload_id / "upload"):
                os.utime(path, (an_hour_ago, an_hour_ago))

        dry = process.cli("gc", "--dry-run").stdout
        assert f"would remove the bytes of resumable upload {dropped_id}, which no record names" in dry
        assert (folders / dropped_id).exists()
        done = process.cli("gc").stdout
        assert f"removed the bytes of resumable upload {dropped_id}, which no record names" in done
        assert "1 unrecorded upload(s)" in done
        assert kept_id not in done and young_id not in done
        assert not (folders / dropped_id).exists()
        assert (folders / kept_id / "upload").stat().st_size == 1000 and (folders / young_id).is_dir()
        assert api.http.head(kept_url, headers=TUS).headers["upload-offset"] == "1000"
        api.close()
    finally:
        process.stop()


def test_patches_alternating_between_two_processes(tmp_path: Path, code: str) -> None:
    """Two processes on one database and one storage folder take turns at an
    upload's PATCHes (as behind a load balancer): each writes its chunks into
    the one file, and whichever gets the last PATCH stores the client's bytes."""
    body = big_package(3 * 1024 * 1024, version="8.0.0")
    config = base_config(tmp_path)
    first = start_registry(tmp_path / "a", config)
    second = start_registry(tmp_path / "b", config)
    apis = [Api(first.url, first.token("both")), Api(second.url, second.token("both"))]
    try:
        url = create(apis[0], code, len(body)).rsplit("/source_package/", 1)[1]
        path = Api.path(code, suffix=url)
        piece = 512 * 1024
        offsets = list(range(0, len(body), piece))
        for turn, offset in enumerate(offsets):
            api = apis[turn % 2]
            assert offset_of(api, path) == offset
            response = patch(api, path, offset, body[offset:offset + piece])
            assert response.status_code == 204, response.text
        record = apis[(len(offsets) - 1) % 2].get(code, int(response.headers["registry-package-id"])).json()
        assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
        assert apis[0].download(code, record["id"]).content == body
    finally:
        for api in apis:
            api.close()
        second.stop()
        first.stop()


def test_tuspy_resumes_an_interrupted_upload(tmp_path: Path, code: str) -> None:
    body = big_package(400_000, version="5.0.0")
    path = tmp_path / "resume.tar.gz"
    path.write_bytes(body)
    process = start_registry(tmp_path / "srv", base_config(tmp_path / "srv"))
    try:
        headers = {"Authorization": f"Bearer {process.token('tuspy')}"}
        client = tus_client.TusClient(uploads_url(process.url, code), headers=headers)
        with path.open("rb") as stream:
            uploader = client.uploader(file_stream=stream, chunk_size=100_000, metadata={"filename": "resume.tar.gz"})
            uploader.upload_chunk()  # type: ignore[no-untyped-call]
            uploader.upload_chunk()  # type: ignore[no-untyped-call]
            process.kill()
            with pytest.raises((TusCommunicationError, OSError)):
                uploader.upload_chunk()  # type: ignore[no-untyped-call]
        assert uploader.url is not None
        upload_path = uploader.url.split(f"127.0.0.1:{process.port}", 1)[1]
        process.start()
        with path.open("rb") as stream:
            resumed = tus_client.TusClient(process.url, headers=headers).uploader(
                file_stream=stream, chunk_size=100_000, url=f"{process.url}{upload_path}")
            assert resumed.get_offset() == 200_000
            resumed.upload()
        status: dict[str, Any] = httpx.get(f"{process.url}{upload_path}", headers=headers).json()
        assert status["state"] == "succeeded", status
        assert status["package"]["sha256_signature"] == hashlib.sha256(body).hexdigest()
    finally:
        process.stop()


def test_expired_uploads_are_gone_and_gc_removes_their_bytes(tmp_path: Path, code: str) -> None:
    process = start_registry(tmp_path, merge(base_config(tmp_path), {"uploads": {"expire_after": 1}}))
    try:
        api = Api(process.url, process.token("expiry"))
        url = create(api, code, 1000)
        assert patch(api, url, 0, os.urandom(100)).status_code == 204
        assert upload_files(process, url)
        time.sleep(1.5)  # past expire_after: the upload is no longer there
        assert api.http.head(url, headers=TUS).status_code == 404
        result = process.cli("gc")
        assert f"removed expired resumable upload {url.rsplit('/', 1)[1]}" in result.stdout
        assert upload_files(process, url) == []
        api.close()
    finally:
        process.stop()


def test_a_completing_patch_keeps_its_lease_while_the_pipeline_runs(tmp_path: Path) -> None:
    """The completing PATCH runs the whole pipeline under the upload's write
    lease. Held on one instance past the lease's 30 s (its storage pauses
    once the package is in place), the lease is renewed all the while: the
    same PATCH sent again to another instance of the same registry is told
    that another request is writing (409), instead of running a second
    pipeline on the same bytes."""
    from registry.resumable import LEASE
    from tests import crash_plugin
    from tests.test_crash_safety import PROJECT_ROOT

    marker = tmp_path / "paused"
    tables = merge(base_config(tmp_path), {"storage": {"backend": crash_plugin.NAME},
                                           "plugins": {"modules": ["tests.crash_plugin"]}})
    env = {"PYTHONPATH": str(PROJECT_ROOT), crash_plugin.MARKER_ENV: str(marker)}
    pausing = start_registry(tmp_path / "a", tables, env={**env, crash_plugin.POINT_ENV: "put-after"})
    instances = [pausing]
    try:
        instances.append(start_registry(tmp_path / "b", tables, env=env))  # same database and root
        api = Api(pausing.url, pausing.token("lease"))
        body = package("1.0.0")
        url = create(api, "lease", len(body))
        completing = threading.Thread(target=lambda: _quietly(lambda: patch(api, url, 0, body)), daemon=True)
        completing.start()
        deadline = time.monotonic() + 60  # ends a hang, times nothing
        while not marker.exists():
            assert time.monotonic() < deadline, "the completing PATCH never stored the package"
            time.sleep(0.02)
        time.sleep(LEASE + 5)  # past the lease the PATCH took
        other = Api(instances[1].url, instances[1].token("lease"))
        try:
            again = other.http.patch(Api.path("lease", suffix="uploads/" + url.rsplit("/", 1)[1]), content=b"", headers={
                **TUS, "Upload-Offset": str(len(body)), "Content-Type": "application/offset+octet-stream"})
        finally:
            other.close()
        assert again.status_code == 409, again.text
        assert again.json()["code"] == "UPLOAD_OFFSET_MISMATCH"
    finally:
        for instance in instances:
            instance.kill()


def _quietly(call: Any) -> None:
    """``call()``, its transport failure ignored (the server is killed under it)."""
    with contextlib.suppress(httpx.HTTPError):
        call()
