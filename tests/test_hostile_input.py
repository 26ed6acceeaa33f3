"""Hostile input, round 2: what a client can send that once gave a 500, grew
memory without bound, or reached a terminal or a log line raw.

Every test talks to a live ``registry serve`` over real sockets.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FileServer
from tests.helpers import (
    Api,
    RegistryProcess,
    app_desc,
    base_config,
    blob_files,
    make_tar,
    make_zip,
    package,
    registry_command,
    staged_files,
    start_registry,
)
from tests.test_storage_conformance import DUMMY_AWS_ENV

HUGE = "9" * 5000  # past Python's 4300-digit limit on int()


def raw_request(registry: RegistryProcess, request: bytes) -> tuple[int, bytes, bytes]:
    """Send ``request`` on a fresh connection; (status, head, body) of the answer."""
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
            head, sep, body = received.partition(b"\r\n\r\n")
            lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            if sep and lengths and len(body) >= lengths[0]:
                break
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def error_code(response: httpx.Response) -> str:
    assert response.headers["bkapi-error-code"] == response.json()["code"]
    return str(response.json()["code"])


# -- 1. metrics labels come from a closed set -------------------------------------------------

def _series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_client_chosen_methods_and_paths_add_no_metric_series(registry: RegistryProcess) -> None:
    for i in range(40):
        # methods are tokens a client may invent; paths are anything
        status, _, _ = raw_request(registry, f"BREW{i} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status == 405
        status, _, _ = raw_request(registry, f"GET /nowhere/{i}?x={i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status == 404
    text = httpx.get(f"{registry.url}/metrics").text
    assert "BREW" not in text
    assert "/nowhere" not in text
    methods = {m for line in _series(text, "registry_http_requests_total")
               for m in re.findall(r'method="([^"]*)"', line)}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other"}
    assert "other" in methods
    statuses = {s for line in _series(text, "registry_http_requests_total") for s in re.findall(r'status="([^"]*)"', line)}
    assert all(re.fullmatch(r"[1-5][0-9][0-9]", s) for s in statuses), statuses


# -- 2. numbers of any length are a 400/416, never a 500 --------------------------------------

@pytest.mark.parametrize("name", ["limit", "offset"])
def test_huge_query_numbers_are_validation_errors(api: Api, code: str, name: str) -> None:
    response = api.list(code, **{name: HUGE})
    assert response.status_code == 400
    assert error_code(response) == "VALIDATION_ERROR"
    assert name in response.json()["fields_detail"]


def test_huge_range_numbers(api: Api, code: str) -> None:
    data = package("1.0.0", salt=code)
    package_id = api.upload(code, data).json()["id"]
    past_the_end = api.download(code, package_id, Range=f"bytes={HUGE}-")
    assert past_the_end.status_code == 416
    assert error_code(past_the_end) == "RANGE_NOT_SATISFIABLE"
    to_the_end = api.download(code, package_id, Range=f"bytes=1-{HUGE}")
    assert to_the_end.status_code == 206 and to_the_end.content == data[1:]
    suffix = api.download(code, package_id, Range=f"bytes=-{HUGE}")
    assert suffix.status_code == 206 and suffix.content == data


def test_huge_content_length_is_refused_without_a_500(registry: RegistryProcess, token: str, code: str) -> None:
    for declared in (HUGE, "9" * 30):
        status, head, body = raw_request(registry, (
            f"POST {Api.path(code)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {declared}\r\n"
            "Connection: close\r\n\r\n--b\r\n").encode())
        assert 400 <= status < 500, (head, body)


# -- 3. a multipart boundary python-multipart refuses -------------------------------------------

def test_overlong_multipart_boundary_is_a_validation_error(api: Api, code: str) -> None:
    boundary = "b" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"p.tar.gz\"\r\n\r\n"
            ).encode() + package("1.0.0", salt=code) + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    for suffix in ("", "link/"):
        response = api.http.post(api.path(code, suffix=suffix), content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert error_code(response) == "VALIDATION_ERROR"
    assert api.list(code).json()["count"] == 0


# -- 7. package names never carry terminal controls -------------------------------------------

EVIL_NAMES = {
    "\x1b[31mFORGED\x1b[0m\u202eevil\x7f\x85x.tar.gz": "_[31mFORGED_[0m_evil__x:1.0.0",
    "[bold red]markup[reverse].tar.gz": "[bold red]markup[reverse]:1.0.0",
    "\u2066iso\u2069\x08\x9b\x00.tar.gz": "_iso____:1.0.0",
}


def test_control_characters_in_names_become_underscores(api: Api, code: str, file_server: FileServer) -> None:
    for i, (file_name, expected) in enumerate(EVIL_NAMES.items()):
        module = f"m{i}"
        # built by hand: HTTP clients percent-encode some controls in a file name, curl sends them raw
        body = (b'--b\r\nContent-Disposition: form-data; name="version"\r\n\r\n1.0.0\r\n'
                b'--b\r\nContent-Disposition: form-data; name="package"; filename="' + file_name.encode()
                + b'"\r\n\r\n' + package(salt=f"{code}{i}") + b"\r\n--b--\r\n")
        response = api.http.post(api.path(code, module), content=body,
                                 headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert response.status_code == 201, response.text
        assert response.json()["package_name"] == expected
    url = file_server.add(f"{code}/x.tar.gz", package(salt=code + "link"))
    evil_url = url.rsplit("/", 1)[0] + "/%1b%5b2J%e2%80%aeevil%0a.tar.gz"
    file_server.add(f"{code}/\x1b[2J\u202eevil\n.tar.gz", package(salt=code + "link"))
    linked = api.link(code, evil_url, module="linked", version="2.0")
    assert linked.status_code == 201, linked.text
    assert linked.json()["package_name"] == "_[2J_evil_:2.0"


def _ls(registry: RegistryProcess, token: str, code: str, module: str, *, terminal: bool) -> bytes:
    command = ["ls", "--app", code, "--module", module, "--url", registry.url, "--token", token]
    return _client_command(command, terminal=terminal)


def _client_command(args: list[str], *, terminal: bool, stderr_too: bool = False) -> bytes:
    """What a ``registry`` client command writes to stdout (and stderr), on a
    pseudo-terminal or a pipe."""
    command = [*registry_command(), *args]
    env = {**os.environ, "COLUMNS": "300", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    if not terminal:
        return subprocess.run(command, capture_output=True, timeout=60, env=env, check=True).stdout
    controller, worker = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=worker, stderr=worker if stderr_too else subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, env=env)
        os.close(worker)
        output = b""
        while True:
            try:
                piece = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not piece:
                break
            output += piece
        assert process.wait(timeout=60) == 0
        return output
    finally:
        os.close(controller)


def _visible(output: bytes) -> str:
    """What a terminal shows: rich's own SGR colour codes removed."""
    return re.sub(r"\x1b\[[0-9;]*m", "", output.decode())


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_ls_never_prints_escapes_or_renders_markup(registry: RegistryProcess, token: str, code: str,
                                                    tmp_path: Path) -> None:
    db = registry.config.parent / "registry.db"
    api = Api(registry.url, token)
    try:
        assert api.upload(code, package(salt=code), filename="plain.tar.gz", version="1.0.0").status_code == 201
        assert api.upload(code, package(salt=code + "m"), filename="[bold red]markup[reverse].tar.gz",
                          version="1.0.1").status_code == 201
    finally:
        api.close()
    # a record stored before names were cleaned (or by another tool) still carries controls
    import sqlite3
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE packages SET package_name = ? WHERE code = ? AND version = '1.0.0'",
                     ("\x1b[2J\x1b[31mred\u202eevil\x07\x9b31m", code))
    as_json = _client_command(["ls", "--app", code, "--module", "default", "--url", registry.url, "--token", token,
                               "--json"], terminal=False).decode()
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e]", as_json.replace("\n", ""))
    assert "\x1b[2J\x1b[31mred\u202eevil\x07\x9b31m" in [r["package_name"] for r in json.loads(as_json)]
    for terminal in (False, True):
        output = _ls(registry, token, code, "default", terminal=terminal)
        shown = _visible(output) if terminal else output.decode()
        assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown and "\x9b" not in shown
        assert "[bold red]markup[reverse]" in shown
        assert "red" in shown


