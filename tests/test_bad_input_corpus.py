"""A corpus of hostile and malformed requests against one live registry.

Each request gets its documented 4xx status and error code (asserted exactly,
per case), never a 5xx, and the store is the same after the whole corpus as
before it: the same records (every column), the same blob files with the same
bytes, an empty staging folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sqlite3
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    PACKAGES,
    Api,
    RegistryProcess,
    app_desc,
    base_config,
    blob_files,
    make_tar,
    make_zip,
    merge,
    package,
    staged_files,
    start_registry,
)
from tests.test_hostile_input import (
    hide_before_directory,
    local_entry,
    tar_entries,
    zip_entries,
)

CODE = "corpus"
MiB = 1024 * 1024
MAX_SIZE = MiB


@dataclass
class Ctx:
    """What a case needs: the registry, its clients and credentials."""

    process: RegistryProcess
    token: str
    read_only: str
    other_app: str
    secret: str
    files: Path
    existing_id: int

    @property
    def url(self) -> str:
        return self.process.url

    def client(self, headers: dict[str, Any] | None = None, token: str | None = None) -> httpx.Client:
        all_headers = {"Accept-Language": "en", **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=all_headers, timeout=30)

    def call(self, method: str, path: str, *, token: str | None = "default", headers: dict[str, Any] | None = None,
             **kwargs: Any) -> httpx.Response:
        with self.client(headers, self.token if token == "default" else token) as client:
            return client.request(method, path, **kwargs)

    def link(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.call("POST", PACKAGES.format(code=CODE, module="default") + "/link/", json=body, **kwargs)

    def upload(self, data: bytes, filename: str = "pkg.tar.gz", **fields: str) -> httpx.Response:
        return self.call("POST", PACKAGES.format(code=CODE, module="default") + "/",
                         files={"package": (filename, data)}, data=fields)

    def raw(self, request: bytes) -> tuple[int, dict[str, Any]]:
        """Send raw bytes; return the status and the JSON body of the answer."""
        with socket.create_connection(("127.0.0.1", self.process.port), timeout=30) as sock:
            sock.sendall(request)
            received = b""
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                received += piece
                head, _, body = received.partition(b"\r\n\r\n")
                length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body or b"{}")


def path(suffix: str = "", code: str = CODE, module: str = "default") -> str:
    return PACKAGES.format(code=code, module=module) + "/" + suffix


# -- archives --------------------------------------------------------------------------------

def tar_with(kind: bytes, name: str = "evil", linkname: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)
    return buffer.getvalue()


def zip_named(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("placeholder")
        info.filename = info.orig_filename = name
        archive.writestr(info, b"evil")
    return buffer.getvalue()


def zip_symlink(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, target)
    return buffer.getvalue()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str | None = None) -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    chunks = []
    for name, file_name, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{file_name}"' if file_name else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def send_multipart(c: Ctx, parts: list[tuple[str, str | None, bytes]], cut: int = 0) -> httpx.Response:
    body, content_type = multipart(parts)
    return c.call("POST", path(), content=body[: len(body) - cut], headers={"Content-Type": content_type})


GOOD = package(salt="corpus-other-bytes")
TGZ = package(salt="corpus-truncated")


# -- the corpus: (name, request, status, code) ---------------------------------------------------

Case = tuple[str, Callable[[Ctx], Any], int, str]

AUTH_CASES: list[Case] = [
    ("no-credential", lambda c: c.link({"package_url": "http://x/p"}, token=None), 401, "UNAUTHENTICATED"),
    ("gateway-not-json", lambda c: c.link({}, token=None, headers={"X-BKAPI-AUTHORIZATION": "not json"}),
     401, "UNAUTHENTICATED"),
    ("gateway-array", lambda c: c.link({}, token=None, headers={"X-BKAPI-AUTHORIZATION": "[]"}),
     401, "UNAUTHENTICATED"),
    ("gateway-deep-nesting", lambda c: c.link({}, token=None, headers={"X-BKAPI-AUTHORIZATION": "[" * 4000}),
     401, "UNAUTHENTICATED"),
    ("gateway-token-not-string", lambda c: c.link({}, token=None,
                                                  headers={"X-BKAPI-AUTHORIZATION": '{"access_token": 123}'}),
     401, "UNAUTHENTICATED"),
    ("gateway-app-code-without-secret", lambda c: c.link({}, token=None,
                                                         headers={"X-BKAPI-AUTHORIZATION": '{"bk_app_code": "x"}'}),
     401, "UNAUTHENTICATED"),
    ("gateway-too-long", lambda c: c.link({}, token=None, headers={
        "X-BKAPI-AUTHORIZATION": json.dumps({"access_token": "a" * 5000})}), 401, "UNAUTHENTICATED"),
    ("gateway-wrong-app-secret", lambda c: c.link({}, token=None, headers={
        "X-BKAPI-AUTHORIZATION": json.dumps({"bk_app_code": "corpus-app", "bk_app_secret": c.secret + "x"})}),
     401, "UNAUTHENTICATED"),
    ("gateway-latin1-token", lambda c: c.link({}, token=None, headers={
        "X-BKAPI-AUTHORIZATION": '{"access_token": "\xff\xfe"}'.encode("latin-1")}), 401, "UNAUTHENTICATED"),
    ("basic-auth", lambda c: c.link({}, token=None, headers={"Authorization": "Basic dXNlcjpwYXNz"}),
     401, "UNAUTHENTICATED"),
    ("bearer-empty", lambda c: c.link({}, token=None, headers={"Authorization": "Bearer"}),
     401, "UNAUTHENTICATED"),
    ("bearer-unknown", lambda c: c.link({}, token="spr_" + "A" * 43), 401, "UNAUTHENTICATED"),
    ("bearer-token-with-spaces", lambda c: c.link({}, token=c.token + " extra"), 401, "UNAUTHENTICATED"),
    ("read-only-token-writes", lambda c: c.link({"package_url": "http://x/p"}, token=c.read_only),
     403, "PERMISSION_DENIED"),
    ("other-app-token", lambda c: c.link({"package_url": "http://x/p"}, token=c.other_app),
     403, "PERMISSION_DENIED"),
    ("read-only-delete", lambda c: c.call("DELETE", path(f"{c.existing_id}/"), token=c.read_only),
     403, "PERMISSION_DENIED"),
]

PATH_CASES: list[Case] = [
    ("code-encoded-dot-dot", lambda c: c.call("GET", "/bkapps/applications/%2e%2e/modules/default/source_package/"),
     400, "VALIDATION_ERROR"),
    ("code-encoded-slash", lambda c: c.call("GET", "/bkapps/applications/a%2fb/modules/default/source_package/"),
     400, "VALIDATION_ERROR"),
    ("code-upper-case", lambda c: c.call("GET", path(code="Corpus")), 400, "VALIDATION_ERROR"),
    ("code-too-long", lambda c: c.call("GET", path(code="a" * 33)), 400, "VALIDATION_ERROR"),
    ("code-unicode", lambda c: c.call("GET", path(code="\uff43orpus")), 400, "VALIDATION_ERROR"),
    ("code-nul", lambda c: c.call("GET", "/bkapps/applications/cor%00pus/modules/default/source_package/"),
     400, "VALIDATION_ERROR"),
    ("module-leading-dash", lambda c: c.call("GET", path(module="-default")), 400, "VALIDATION_ERROR"),
    ("module-encoded-dot-dot-upload", lambda c: c.call(
        "POST", "/bkapps/applications/corpus/modules/%2e%2e/source_package/link/",
        json={"package_url": "http://x/p"}), 400, "VALIDATION_ERROR"),
    ("id-not-a-number", lambda c: c.call("GET", path("abc/")), 400, "VALIDATION_ERROR"),
    ("id-negative", lambda c: c.call("GET", path("-1/")), 400, "VALIDATION_ERROR"),
    ("id-huge", lambda c: c.call("GET", path("9" * 40 + "/")), 400, "VALIDATION_ERROR"),
    ("id-unicode-digits", lambda c: c.call("GET", path("\u0661\u0662/")), 400, "VALIDATION_ERROR"),
    ("id-missing", lambda c: c.call("GET", path("987654/")), 404, "PACKAGE_NOT_FOUND"),
    ("delete-missing", lambda c: c.call("DELETE", path("987654/")), 404, "PACKAGE_NOT_FOUND"),
    ("restore-missing", lambda c: c.call("POST", path("987654/restore/")), 404, "PACKAGE_NOT_FOUND"),
    ("download-missing", lambda c: c.call("GET", path("987654/download/")), 404, "PACKAGE_NOT_FOUND"),
    ("range-past-the-end", lambda c: c.call("GET", path(f"{c.existing_id}/download/"),
                                            headers={"Range": "bytes=99999999-"}), 416, "RANGE_NOT_SATISFIABLE"),
    ("unknown-route", lambda c: c.call("GET", "/bkapps/applications/corpus/secrets/"), 404, "NOT_FOUND"),
    ("wrong-method", lambda c: c.call("PUT", path()), 405, "METHOD_NOT_ALLOWED"),
    ("list-limit-zero", lambda c: c.call("GET", path(), params={"limit": "0"}), 400, "VALIDATION_ERROR"),
    ("list-limit-word", lambda c: c.call("GET", path(), params={"limit": "ten"}), 400, "VALIDATION_ERROR"),
    ("list-offset-negative", lambda c: c.call("GET", path(), params={"offset": "-1"}), 400, "VALIDATION_ERROR"),
    ("list-order-by-sql", lambda c: c.call("GET", path(), params={"order_by": "id; DROP TABLE packages"}),
     400, "VALIDATION_ERROR"),
    ("list-search-huge", lambda c: c.call("GET", path(), params={"search_term": "x" * 500}), 400, "VALIDATION_ERROR"),
]

BODY_CASES: list[Case] = [
    ("json-invalid", lambda c: c.call("POST", path("link/"), content=b"{", headers={"Content-Type": "application/json"}),
     400, "VALIDATION_ERROR"),
    ("json-array", lambda c: c.link([{"package_url": "http://x/p"}]), 400, "VALIDATION_ERROR"),
    ("json-string", lambda c: c.link("http://x/p"), 400, "VALIDATION_ERROR"),
    ("json-deep-nesting", lambda c: c.call("POST", path("link/"), content=b"[" * 50000,
                                           headers={"Content-Type": "application/json"}), 400, "VALIDATION_ERROR"),
    ("json-deep-object", lambda c: c.call("POST", path("link/"), content=b'{"a":' * 10000,
                                          headers={"Content-Type": "application/json"}), 400, "VALIDATION_ERROR"),
    ("json-nan", lambda c: c.call("POST", path("link/"), content=b'{"package_url": NaN}',
                                  headers={"Content-Type": "application/json"}), 400, "VALIDATION_ERROR"),
    ("json-huge-number-version", lambda c: c.call("POST", path("link/"),
                                                  content=b'{"package_url": "http://x/p", "version": 1e999}',
                                                  headers={"Content-Type": "application/json"}),
     400, "VALIDATION_ERROR"),
    ("url-number", lambda c: c.link({"package_url": 12345}), 400, "VALIDATION_ERROR"),
    ("url-list", lambda c: c.link({"package_url": ["http://x/p"]}), 400, "VALIDATION_ERROR"),
    ("url-object", lambda c: c.link({"package_url": {"$ne": ""}}), 400, "VALIDATION_ERROR"),
    ("url-missing", lambda c: c.link({"version": "1.0"}), 400, "VALIDATION_ERROR"),
    ("url-blank", lambda c: c.link({"package_url": "   "}), 400, "VALIDATION_ERROR"),
    ("url-huge", lambda c: c.link({"package_url": "http://x/" + "a" * 10000}), 400, "VALIDATION_ERROR"),
    ("url-newline", lambda c: c.link({"package_url": "http://x/p\r\nHost: evil"}), 400, "VALIDATION_ERROR"),
    ("url-no-scheme", lambda c: c.link({"package_url": "example.com/p.tar.gz"}), 400, "VALIDATION_ERROR"),
    ("url-bad-ipv6", lambda c: c.link({"package_url": "http://[::1/p"}), 400, "VALIDATION_ERROR"),
    ("url-bad-port", lambda c: c.link({"package_url": "http://127.0.0.1:99999/p"}), 400, "VALIDATION_ERROR"),
    ("url-no-host", lambda c: c.link({"package_url": "http:///p.tar.gz"}), 400, "VALIDATION_ERROR"),
    ("version-dot-dot", lambda c: c.link({"package_url": "http://x/p", "version": "../x"}), 400, "VALIDATION_ERROR"),
    ("version-slash", lambda c: c.link({"package_url": "http://x/p", "version": "1.0/../../etc"}),
     400, "VALIDATION_ERROR"),
    ("version-too-long", lambda c: c.link({"package_url": "http://x/p", "version": "1" * 129}),
     400, "VALIDATION_ERROR"),
    ("version-leading-dash", lambda c: c.link({"package_url": "http://x/p", "version": "-rf"}),
     400, "VALIDATION_ERROR"),
    ("version-nul", lambda c: c.link({"package_url": "http://x/p", "version": "1\x00"}), 400, "VALIDATION_ERROR"),
    ("version-number", lambda c: c.link({"package_url": "http://x/p", "version": 1}), 400, "VALIDATION_ERROR"),
    ("version-unicode", lambda c: c.link({"package_url": "http://x/p", "version": "１.0"}), 400, "VALIDATION_ERROR"),
    ("overwrite-maybe", lambda c: c.link({"package_url": "http://x/p", "allow_overwrite": "maybe"}),
     400, "VALIDATION_ERROR"),
    ("overwrite-number", lambda c: c.link({"package_url": "http://x/p", "allow_overwrite": 2}),
     400, "VALIDATION_ERROR"),
    ("sha256-short", lambda c: c.link({"package_url": "http://x/p", "sha256": "abc"}), 400, "VALIDATION_ERROR"),
    ("sha256-not-hex", lambda c: c.link({"package_url": "http://x/p", "sha256": "z" * 64}), 400, "VALIDATION_ERROR"),
    ("sha256-number", lambda c: c.link({"package_url": "http://x/p", "sha256": 1}), 400, "VALIDATION_ERROR"),
    ("body-too-large", lambda c: c.link({"package_url": "http://x/p", "pad": "x" * (100 * 1024)}),
     400, "VALIDATION_ERROR"),
    ("body-not-utf8", lambda c: c.call("POST", path("link/"), content=b"package_url=\xff\xfe",
                                       headers={"Content-Type": "application/x-www-form-urlencoded"}),
     400, "VALIDATION_ERROR"),
    ("form-too-many-fields", lambda c: c.call("POST", path("link/"), content="&".join(f"f{i}=1" for i in range(200)),
                                              headers={"Content-Type": "application/x-www-form-urlencoded"}),
     400, "VALIDATION_ERROR"),
    ("lying-content-length-short", lambda c: c.raw(
        b"POST " + path("link/").encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + c.token.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        + b'{"package_url": "file:///etc/passwd"}'), 400, "VALIDATION_ERROR"),
    ("declared-upload-size-huge", lambda c: c.raw(
        b"POST " + path().encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + c.token.encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000000000\r\n"
        b"Connection: close\r\n\r\n--b\r\n"), 413, "PACKAGE_TOO_LARGE"),
]

ORIGIN_CASES: list[Case] = [
    ("scheme-ftp", lambda c: c.link({"package_url": "ftp://example.com/p.tar.gz", "version": "9"}),
     400, "UNSUPPORTED_SOURCE_ORIGIN"),
    ("scheme-gopher", lambda c: c.link({"package_url": "gopher://127.0.0.1:70/_GET", "version": "9"}),
     400, "UNSUPPORTED_SOURCE_ORIGIN"),
    ("scheme-javascript", lambda c: c.link({"package_url": "javascript:alert(1)", "version": "9"}),
     400, "UNSUPPORTED_SOURCE_ORIGIN"),
    ("scheme-data", lambda c: c.link({"package_url": "data:application/gzip;base64,H4sI", "version": "9"}),
     400, "UNSUPPORTED_SOURCE_ORIGIN"),
    ("scheme-dict", lambda c: c.link({"package_url": "dict://127.0.0.1:11211/stats", "version": "9"}),
     400, "UNSUPPORTED_SOURCE_ORIGIN"),
    ("scheme-s3-disabled", lambda c: c.link({"package_url": "s3://bucket/key.tar.gz", "version": "9"}),
     400, "UNSUPPORTED_SOURCE_ORIGIN"),
    ("ssrf-loopback", lambda c: c.link({"package_url": f"http://127.0.0.1:{c.process.port}/healthz", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("ssrf-localhost", lambda c: c.link({"package_url": "http://localhost/p.tar.gz", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("ssrf-upper-scheme", lambda c: c.link({"package_url": "HTTP://LOCALHOST./p.tar.gz", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("ssrf-ipv6-loopback", lambda c: c.link({"package_url": "http://[::1]:1/p", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("ssrf-decimal", lambda c: c.link({"package_url": "http://2130706433/p", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("ssrf-mapped", lambda c: c.link({"package_url": "http://[::ffff:127.0.0.1]/p", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("ssrf-unspecified", lambda c: c.link({"package_url": "http://0.0.0.0:1/p", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("ssrf-userinfo-trick", lambda c: c.link({"package_url": "http://example.com@127.0.0.1/p", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("file-outside-roots", lambda c: c.link({"package_url": "file:///etc/passwd", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("file-dot-dot", lambda c: c.link({"package_url": f"file://{c.files}/../../../etc/passwd", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("file-remote-host", lambda c: c.link({"package_url": f"file://evil{c.files}/pkg.tar.gz", "version": "9"}),
     403, "SOURCE_ORIGIN_FORBIDDEN"),
    ("file-checksum-mismatch", lambda c: c.link({"package_url": f"file://{c.files}/pkg.tar.gz", "version": "9",
                                                 "sha256": "0" * 64}), 400, "CHECKSUM_MISMATCH"),
    ("file-conflict", lambda c: c.link({"package_url": f"file://{c.files}/other.tar.gz", "version": "1.0.0"}),
     409, "PACKAGE_ALREADY_EXISTS"),
    ("file-conflict-known-by-sha", lambda c: c.link({
        "package_url": f"file://{c.files}/other.tar.gz", "version": "1.0.0",
        "sha256": hashlib.sha256(GOOD).hexdigest()}), 409, "PACKAGE_ALREADY_EXISTS"),
]

ARCHIVE_CASES: list[Case] = [
    ("archive-empty-file", lambda c: c.upload(b"", version="9"), 400, "INVALID_PACKAGE"),
    ("archive-garbage", lambda c: c.upload(b"MZ\x90\x00 not an archive", version="9"), 400, "INVALID_PACKAGE"),
    ("archive-truncated-gzip", lambda c: c.upload(TGZ[:-8], version="9"), 400, "INVALID_PACKAGE"),
    ("archive-truncated-half", lambda c: c.upload(TGZ[: len(TGZ) // 2], version="9"), 400, "INVALID_PACKAGE"),
    ("archive-absolute-path", lambda c: c.upload(make_tar({"/etc/cron.d/x": b"* * * * * root sh"}), version="9"),
     400, "INVALID_PACKAGE"),
    ("archive-dot-dot", lambda c: c.upload(make_tar({"../../x": b"x"}), version="9"), 400, "INVALID_PACKAGE"),
    ("archive-symlink-escape", lambda c: c.upload(tar_with(tarfile.SYMTYPE, "l", "../../../etc"), version="9"),
     400, "INVALID_PACKAGE"),
    ("archive-hardlink-escape", lambda c: c.upload(tar_with(tarfile.LNKTYPE, "h", "/etc/shadow"), version="9"),
     400, "INVALID_PACKAGE"),
    ("archive-device", lambda c: c.upload(tar_with(tarfile.CHRTYPE, "dev/mem"), version="9"), 400, "INVALID_PACKAGE"),
    ("archive-fifo", lambda c: c.upload(tar_with(tarfile.FIFOTYPE, "pipe"), version="9"), 400, "INVALID_PACKAGE"),
    ("archive-too-many-members", lambda c: c.upload(make_tar({f"f{i}": b"x" for i in range(51)}), version="9"),
     400, "INVALID_PACKAGE"),
    ("archive-unpacked-too-large", lambda c: c.upload(make_tar({"big": bytes(5 * MiB)}), version="9"),
     400, "INVALID_PACKAGE"),
    ("archive-zip-backslash", lambda c: c.upload(zip_named("..\\..\\evil.bat"), "p.zip", version="9"),
     400, "INVALID_PACKAGE"),
    ("archive-zip-symlink", lambda c: c.upload(zip_symlink("link", "/etc/passwd"), "p.zip", version="9"),
     400, "INVALID_PACKAGE"),
    ("archive-second-tar-hidden", lambda c: c.upload(
        make_tar({"a": b"a"}, "") + make_tar({"/etc/evil": b"x"}, ""), "p.tar", version="9"), 400, "INVALID_PACKAGE"),
    ("archive-too-large", lambda c: c.upload(bytes(MAX_SIZE + 1), version="9"), 413, "PACKAGE_TOO_LARGE"),
    ("archive-checksum-mismatch", lambda c: c.upload(GOOD, version="9", sha256="f" * 64), 400, "CHECKSUM_MISMATCH"),
    ("archive-conflict", lambda c: c.upload(GOOD, version="1.0.0"), 409, "PACKAGE_ALREADY_EXISTS"),
    ("archive-no-version", lambda c: c.upload(GOOD), 400, "MISSING_VERSION_INFO"),
    ("archive-app-desc-bad-version", lambda c: c.upload(make_tar({"app_desc.yaml": app_desc("../../x")})),
     400, "VALIDATION_ERROR"),
    ("archive-app-desc-not-mapping", lambda c: c.upload(make_tar({"app_desc.yaml": b"- just\n- a list\n"})),
     400, "INVALID_PACKAGE"),
    ("archive-app-desc-yaml-bomb", lambda c: c.upload(make_tar({"app_desc.yaml": b"a: &a [" + b"*a," * 10 + b"]\n"})),
     400, "INVALID_PACKAGE"),
]

MULTIPART_CASES: list[Case] = [
    ("multipart-no-boundary", lambda c: c.call("POST", path(), content=b"--x\r\n",
                                               headers={"Content-Type": "multipart/form-data"}),
     400, "VALIDATION_ERROR"),
    ("multipart-garbage", lambda c: c.call("POST", path(), content=b"\x00\x01garbage",
                                           headers={"Content-Type": "multipart/form-data; boundary=zzz"}),
     400, "VALIDATION_ERROR"),
    ("multipart-no-package", lambda c: c.call("POST", path(), files={"other": ("x.tar.gz", GOOD)},
                                              data={"version": "9"}), 400, "VALIDATION_ERROR"),
    ("multipart-two-packages", lambda c: send_multipart(
        c, [("version", None, b"9"), ("package", "a.tar.gz", GOOD), ("package", "b.tar.gz", GOOD)]),
     400, "VALIDATION_ERROR"),
    ("multipart-field-too-large", lambda c: c.call("POST", path(), files={"package": ("p.tar.gz", GOOD)},
                                                   data={"version": "9" * 20000}), 400, "VALIDATION_ERROR"),
    ("multipart-too-many-parts", lambda c: send_multipart(c, [(f"f{i}", None, b"1") for i in range(100)]),
     400, "VALIDATION_ERROR"),
    ("multipart-cut-short", lambda c: send_multipart(
        c, [("version", None, b"9"), ("package", "a.tar.gz", GOOD)], cut=40), 400, "VALIDATION_ERROR"),
    ("file-upload-as-json", lambda c: c.call("POST", path(), json={"package": "H4sI"}), 400, "VALIDATION_ERROR"),
    ("file-upload-version-invalid", lambda c: c.upload(GOOD, version="bad version"), 400, "VALIDATION_ERROR"),
]

HUGE = "9" * 5000  # past Python's 4300-digit limit on int()
EVIL_LOCAL = local_entry(b"../../../evil.sh", b"echo owned\n")
ZIP_GOOD = make_zip({"app_desc.yaml": app_desc("9"), "src/main.py": b"print(1)\n"})
TWICE = [("app_desc.yaml", app_desc("9")), ("src/main.py", b"1"), ("./app_desc.yaml", app_desc("6.6.6"))]

ROUND2_CASES: list[Case] = [
    ("list-limit-huge", lambda c: c.call("GET", path(), params={"limit": HUGE}), 400, "VALIDATION_ERROR"),
    ("list-offset-huge", lambda c: c.call("GET", path(), params={"offset": HUGE}), 400, "VALIDATION_ERROR"),
    ("list-offset-19-digits", lambda c: c.call("GET", path(), params={"offset": "9" * 19}), 400, "VALIDATION_ERROR"),
    ("range-huge-start", lambda c: c.call("GET", path(f"{c.existing_id}/download/"),
                                          headers={"Range": f"bytes={HUGE}-"}), 416, "RANGE_NOT_SATISFIABLE"),
    ("range-huge-suffix-of-zero", lambda c: c.call("GET", path(f"{c.existing_id}/download/"),
                                                   headers={"Range": "bytes=-" + "0" * 5000}),
     416, "RANGE_NOT_SATISFIABLE"),
    ("method-invented", lambda c: c.call("BREW", path()), 405, "METHOD_NOT_ALLOWED"),
    ("multipart-boundary-too-long", lambda c: c.call(
        "POST", path(), content=b"--" + b"b" * 300 + b"\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=" + "b" * 300}), 400, "VALIDATION_ERROR"),
    ("multipart-boundary-too-long-link", lambda c: c.call(
        "POST", path("link/"), content=b"--" + b"b" * 300 + b"\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=" + "b" * 300}), 400, "VALIDATION_ERROR"),
    ("multipart-boundary-empty-quoted", lambda c: c.call(
        "POST", path(), content=b"----\r\n", headers={"Content-Type": 'multipart/form-data; boundary=""'}),
     400, "VALIDATION_ERROR"),
    ("archive-zip-local-entry-prepended", lambda c: c.upload(EVIL_LOCAL + ZIP_GOOD, "p.zip"),
     400, "INVALID_PACKAGE"),
    ("archive-zip-local-entry-before-directory", lambda c: c.upload(
        hide_before_directory(ZIP_GOOD, EVIL_LOCAL), "p.zip"), 400, "INVALID_PACKAGE"),
    ("archive-tar-path-twice", lambda c: c.upload(tar_entries(TWICE), "p.tar"), 400, "INVALID_PACKAGE"),
    ("archive-zip-path-twice", lambda c: c.upload(zip_entries(TWICE), "p.zip"), 400, "INVALID_PACKAGE"),
    ("archive-tar-also-a-zip", lambda c: c.upload(tar_entries([
        ("app_desc.yaml", app_desc("9")), ("z.zip", make_zip({"../../evil.sh": b"x"}))]), "p.tar"),
     400, "INVALID_PACKAGE"),
]

CORPUS: list[Case] = (AUTH_CASES + PATH_CASES + BODY_CASES + ORIGIN_CASES + ARCHIVE_CASES + MULTIPART_CASES
                      + ROUND2_CASES)


# -- the registry and the snapshot --------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    root = tmp_path_factory.mktemp("corpus")
    files = tmp_path_factory.mktemp("corpus-files")
    (files / "pkg.tar.gz").write_bytes(package(salt="corpus-file"))
    (files / "other.tar.gz").write_bytes(GOOD)
    tables = merge(base_config(root, files_root=files), {
        "origins.http": {"allow_private_networks": False},
        "limits": {"max_package_size": MAX_SIZE, "max_members": 50, "max_unpacked_size": 4 * MiB},
    })
    process = start_registry(root, tables)
    token = process.token("corpus")
    secret = process.cli("app-secret", "create", "--app-code", "corpus-app").stdout.strip().splitlines()[-1]
    api = Api(process.url, token)
    first = api.upload(CODE, package(salt="corpus-existing"), filename="existing.tar.gz", version="1.0.0")
    second = api.link(CODE, f"file://{files}/pkg.tar.gz", version="1.1.0")
    api.close()
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    yield Ctx(process, token, process.token("reader", read_only=True), process.token("other", apps=("other",)),
              secret, files, first.json()["id"])
    process.stop()


def snapshot(process: RegistryProcess) -> dict[str, Any]:
    root = process.config.parent
    conn = sqlite3.connect(f"file:{root / 'registry.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT * FROM packages ORDER BY id").fetchall()
    finally:
        conn.close()
    packages = root / "packages"
    blobs = {str(p.relative_to(packages)): hashlib.sha256(p.read_bytes()).hexdigest() for p in blob_files(packages)}
    staging = [p.name for p in staged_files(packages / ".staging")]
    return {"rows": rows, "blobs": blobs, "staging": staging}


@pytest.fixture(scope="module")
def before(ctx: Ctx) -> dict[str, Any]:
    return snapshot(ctx.process)


def test_corpus_is_large_enough() -> None:
    names = [name for name, *_ in CORPUS]
    assert len(names) >= 40 and len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "send", "status", "code"), CORPUS, ids=[case[0] for case in CORPUS])
def test_bad_input(ctx: Ctx, before: dict[str, Any], name: str, send: Callable[[Ctx], Any], status: int,
                   code: str) -> None:
    result = send(ctx)
    if isinstance(result, tuple):
        got_status, body = result
        header = body.get("code")
    else:
        got_status, body = result.status_code, result.json()
        header = result.headers.get("bkapi-error-code")
        assert result.headers["content-type"].startswith("application/json")
    assert got_status < 500, body
    assert (got_status, body.get("code")) == (status, code), body
    assert header == code
    assert isinstance(body.get("detail"), str) and body["detail"]


def test_store_unchanged_after_the_corpus(ctx: Ctx, before: dict[str, Any]) -> None:
    after = snapshot(ctx.process)
    assert after == before
    assert before["staging"] == []
    assert len(before["rows"]) == 2 and len(before["blobs"]) == 2
    listing = httpx.get(f"{ctx.url}{path()}", headers={"Authorization": f"Bearer {ctx.token}"}).json()
    assert [r["version"] for r in listing["results"]] == ["1.1.0", "1.0.0"]
    log = ctx.process.log.read_text()
    assert "Traceback" not in log and "INTERNAL_ERROR" not in log
