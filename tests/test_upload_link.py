"""Upload by link, through a live server fetching from a real local HTTP server."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from tests.conftest import FileServer
from tests.helpers import Api, RegistryProcess, package

DOC_BOUNDARY = "----WebKitFormBoundaryohLfLFHX1EPDP7rB"


def test_json_body_with_documented_fields(api: Api, code: str, file_server: FileServer) -> None:
    data = package(salt=code)
    url = file_server.add(f"{code}/generic/example.tar.gz", data)
    response = api.link(code, url, version="0.0.5")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "version", "package_name", "package_size", "sha256_signature",
                         "is_deleted", "updated", "created", "operator"}
    assert body["version"] == "0.0.5"
    assert body["package_name"] == "example:0.0.5"
    assert body["package_size"] == str(len(data))
    assert body["sha256_signature"] == hashlib.sha256(data).hexdigest()
    assert body["is_deleted"] is False
    assert body["operator"] == "alice"
    assert body["created"] == body["updated"]
    assert len(body["created"]) == len("2024-08-20 19:37:00")


def test_documented_curl_json_call_verbatim(registry: RegistryProcess, token: str, code: str,
                                            file_server: FileServer) -> None:
    """The platform's documented call: gateway header, JSON body, /api/bkpaas3/stag/ prefix."""
    url = file_server.add(f"{code}/generic/example.tar.gz", package(salt=code))
    body = ('{ "package_url": "' + url + '", "version": "0.0.5" }').encode()
    response = httpx.post(
        f"{registry.url}/api/bkpaas3/stag/bkapps/applications/{code}/modules/default/source_package/link/",
        content=body,
        headers={"Content-Type": "application/json",
                 "X-Bkapi-Authorization": json.dumps({"access_token": token, "bk_ticket": "ignored"})},
    )
    assert response.status_code == 201, response.text
    assert response.json()["package_name"] == "example:0.0.5"


