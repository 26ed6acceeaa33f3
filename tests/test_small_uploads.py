"""Small uploads (a body of at most ``SMALL_BODY`` bytes, received in memory and
stored in one write-thread hand-off) behave exactly like streamed ones.

A request with a ``Content-Length`` under the limit takes the small path; the
same body sent chunked (no ``Content-Length``) is streamed through a staging
file. Both must refuse the same bad packages with the same status and code,
keep nothing of a refused one, and store the blob before its record exists.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import socket
import sqlite3
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from registry_plugins.storage_filesystem import FilesystemStorage

from registry.small_uploads import SMALL_BODY
from tests.crash_plugin import PausingStorage
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    make_tar,
    make_zip,
    package,
    staged_files,
    start_registry,
)
from tests.test_upload_file import multipart_body


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("small")
    process = start_registry(root, base_config(root))
    yield process
    process.stop()


def _send(registry: RegistryProcess, token: str, code: str, data: bytes, *, chunked: bool,
          **fields: str) -> httpx.Response:
    """POST ``data`` as the ``package`` part: with a Content-Length (small path)
    or chunked (streamed path)."""
    body, content_type = multipart_body([*((k, None, v.encode()) for k, v in fields.items()),
                                         ("package", "demo.tar.gz", data)])
    assert len(body) <= SMALL_BODY
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    with httpx.Client(base_url=registry.url, timeout=60) as http:
        content = iter([body[: len(body) // 2], body[len(body) // 2:]]) if chunked else body
        response = http.post(Api.path(code), content=content, headers=headers)
    assert ("transfer-encoding" in response.request.headers) is chunked
    return response


def _traversal() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


def _bomb() -> bytes:
    """66 MiB of zeros in a few hundred bytes of bz2: past the ratio limit's floor."""
    return bz2.compress(make_tar({"zeros.bin": bytes(66 * 1024 * 1024)}, compression=""))


def _tar_with_zip_inside() -> bytes:
    """A plain tar whose last member is a zip: unzip would read it as a zip."""
    inner = make_zip({"hidden.py": b"print('hidden')\n"})
    return make_tar({"src/main.py": b"print(1)\n", "z.zip": inner}, compression="")