def test_progress_bars_show_file_names_as_they_are(registry: RegistryProcess, token: str, code: str,
                                                    tmp_path: Path) -> None:
    local = tmp_path / "[reverse]pkg[blink].tar.gz"
    local.write_bytes(package("1.0.0", salt=code))
    output = _client_command(["push", str(local), "--app", code, "--module", "default", "--url", registry.url,
                              "--token", token],
                             terminal=True, stderr_too=True)
    assert "hashing [reverse]pkg[blink].tar.gz" in _visible(output)  # the name as it is, not as markup


# -- 12. log lines carry no raw control characters -------------------------------------------------

def test_log_lines_escape_control_characters(registry: RegistryProcess, api: Api, code: str,
                                             file_server: FileServer) -> None:
    missing = f"file://{file_server.root}/{code}/%0aFORGED-LINE-{code}%1b[31m%e2%80%a8next.tar.gz"
    response = api.link(code, missing, version="1.0")
    assert response.status_code == 502, response.text
    assert api.http.get(f"/nowhere/{code}%e2%80%a8%e2%80%a9%c2%85%7f").status_code == 404
    # the access line is written once the response is sent: the client may read the log first
    deadline = time.monotonic() + 10
    while f'"/nowhere/{code}'.encode() not in (log := registry.log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = log.split(b"\n")
    assert not any(line.startswith(f"FORGED-LINE-{code}".encode()) for line in lines)
    assert b"\x1b[31m" not in log
    for forbidden in ("\u2028", "\u2029", "\x85", "\x7f", "\r"):
        assert forbidden.encode() not in log, forbidden
    text = log.decode()
    assert f"FORGED-LINE-{code}" in text  # still there, escaped, on the line of its own record
    access = [json.loads(line) for line in text.splitlines() if line.startswith("{") and code in line]
    assert any("\u2028" in entry["path"] for entry in access)  # the JSON line keeps the exact value, escaped



# -- 5. a full disk is 507 INSUFFICIENT_STORAGE, keeps nothing, and passes -----------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards; skips where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def random_package(size: int, seed: str) -> bytes:
    """A tar.gz of ``size`` incompressible bytes."""
    return make_tar({"app_desc.yaml": app_desc("1.0.0"), "blob.bin": hashlib.shake_256(seed.encode()).digest(size)})


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes; the filler file, to remove for space."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * (stats.f_bavail * stats.f_frsize - leave))
    return filler


def test_full_disk_is_507_keeps_nothing_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    root = tmp_path / "registry"
    tables = base_config(root, files_root=files)
    tables["storage.filesystem"] = {"root": str(small_disk / "packages")}  # the database stays on the big disk
    process = start_registry(root, tables)
    try:
        api = Api(process.url, process.token())
        data = random_package(1024 * 1024, "full-disk")
        (files / "pkg.tar.gz").write_bytes(data)
        assert httpx.get(f"{process.url}/readyz").status_code == 200
        filler = fill(small_disk, leave=256 * 1024)

        for response in (api.upload("full", data), api.link("full", f"file://{files}/pkg.tar.gz")):
            assert response.status_code == 507, response.text
            assert error_code(response) == "INSUFFICIENT_STORAGE"
        ready = httpx.get(f"{process.url}/readyz")
        assert ready.status_code == 507 and error_code(ready) == "INSUFFICIENT_STORAGE"
        assert api.list("full").json()["count"] == 0
        assert list(blob_files(small_disk / "packages")) == []
        assert staged_files(small_disk / "packages" / ".staging") == []

        filler.unlink()
        assert httpx.get(f"{process.url}/readyz").status_code == 200
        stored = api.upload("full", data)
        assert stored.status_code == 201, stored.text
        assert api.download("full", stored.json()["id"]).content == data
        api.close()
    finally:
        process.stop()
    log = process.log.read_text()
    assert "Traceback" not in log and "INTERNAL_ERROR" not in log


def test_full_database_disk_is_503_keeps_nothing_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    """The record store's disk full: 503 DATABASE_UNAVAILABLE (Retry-After), no blob or
    staging file left, /readyz says so, and uploads work again once space is freed."""
    root = tmp_path / "registry"
    tables = base_config(root)
    tables["database"] = {"path": str(small_disk / "registry.db")}  # the packages stay on the big disk
    process = start_registry(root, tables)
    try:
        api = Api(process.url, process.token())
        assert api.upload("dbfull", random_package(4096, "warm-up"), version="0.1").status_code == 201
        filler = fill(small_disk, leave=0)

        data = random_package(256 * 1024, "db-full")
        response = api.upload("dbfull", data, version="1.0")
        assert response.status_code == 503, response.text
        assert error_code(response) == "DATABASE_UNAVAILABLE" and int(response.headers["Retry-After"]) > 0
        ready = httpx.get(f"{process.url}/readyz")
        assert ready.status_code == 503 and error_code(ready) == "DATABASE_UNAVAILABLE"
        assert [r["version"] for r in api.list("dbfull").json()["results"]] == ["0.1"]
        assert len(list(blob_files(root / "packages"))) == 1
        assert staged_files(root / "packages" / ".staging") == []

        filler.unlink()
        assert httpx.get(f"{process.url}/readyz").status_code == 200
        stored = api.upload("dbfull", data, version="1.0")
        assert stored.status_code == 201, stored.text
        assert api.download("dbfull", stored.json()["id"]).content == data
        api.close()
    finally:
        process.stop()
    log = process.log.read_text()
    assert "Traceback" not in log and "INTERNAL_ERROR" not in log


def test_openapi_documents_insufficient_storage(registry: RegistryProcess) -> None:
    spec = httpx.get(f"{registry.url}/openapi.json").json()
    upload = "/bkapps/applications/{code}/modules/{module_name}/source_package/"
    for path, method in ((upload, "post"), (upload + "link/", "post"), ("/readyz", "get")):
        answer = spec["paths"][path][method]["responses"]["507"]
        assert answer["headers"]["bkapi-error-code"]["schema"]["enum"] == ["INSUFFICIENT_STORAGE"]


# -- 10. a download racing an overwrite gets one version's bytes, never a 503 ----------------------

def test_download_racing_overwrites_never_fails_or_mixes(registry: RegistryProcess, token: str, code: str) -> None:
    versions = [package(salt=f"{code}-{i}") for i in range(2)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    writer_api, reader_api = Api(registry.url, token), Api(registry.url, token)
    package_id = writer_api.upload(code, versions[0], version="1.0").json()["id"]
    done = threading.Event()
    problems: list[str] = []

    def overwrite() -> None:
        try:
            for i in range(150):
                response = writer_api.upload(code, versions[(i + 1) % 2], version="1.0", allow_overwrite="true")
                if response.status_code != 200:
                    problems.append(f"overwrite: {response.status_code} {response.text}")
        finally:
            done.set()

    writer = threading.Thread(target=overwrite)
    writer.start()
    downloads = 0
    try:
        while not done.is_set() or downloads < 50:
            head = reader_api.http.head(reader_api.path(code, suffix=f"{package_id}/download/"))
            if head.status_code != 200 or head.headers["etag"].strip('"') not in digests:
                problems.append(f"head: {head.status_code} {head.headers.get('etag')}")
            response = reader_api.download(code, package_id)
            downloads += 1
            digest = hashlib.sha256(response.content).hexdigest()
            if response.status_code != 200:
                problems.append(f"download: {response.status_code} {response.text}")
            elif digest not in digests or response.headers["etag"] != f'"{digest}"':
                problems.append(f"download: bytes {digest} under ETag {response.headers['etag']}")
    finally:
        writer.join()
        writer_api.close()
        reader_api.close()
    assert problems == []


# -- 8. a zip's local entries and central directory must agree --------------------------------------

def local_entry(name: bytes, data: bytes) -> bytes:
    """One stored zip local header and its data, listed in no central directory."""
    return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                       len(name), 0) + name + data


def hide_before_directory(archive: bytes, entry: bytes) -> bytes:
    """``entry`` inserted between the last member and the central directory, whose offset moves past it."""
    signature, disk, cd_disk, here, total, cd_size, cd_offset, comment = struct.unpack("<4s4H2LH", archive[-22:])
    eocd = struct.pack("<4s4H2LH", signature, disk, cd_disk, here, total, cd_size, cd_offset + len(entry), comment)
    return archive[:cd_offset] + entry + archive[cd_offset:-22] + eocd


def miscount(archive: bytes, count: int) -> bytes:
    """``archive`` with its end record counting ``count`` entries (zipfile reads the directory regardless)."""
    signature, disk, cd_disk, _, _, cd_size, cd_offset, comment = struct.unpack("<4s4H2LH", archive[-22:])
    return archive[:-22] + struct.pack("<4s4H2LH", signature, disk, cd_disk, count, count, cd_size, cd_offset, comment)


def test_zip_entries_missing_from_the_directory_are_refused(api: Api, code: str) -> None:
    good = make_zip({"app_desc.yaml": app_desc("1.0.0"), "src/main.py": b"print(1)\n"})
    evil = local_entry(b"../../../evil.sh", b"echo owned\n")
    renamed = good.replace(b"src/main.py", b"src/main.pz", 1)  # the first (local) spelling only
    for name, data in [("prepended", evil + good), ("before-directory", hide_before_directory(good, evil)),
                       ("local-name-differs", renamed), ("end-record-miscounts", miscount(good, 1))]:
        assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["app_desc.yaml", "src/main.py"]  # what unzip lists
        response = api.upload(code, data, filename=f"{name}.zip")
        assert response.status_code == 400, (name, response.text)
        assert error_code(response) == "INVALID_PACKAGE"
    assert api.list(code).json()["count"] == 0


class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes data descriptors after each member."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


def test_zips_with_data_descriptors_or_zip64_headers_are_accepted(api: Api, code: str) -> None:
    streamed = _Unseekable()
    with zipfile.ZipFile(streamed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("app_desc.yaml", app_desc("1.0.0"))
        archive.writestr("src/main.py", b"print(1)\n" * 100)
    assert bytes(streamed.data).count(b"PK\x07\x08") == 2
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("app_desc.yaml", "w", force_zip64=True) as member:
        member.write(app_desc("2.0.0"))
    for data in (bytes(streamed.data), buffer.getvalue()):
        response = api.upload(code, data, filename="p.zip")
        assert response.status_code == 201, response.text


# -- 13. ambiguous archives: one path twice, a tar that is also a zip ----------------------------------

def tar_entries(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A plain tar of (name, data) in order, folders where data is None, repeats allowed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_entries(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: the point here
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return buffer.getvalue()


def test_one_path_twice_is_refused(api: Api, code: str) -> None:
    twice = [("app_desc.yaml", app_desc("1.0.0")), ("src/main.py", b"1"), ("./app_desc.yaml", app_desc("6.6.6"))]
    cases = {
        "tar.tar": tar_entries(twice),
        "tar.tar.gz": gzip.compress(tar_entries(twice)),
        "zip.zip": zip_entries(twice),
        "file-then-folder.tar": tar_entries([("app_desc.yaml", app_desc("1.0.0")), ("src", b"x"), ("src", None)]),
    }
    for name, data in cases.items():
        response = api.upload(code, data, filename=name)
        assert response.status_code == 400, (name, response.text)
        assert error_code(response) == "INVALID_PACKAGE"
        assert "twice" in response.json()["detail"]
    folder_twice = tar_entries([("src", None), ("app_desc.yaml", app_desc("1.0.0")), ("src/", None)])
    assert api.upload(code, folder_twice, filename="ok.tar").status_code == 201


def test_tar_that_is_also_a_zip_is_refused(api: Api, code: str) -> None:
    inner = make_zip({"../../evil.sh": b"echo owned\n"})
    for name, data in [("polyglot.tar", tar_entries([("app_desc.yaml", app_desc("1.0.0")), ("z.zip", inner)])),
                       ("polyglot.tar.gz", gzip.compress(tar_entries([("app_desc.yaml", app_desc("1.0.0")),
                                                                      ("z.zip", inner)]), compresslevel=0))]:
        outer = data if name.endswith(".tar") else gzip.decompress(data)
        assert zipfile.ZipFile(io.BytesIO(outer)).namelist() == ["../../evil.sh"]  # what unzip would unpack
        response = api.upload(code, data, filename=name)
        assert response.status_code == 400, (name, response.text)
        assert error_code(response) == "INVALID_PACKAGE"
    # a zip deep inside a compressed tar is invisible to unzip: an ordinary package
    compressed = make_tar({"app_desc.yaml": app_desc("2.0.0"), "z.zip": inner})
    assert api.upload(code, compressed).status_code == 201


class _FullBucket(http.server.BaseHTTPRequestHandler):
    """An S3-compatible endpoint whose disk is full, as MinIO answers then:
    the bucket exists, every write is 507 ``XMinioStorageFull``."""

    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>XMinioStorageFull</Code>'
                b"<Message>Storage backend has reached its minimum free drive threshold.</Message></Error>")
        self.send_response(507)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_full_s3_store_is_507(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FullBucket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    tables = base_config(tmp_path)
    del tables["storage.filesystem"]
    tables["storage"] = {"backend": "s3", "staging_dir": str(tmp_path / "staging")}
    tables["storage.s3"] = {"bucket": "full", "endpoint_url": endpoint, "region": "us-east-1"}
    process = start_registry(tmp_path, tables, env={**DUMMY_AWS_ENV, "AWS_MAX_ATTEMPTS": "1"})
    try:
        api = Api(process.url, process.token())
        response = api.upload("s3full", package("1.0.0", salt="s3full"))
        assert response.status_code == 507, response.text
        assert error_code(response) == "INSUFFICIENT_STORAGE"
        assert api.list("s3full").json()["count"] == 0
        assert staged_files(tmp_path / "staging") == []
        api.close()
    finally:
        process.stop()
        server.shutdown()
        server.server_close()