def test_documented_webkit_multipart_body_byte_for_byte(registry: RegistryProcess, token: str, code: str,
                                                        file_server: FileServer) -> None:
    """The documented multipart body, values padded with spaces, sent as raw bytes."""
    url = file_server.add(f"{code}/pkg.tar.gz", package(salt=code))
    body = (
        f"--{DOC_BOUNDARY}\r\nContent-Disposition: form-data; name=\"package_url\"\r\n\r\n   {url}  \r\n"
        f"--{DOC_BOUNDARY}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n  1.0.0  \r\n"
        f"--{DOC_BOUNDARY}\r\nContent-Disposition: form-data; name=\"allow_overwrite\"\r\n\r\nfalse\r\n"
        f"--{DOC_BOUNDARY}--\r\n"
    ).encode()
    response = httpx.post(
        f"{registry.url}/api/bkpaas3/stag/bkapps/applications/{code}/modules/default/source_package/link/",
        content=body,
        headers={"X-BKAPI-AUTHORIZATION": json.dumps({"access_token": token}),
                 "Content-Type": f"multipart/form-data; boundary={DOC_BOUNDARY}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "1.0.0"
    assert response.json()["package_name"] == "pkg:1.0.0"


def test_urlencoded_body(api: Api, code: str, file_server: FileServer) -> None:
    url = file_server.add(f"{code}/demo-1.2.0.tar.gz", package(salt=code))
    response = api.http.post(api.path(code, suffix="link/"),
                             data={"package_url": url, "version": " 1.2.0 ", "allow_overwrite": "TRUE"})
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "1.2.0"
    assert response.json()["package_name"] == "demo-1:1.2.0"


def test_json_body_without_json_content_type(api: Api, code: str, file_server: FileServer) -> None:
    """``curl -d '{...}'`` sends a JSON body labelled as a form; it still works."""
    url = file_server.add(f"{code}/x.tar.gz", package(salt=code))
    response = api.http.post(api.path(code, suffix="link/"), content=json.dumps({"package_url": url, "version": "3"}),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("spec", [2, 3])
def test_version_read_from_app_desc(api: Api, code: str, file_server: FileServer, spec: int) -> None:
    url = file_server.add(f"{code}/app.tar.gz", package("2.3.4", salt=code, spec=spec))
    response = api.link(code, url)
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "2.3.4"
    assert response.json()["package_name"] == "app:2.3.4"


def test_name_already_containing_version_is_kept(api: Api, code: str, file_server: FileServer) -> None:
    url = file_server.add(f"{code}/v7.tar.gz", package(salt=code))
    response = api.link(code, url, version="v7")
    assert response.status_code == 201, response.text
    assert response.json()["package_name"] == "v7"


def test_missing_version_info(api: Api, code: str, file_server: FileServer) -> None:
    url = file_server.add(f"{code}/noversion.tar.gz", package(salt=code))
    response = api.link(code, url)
    assert response.status_code == 400
    assert response.json()["code"] == "MISSING_VERSION_INFO"
    assert response.headers["bkapi-error-code"] == "MISSING_VERSION_INFO"
    assert api.list(code).json()["count"] == 0


def test_unsupported_scheme(api: Api, code: str) -> None:
    response = api.link(code, "ftp://example.com/pkg.tar.gz", version="1")
    assert response.status_code == 400
    assert response.json() == {"code": "UNSUPPORTED_SOURCE_ORIGIN",
                               "detail": response.json()["detail"]}
    assert response.json()["detail"].startswith("未支持的源码来源")


def test_origin_error_is_download_failed(api: Api, code: str, file_server: FileServer) -> None:
    response = api.link(code, f"{file_server.url}/{code}/missing.tar.gz", version="1")
    assert response.status_code == 502
    assert response.json()["code"] == "PACKAGE_DOWNLOAD_FAILED"


@pytest.mark.parametrize("host", ["bücher.localhost", "xn--bcher-kva.localhost", "例子.localhost"])
def test_internationalized_host_name(api: Api, code: str, file_server: FileServer, host: str) -> None:
    """An IDN is fetched by its punycode name (``*.localhost`` is loopback
    without DNS), not refused with a 500 for a non-ASCII Host header."""
    data = package(salt=code)
    file_server.add(f"{code}/idn.tar.gz", data)
    port = file_server.url.rsplit(":", 1)[1]
    response = api.link(code, f"http://{host}:{port}/{code}/idn.tar.gz", version="1.0.0")
    assert response.status_code == 201, response.text
    assert response.json()["sha256_signature"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("url", ["http://xn--/pkg.tar.gz", "http://xn--a.localhost/pkg.tar.gz"])
def test_malformed_punycode_host_is_validation_error(api: Api, code: str, url: str) -> None:
    response = api.link(code, url, version="1")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert "package_url" in response.json()["fields_detail"]


def test_fetch_reads_no_ca_bundle_on_the_event_loop(file_server: FileServer, code: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS context (CA bundle read from disk) is built once, by the first
    fetch in a worker thread, not by every fetch, never on the event loop (nor
    at start-up: a registry never sent a link never reads it)."""
    import ssl
    import threading

    import anyio
    from registry_plugins.http_policy import HostPolicy
    from registry_plugins.origin_http import HttpOrigin

    loads: list[threading.Thread] = []
    real_load = ssl.SSLContext.load_verify_locations

    def spy(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(threading.current_thread())
        real_load(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", spy)
    origin = HttpOrigin(HostPolicy((), True), connect_timeout=5, read_timeout=5, total_timeout=30, max_redirects=0)
    assert loads == []
    data = package(salt=code)
    url = file_server.add(f"{code}/ctx.tar.gz", data)

    async def fetch_twice() -> list[bytes]:
        bodies = []
        for _ in range(2):
            async with origin.open(url, len(data)) as download:
                bodies.append(b"".join([chunk async for chunk in download.chunks]))
        return bodies

    assert anyio.run(fetch_twice) == [data, data]
    assert len(loads) == 1
    assert loads[0] is not threading.main_thread()  # anyio.run runs the event loop on this (main) thread


def test_connection_refused_is_download_failed(api: Api, code: str) -> None:
    from tests.helpers import free_port

    response = api.link(code, f"http://127.0.0.1:{free_port()}/pkg.tar.gz", version="1")
    assert response.status_code == 502
    assert response.json()["code"] == "PACKAGE_DOWNLOAD_FAILED"


def test_client_sha256_verified(api: Api, code: str, file_server: FileServer) -> None:
    data = package(salt=code)
    url = file_server.add(f"{code}/p.tar.gz", data)
    wrong = api.link(code, url, version="1", sha256="0" * 64)
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "CHECKSUM_MISMATCH"
    right = api.link(code, url, version="1", sha256=hashlib.sha256(data).hexdigest().upper())
    assert right.status_code == 201, right.text


def test_file_origin_inside_allowed_root(api: Api, code: str, file_server: FileServer) -> None:
    file_server.add(f"{code}/local.tar.gz", package(salt=code))
    response = api.link(code, f"file://{file_server.root}/{code}/local.tar.gz", version="1")
    assert response.status_code == 201, response.text
    assert response.json()["package_name"] == "local:1"


def test_file_origin_outside_allowed_roots(api: Api, code: str, file_server: FileServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "secret.tar.gz"
    outside.write_bytes(package(salt=code))
    escapes = [
        f"file://{outside}",
        f"file://{file_server.root}/../{outside.parent.name}/secret.tar.gz",
        "file:///etc/passwd",
    ]
    link = file_server.root / code / "link.tar.gz"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    escapes.append(f"file://{link}")
    for url in escapes:
        response = api.link(code, url, version="1")
        assert response.status_code == 403, (url, response.text)
        assert response.json()["code"] == "SOURCE_ORIGIN_FORBIDDEN"
    assert api.list(code).json()["count"] == 0


def test_file_origin_resolves_paths_off_the_event_loop(file_server: FileServer, code: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving the path (``realpath`` walks the disk) runs in a worker thread."""
    import os
    import threading

    import anyio
    from registry_plugins import origin_file

    data = package(salt=code)
    file_server.add(f"{code}/thread.tar.gz", data)
    origin = origin_file.FileOrigin([str(file_server.root)])
    callers: list[int] = []
    real_realpath = os.path.realpath

    def spy(path: str) -> str:
        callers.append(threading.get_ident())
        return real_realpath(path)

    monkeypatch.setattr(origin_file.os.path, "realpath", spy)

    async def fetch() -> tuple[int, bytes]:
        async with origin.open(f"file://{file_server.root}/{code}/thread.tar.gz", len(data)) as download:
            return threading.get_ident(), b"".join([chunk async for chunk in download.chunks])

    loop_thread, body = anyio.run(fetch)
    assert body == data
    assert callers and loop_thread not in callers


def test_validation_errors_name_each_field(api: Api, code: str) -> None:
    response = api.http.post(api.path(code, suffix="link/"),
                             json={"version": "../x", "allow_overwrite": "maybe", "sha256": "abc"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert set(body["fields_detail"]) == {"package_url", "version", "allow_overwrite", "sha256"}
    assert all(isinstance(m, list) and m for m in body["fields_detail"].values())


@pytest.mark.parametrize("prefix", ["", "/stag", "/prod", "/api/bkpaas3/stag", "/api/bkpaas3/prod"])
def test_every_prefix_serves_the_link_route(api: Api, code: str, file_server: FileServer, prefix: str) -> None:
    url = file_server.add(f"{code}/p.tar.gz", package(salt=code + prefix))
    response = api.http.post(api.path(code, prefix=prefix, suffix="link/"), json={"package_url": url, "version": "1"})
    assert response.status_code == 201, response.text
    no_slash = api.http.get(api.path(code, prefix=prefix).rstrip("/"))
    assert no_slash.status_code == 200
    assert no_slash.json()["count"] == 1


class HeadersOnlyServer:
    """Answers every request with a 200 and a Content-Length, then sends no body."""

    def __init__(self, announced: int) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.announced = announced
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/pkg.tar.gz"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.announced)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_conflict_decided_from_announced_size_before_the_body(api: Api, code: str, file_server: FileServer) -> None:
    """Version known, bytes of another size: 409 without waiting for the body,
    which this origin never sends (reading it would end in a 504 instead)."""
    data = package(salt=code)
    assert api.link(code, file_server.add(f"{code}/a.tar.gz", data), version="1").status_code == 201
    server = HeadersOnlyServer(announced=len(data) + 1)
    try:
        response = api.link(code, server.url, version="1")
    finally:
        server.close()
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "PACKAGE_ALREADY_EXISTS"
    assert response.json()["data"]["sha256_signature"] == hashlib.sha256(data).hexdigest()


def test_identical_digest_answers_without_fetching(api: Api, code: str, file_server: FileServer) -> None:
    data = package(salt=code)
    first = api.link(code, file_server.add(f"{code}/a.tar.gz", data), version="1")
    assert first.status_code == 201
    server = HeadersOnlyServer(announced=len(data))
    try:
        again = api.link(code, server.url, version="1", sha256=hashlib.sha256(data).hexdigest())
    finally:
        server.close()
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert server.connections == []


def test_link_route_multipart_body_is_capped(api: Api, code: str, file_server: FileServer) -> None:
    """File parts on the link route are discarded, and the body is not read on without end."""
    url = file_server.add(f"{code}/p.tar.gz", package(salt=code))
    response = api.http.post(api.path(code, suffix="link/"), data={"package_url": url, "version": "1"},
                             files={"junk": ("junk.bin", b"\0" * (2 * 1024 * 1024))})
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"
    small = api.http.post(api.path(code, suffix="link/"), data={"package_url": url, "version": "1"},
                          files={"junk": ("junk.bin", b"ignored")})
    assert small.status_code == 201, small.text
