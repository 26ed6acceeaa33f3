"""Origins that misbehave: slow, silent, lying about their size, too big.

A registry with small timeouts and a 1 MiB size limit fetches from local
hostile servers. Every failure has its documented code and leaves nothing
behind: no record, no blob, no staging file.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator

import pytest

from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    merge,
    package,
    staged_files,
    start_registry,
)
from tests.hostile_servers import (
    FullBacklog,
    HostileServer,
    Request,
    chunked,
    declare_then_stall,
    lying_length,
    response_head,
    serve,
    silent,
    trickle,
)

MiB = 1024 * 1024
MAX_SIZE = MiB


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Api]]:
    root = tmp_path_factory.mktemp("faults")
    tables = merge(base_config(root), {
        "origins.http": {"connect_timeout": 1, "read_timeout": 1, "total_timeout": 2},
        "limits": {"max_package_size": MAX_SIZE},
    })
    process = start_registry(root, tables)
    client = Api(process.url, process.token("faults"))
    yield process, client
    client.close()
    process.stop()


@pytest.fixture
def server() -> Iterator[HostileServer]:
    hostile = HostileServer()
    yield hostile
    hostile.close()


def assert_nothing_left(process: RegistryProcess, api: Api, code: str) -> None:
    assert api.list(code, include_deleted="true").json()["count"] == 0
    root = process.config.parent / "packages"
    assert list(blob_files(root / code)) == []
    assert staged_files(root / ".staging") == []


def assert_fails(faulty: tuple[RegistryProcess, Api], code: str, url: str, status: int, error: str) -> None:
    process, api = faulty
    response = api.link(code, url, version="1.0.0")
    assert response.status_code == status, response.text
    assert response.json()["code"] == error
    assert response.headers["bkapi-error-code"] == error
    assert_nothing_left(process, api, code)


# -- timeouts -------------------------------------------------------------------------

def test_trickling_server_times_out(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str) -> None:
    """One byte every 0.2 s never trips the 1 s read timeout; the 2 s total does."""
    url = server.route("/slow.tar.gz", trickle(interval=0.2))
    assert_fails(faulty, code, url, 504, "PACKAGE_DOWNLOAD_TIMEOUT")


def test_silent_server_times_out(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str) -> None:
    url = server.route("/silent.tar.gz", silent())
    assert_fails(faulty, code, url, 504, "PACKAGE_DOWNLOAD_TIMEOUT")
    assert server.connections == 1


def test_headers_then_silence_times_out(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                        code: str) -> None:
    def handle(request: Request) -> None:
        request.send(response_head(200, {"Content-Length": "1000"}) + b"\x1f\x8b")
        request.wait()

    url = server.route("/stalls.tar.gz", handle)
    assert_fails(faulty, code, url, 504, "PACKAGE_DOWNLOAD_TIMEOUT")


def test_connect_timeout(faulty: tuple[RegistryProcess, Api], code: str) -> None:
    """A port whose accept queue is full never answers the handshake."""
    backlog = FullBacklog()
    try:
        if not backlog.ready:
            pytest.skip("this kernel keeps accepting connections past the backlog")
        assert_fails(faulty, code, f"http://127.0.0.1:{backlog.port}/p.tar.gz", 504, "PACKAGE_DOWNLOAD_TIMEOUT")
    finally:
        backlog.close()


# -- bodies that do not match their Content-Length ---------------------------------------

def test_body_shorter_than_content_length(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                          code: str) -> None:
    data = package(salt=code)
    url = server.route("/short.tar.gz", lying_length(data, len(data) + 100))
    assert_fails(faulty, code, url, 502, "PACKAGE_DOWNLOAD_FAILED")


def test_body_cut_by_half(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str) -> None:
    data = package(salt=code)
    url = server.route("/half.tar.gz", lying_length(data[: len(data) // 2], len(data)))
    assert_fails(faulty, code, url, 502, "PACKAGE_DOWNLOAD_FAILED")


def test_body_longer_than_content_length(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                         code: str) -> None:
    """Bytes past Content-Length are not the package: never stored."""
    process, api = faulty
    data = package(salt=code)
    url = server.route("/long.tar.gz", lying_length(data + b"EXTRA BYTES" * 100, len(data)))
    response = api.link(code, url, version="1.0.0")
    assert response.status_code in (201, 502), response.text
    if response.status_code == 201:
        assert response.json()["sha256_signature"] == hashlib.sha256(data).hexdigest()
        assert response.json()["package_size"] == str(len(data))
        stored = api.download(code, response.json()["id"])
        assert stored.content == data
    else:
        assert_nothing_left(process, api, code)


def test_content_length_cutting_the_package_short(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                                  code: str) -> None:
    """Content-Length announces less than the package: what arrives is a
    truncated gzip (only its CRC trailer missing), which must not be stored."""
    data = package(salt=code)
    url = server.route("/cut.tar.gz", lying_length(data, len(data) - 8))
    process, api = faulty
    response = api.link(code, url, version="1.0.0")
    assert response.status_code in (400, 502), response.text
    assert response.json()["code"] in ("INVALID_PACKAGE", "PACKAGE_DOWNLOAD_FAILED")
    assert_nothing_left(process, api, code)


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "0x10", "10, 20", " "])
def test_malformed_content_length(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str,
                                  value: str) -> None:
    data = package(salt=code)

    def handle(request: Request) -> None:
        request.send(response_head(200, {"Content-Length": value, "Connection": "close"}) + data)

    url = server.route("/odd.tar.gz", handle)
    assert_fails(faulty, code, url, 502, "PACKAGE_DOWNLOAD_FAILED")


def test_conflicting_duplicate_content_length(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                              code: str) -> None:
    data = package(salt=code)

    def handle(request: Request) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nContent-Length: {len(data) + 5}\r\n"
                "Connection: close\r\n\r\n").encode()
        request.send(head + data)

    url = server.route("/dup.tar.gz", handle)
    assert_fails(faulty, code, url, 502, "PACKAGE_DOWNLOAD_FAILED")


def test_chunked_and_content_length_together(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                             code: str) -> None:
    """Request smuggling's favourite: whatever happens, the stored bytes are the package."""
    process, api = faulty
    data = package(salt=code)

    def handle(request: Request) -> None:
        body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
        head = response_head(200, {"Content-Length": str(len(data) + 3), "Transfer-Encoding": "chunked",
                                   "Connection": "close"})
        request.send(head + body)

    url = server.route("/both.tar.gz", handle)
    response = api.link(code, url, version="1.0.0")
    assert response.status_code in (201, 502), response.text
    if response.status_code == 201:
        assert api.download(code, response.json()["id"]).content == data
    else:
        assert_nothing_left(process, api, code)