#: Bad uploads, built when a test asks (the bomb is 66 MiB before compression).
BAD: dict[str, Callable[[], tuple[bytes, dict[str, str]]]] = {
    "empty": lambda: (b"", {"version": "1.0"}),
    "not an archive": lambda: (b"just some text, no archive at all" * 20, {"version": "1.0"}),
    "truncated gzip": lambda: (package("1.0")[:60], {"version": "1.0"}),
    "unsafe member": lambda: (_traversal(), {"version": "1.0"}),
    "bomb": lambda: (_bomb(), {"version": "1.0"}),
    "polyglot": lambda: (_tar_with_zip_inside(), {"version": "1.0"}),
    "no version anywhere": lambda: (make_tar({"src/main.py": b"print(1)\n"}), {}),
    "bad version in app_desc": lambda: (make_tar({"app_desc.yaml": b"specVersion: 3\nappVersion: 'a b'\n"}), {}),
    "checksum mismatch": lambda: (package("1.0"), {"version": "1.0", "sha256": "0" * 64}),
    "empty zip": lambda: (make_zip({}), {"version": "1.0"}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_small_and_streamed_uploads_refuse_alike(small_registry: RegistryProcess, code: str, case: str) -> None:
    data, fields = BAD[case]()
    token = small_registry.token("alice")
    packages = small_registry.config.parent / "packages"
    blobs_before = set(blob_files(packages))
    small = _send(small_registry, token, code, data, chunked=False, **fields)
    streamed = _send(small_registry, token, code, data, chunked=True, **fields)
    assert 400 <= small.status_code < 500, small.text
    assert (small.status_code, small.headers["bkapi-error-code"]) == \
        (streamed.status_code, streamed.headers["bkapi-error-code"])
    assert small.json()["code"] == streamed.json()["code"]
    assert set(blob_files(packages)) == blobs_before, "a refused upload left a blob"
    assert staged_files(packages / ".staging") == [], "a refused upload left a staging file"
    api = Api(small_registry.url, token)
    try:
        assert api.list(code, include_deleted="true").json()["count"] == 0
    finally:
        api.close()


def test_small_and_streamed_uploads_store_alike(small_registry: RegistryProcess, code: str) -> None:
    """The same package both ways: one 201, then 200 identical; the same
    record fields and the stored bytes are the sent ones."""
    token = small_registry.token("alice")
    data = package("3.1.0", salt=code)
    first = _send(small_registry, token, code, data, chunked=False)
    again = _send(small_registry, token, code, data, chunked=True)
    assert first.status_code == 201, first.text
    assert again.status_code == 200 and again.headers["registry-upload-outcome"] == "identical"
    assert again.json() == first.json()
    assert first.json()["version"] == "3.1.0"  # read from app_desc.yaml
    assert first.json()["sha256_signature"] == hashlib.sha256(data).hexdigest()
    other = package("3.2.0", salt=code)
    streamed = _send(small_registry, token, code, other, chunked=True)
    assert streamed.status_code == 201, streamed.text
    conflict = _send(small_registry, token, code, package("3.2.0", salt=code + "-other"), chunked=False)
    assert conflict.status_code == 409 and conflict.json()["code"] == "PACKAGE_ALREADY_EXISTS"
    api = Api(small_registry.url, token)
    try:
        assert api.download(code, first.json()["id"]).content == data
        assert api.download(code, streamed.json()["id"]).content == other
    finally:
        api.close()
    assert staged_files(small_registry.config.parent / "packages" / ".staging") == []


def test_a_small_upload_stores_its_blob_before_its_record(small_registry: RegistryProcess, code: str) -> None:
    """While another process holds SQLite's write lock, a small upload's blob
    is already durable in storage and its record is not yet visible; once the
    lock goes, the record appears and names those bytes."""
    token = small_registry.token("alice")
    packages = small_registry.config.parent / "packages"
    data = package("1.0.0", salt=code)
    results: list[httpx.Response] = []
    lock = sqlite3.connect(small_registry.config.parent / "registry.db", timeout=30, isolation_level=None)
    api = Api(small_registry.url, token)
    try:
        lock.execute("BEGIN IMMEDIATE")
        worker = threading.Thread(target=lambda: results.append(
            _send(small_registry, token, code, data, chunked=False)))
        worker.start()
        deadline = time.monotonic() + 20
        while not list((packages / code).rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        stored = [p for p in (packages / code).rglob("*") if p.is_file()]
        assert len(stored) == 1 and stored[0].read_bytes() == data, "the blob is stored before the commit"
        assert api.list(code, include_deleted="true").json()["count"] == 0, "no record before the commit"
        assert not results
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    worker.join(30)
    try:
        assert results and results[0].status_code == 201, results[0].text if results else "no answer"
        assert api.download(code, results[0].json()["id"]).content == data
    finally:
        api.close()


def test_only_a_storage_doing_exactly_its_own_put_offers_blocking_calls(tmp_path: Path) -> None:
    """A subclass that adds to put or delete (a pause, a fault) is never bypassed."""
    assert FilesystemStorage(tmp_path).blocking() is not None
    assert PausingStorage(tmp_path).blocking() is None


def test_a_blocking_put_leaves_the_staged_file_gone(tmp_path: Path) -> None:
    """The small-upload path removes its staging file only when the put fails:
    a put that returns has moved it (the contract of ``put_blocking``)."""
    storage = FilesystemStorage(tmp_path / "blobs")
    blocking = storage.blocking()
    assert blocking is not None
    for n in range(2):  # the module's folder made by the first put, found by the second
        staged = tmp_path / f"upload-{n}.part"
        staged.write_bytes(b"package %d" % n)
        blocking.put_blocking(staged, f"app/module/blob-{n}")
        assert not staged.exists()
        assert (tmp_path / "blobs" / "app" / "module" / f"blob-{n}").read_bytes() == b"package %d" % n


def test_a_zip_received_in_memory_is_inspected_whole(small_registry: RegistryProcess, code: str) -> None:
    token = small_registry.token("alice")
    data = make_zip({"app_desc.yaml": b"specVersion: 3\nappVersion: 2.0.0\n", "src/a.py": b"a = 1\n"})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert len(archive.infolist()) == 2
    stored = _send(small_registry, token, code, data, chunked=False)
    assert stored.status_code == 201, stored.text
    assert stored.json()["version"] == "2.0.0"


def test_a_body_framed_by_both_length_and_chunks_is_refused(small_registry: RegistryProcess) -> None:
    """Content-Length and Transfer-Encoding together is how a request is
    smuggled past a proxy that frames the body by the other header (RFC 9112
    section 6.3 lets a server refuse it): 400 from the head alone, before a
    byte of the body is read, the connection closed and nothing kept."""
    token = small_registry.token("framing")
    packages = small_registry.config.parent / "packages"
    blobs_before = set(blob_files(packages))
    body, content_type = multipart_body([("package", "demo.tar.gz", package("1.0.0"))])
    head = (f"POST {Api.path('framing')} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n"
            "\r\n").encode()
    with socket.create_connection(("127.0.0.1", small_registry.port), timeout=60) as client:
        client.sendall(head)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head_text, _, answer_body = answer.partition(b"\r\n\r\n")
    assert head_text.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"bkapi-error-code: VALIDATION_ERROR" in head_text
    assert b"connection: close" in head_text.lower()
    assert json.loads(answer_body)["code"] == "VALIDATION_ERROR"
    with httpx.Client(base_url=small_registry.url, timeout=60) as http:
        listed = http.get(Api.path("framing"), headers={"Authorization": f"Bearer {token}"})
    assert listed.json()["count"] == 0
    assert set(blob_files(packages)) == blobs_before
    assert staged_files(packages / ".staging") == []


@pytest.mark.anyio
async def test_the_small_body_buffer_holds_no_more_than_a_small_body() -> None:
    """Whatever reaches it, the in-memory buffer refuses to grow past SMALL_BODY."""
    from registry.errors import ValidationError
    from registry.small_uploads import BodyBuffer

    buffer = BodyBuffer(max_size=10 * SMALL_BODY)
    await buffer.write(b"x" * SMALL_BODY)
    with pytest.raises(ValidationError):
        await buffer.write(b"x")
    assert buffer.size == SMALL_BODY + 1 and len(buffer.data) == SMALL_BODY


def test_a_small_upload_whose_blob_cannot_be_stored_keeps_nothing(small_registry: RegistryProcess,
                                                                  code: str) -> None:
    """The put itself fails (the application's blob folder is blocked by a
    file): both paths answer the same storage error and keep no staging file,
    no blob and no record. The small path removes its staging file only on
    such a failure, so this is the test that pins that removal."""
    token = small_registry.token("alice")
    packages = small_registry.config.parent / "packages"
    (packages / code).write_bytes(b"in the way of the application's folder")
    try:
        for chunked in (False, True):
            response = _send(small_registry, token, code, package("1.0.0", salt=code), chunked=chunked)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "OBJECT_STORE_EXCEPTION"
            assert staged_files(packages / ".staging") == [], f"a failed put left a staging file ({chunked=})"
        api = Api(small_registry.url, token)
        try:
            assert api.list(code, include_deleted="true").json()["count"] == 0
        finally:
            api.close()
    finally:
        (packages / code).unlink()
    stored = _send(small_registry, token, code, package("1.0.0", salt=code), chunked=False)
    assert stored.status_code == 201, stored.text
    assert staged_files(packages / ".staging") == []