# -- size limit ------------------------------------------------------------------------------

def test_declared_size_over_limit_refused_at_once(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                                  code: str) -> None:
    """The server announces 10 GiB and then sends nothing: a registry that
    waited for the body would time out (504); it answers 413 from the header."""
    url = server.route("/huge.tar.gz", declare_then_stall(10 * 1024**3))
    assert_fails(faulty, code, url, 413, "PACKAGE_TOO_LARGE")


def test_declared_size_one_past_limit(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str) -> None:
    url = server.route("/plus-one.tar.gz", declare_then_stall(MAX_SIZE + 1))
    assert_fails(faulty, code, url, 413, "PACKAGE_TOO_LARGE")


@pytest.mark.parametrize("total", [MAX_SIZE + 1, 8 * MAX_SIZE])
def test_chunked_body_over_limit(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str,
                                 total: int) -> None:
    url = server.route("/stream.tar.gz", chunked(total, chunk_size=100_000))
    assert_fails(faulty, code, url, 413, "PACKAGE_TOO_LARGE")


def test_chunked_body_within_limit_is_fine(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                           code: str) -> None:
    _, api = faulty
    data = package(salt=code)

    def handle(request: Request) -> None:
        request.send(response_head(200, {"Transfer-Encoding": "chunked", "Connection": "close"}))
        for start in range(0, len(data), 100):
            piece = data[start:start + 100]
            request.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        request.send(b"0\r\n\r\n")

    url = server.route("/chunks.tar.gz", handle)
    response = api.link(code, url, version="1.0.0")
    assert response.status_code == 201, response.text
    assert response.json()["sha256_signature"] == hashlib.sha256(data).hexdigest()


# -- broken protocol ---------------------------------------------------------------------------

def _raw(data: bytes, *, close: bool = True) -> object:
    def handle(request: Request) -> None:
        request.send(data)
        if not close:
            request.wait()
    return handle


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("closed", b""),
        ("garbage", b"this is not HTTP at all\r\n\r\n"),
        ("bad-status", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
        ("bad-chunk-size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("chunked-cut", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789"),
        ("header-flood", b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 200_000 + b"\r\n\r\n"),
        ("http-0.9", b"\x1f\x8b\x08\x00 raw bytes without a status line"),
    ],
)
def test_broken_responses(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str,
                          name: str, answer: bytes) -> None:
    url = server.route(f"/{name}.tar.gz", _raw(answer))  # type: ignore[arg-type]
    assert_fails(faulty, code, url, 502, "PACKAGE_DOWNLOAD_FAILED")


@pytest.mark.parametrize("status", [204, 206, 304, 400, 401, 403, 404, 418, 500, 503])
def test_origin_error_statuses(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str,
                               status: int) -> None:
    url = server.route("/status.tar.gz", serve(package(salt=code) if status < 300 else b"nope", status))
    assert_fails(faulty, code, url, 502, "PACKAGE_DOWNLOAD_FAILED")


def test_redirect_without_location(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str) -> None:
    url = server.route("/nowhere.tar.gz", serve(b"", 302))
    assert_fails(faulty, code, url, 502, "PACKAGE_DOWNLOAD_FAILED")


@pytest.mark.parametrize("location", ["http://[::1/", "http://exa mple.com:99999/x", "http:///x", "file:x",
                                      "javascript:alert(1)", "http://xn--/x"])
def test_redirect_to_unusable_location(faulty: tuple[RegistryProcess, Api], server: HostileServer, code: str,
                                       location: str) -> None:
    process, api = faulty

    def handle(request: Request) -> None:
        request.send(response_head(302, {"Location": location, "Content-Length": "0", "Connection": "close"}))

    url = server.route("/bad-redirect.tar.gz", handle)
    response = api.link(code, url, version="1.0.0")
    assert response.status_code in (403, 502), response.text
    assert response.json()["code"] in ("SOURCE_ORIGIN_FORBIDDEN", "PACKAGE_DOWNLOAD_FAILED")
    assert_nothing_left(process, api, code)


def test_gzip_content_encoding_is_stored_as_sent(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                                 code: str) -> None:
    """The registry asks for identity and stores raw bytes: a server that
    compresses anyway sends a package the registry does not silently alter."""
    process, api = faulty
    data = package(salt=code)
    encoded = gzip.compress(data)
    url = server.route("/encoded.tar.gz", serve(encoded, 200, {"Content-Encoding": "gzip"}))
    response = api.link(code, url, version="1.0.0")
    if response.status_code == 201:
        stored = api.download(code, response.json()["id"]).content
        assert hashlib.sha256(stored).hexdigest() == response.json()["sha256_signature"]
        assert stored in (data, encoded)
    else:
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "INVALID_PACKAGE"
        assert_nothing_left(process, api, code)


def test_failures_leave_the_registry_healthy(faulty: tuple[RegistryProcess, Api], server: HostileServer,
                                             code: str) -> None:
    """After all of the above, an ordinary fetch still works."""
    _, api = faulty
    data = package(salt=code)
    response = api.link(code, server.route("/fine.tar.gz", serve(data)), version="1.0.0")
    assert response.status_code == 201, response.text
    log = (faulty[0].log).read_text()
    assert "Traceback" not in log
    assert "INTERNAL_ERROR" not in log
