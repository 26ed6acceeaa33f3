"""Secrets in a ``package_url`` never reach the database, the log or a client.

``user:password@`` and the values of signature/token query parameters (any
case) are sent to the origin, which needs them, and nowhere else: the tests
grep the SQLite files byte for byte, the server's log and every response.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.redact import REDACTED, redact_text, redact_url
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    free_port,
    merge,
    package,
    run_python,
    start_registry,
)
from tests.hostile_servers import (
    HostileServer,
    Request,
    redirect,
    response_head,
    serve,
    silent,
)

_numbers = itertools.count(1)
SECRET_PARAMS = ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "sig", "token",
                 "access_token", "x-amz-signature", "X-AMZ-CREDENTIAL", "SIGNATURE", "Sig", "TOKEN", "Access_Token"]


def secret(kind: str) -> str:
    """A marker that cannot appear by accident."""
    return f"Zq{kind}{next(_numbers)}xSECRETx"


def secret_query(markers: list[str], separator: str = "&") -> str:
    pairs = []
    for param in SECRET_PARAMS:
        value = secret(param.replace("-", "").replace("_", "").lower()[:6])
        markers.append(value)
        pairs.append(f"{param}={value}")
    return separator.join(["keep=visible", *pairs, "X-Amz-Date=20240101T000000Z"])


# -- unit: redaction ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@h.example/p.tar.gz", "https://h.example/p.tar.gz"),
        ("https://tokenonly@h.example:8443/p", "https://h.example:8443/p"),
        ("https://u:p%40ss@h.example/p?a=1", "https://h.example/p?a=1"),
        ("https://u:p@ss@h.example/p", "https://h.example/p"),
        ("https://h.example/p?X-Amz-Signature=abc&X-Amz-Date=1", "https://h.example/p?X-Amz-Signature=REDACTED&X-Amz-Date=1"),
        ("https://h.example/p?x-amz-credential=a%2Fb&TOKEN=t&Sig=s", "https://h.example/p?x-amz-credential=REDACTED&TOKEN=REDACTED&Sig=REDACTED"),
        ("https://h.example/p?X%2DAmz%2DSignature=abc", "https://h.example/p?X%2DAmz%2DSignature=REDACTED"),
        ("https://h.example/p?a=1;token=t", "https://h.example/p?a=1;token=REDACTED"),
        ("https://h.example/p?token", "https://h.example/p?token"),
        ("https://h.example/p?access_token=a&access_token=b", "https://h.example/p?access_token=REDACTED&access_token=REDACTED"),
        ("https://h.example/p?+token+=t", "https://h.example/p?+token+=REDACTED"),
        ("https://h.example/p#token=frag", "https://h.example/p"),
        ("https://[::1]:8080/p?sig=s", "https://[::1]:8080/p?sig=REDACTED"),
        ("s3://bucket/key?X-Amz-Security-Token=t", "s3://bucket/key?X-Amz-Security-Token=REDACTED"),
        ("file:///srv/p.tar.gz?token=t", "file:///srv/p.tar.gz?token=REDACTED"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize("url", ["http://user:SECRETPW@[::1/x?token=SECRETTOK", "http://u:SECRETPW@h:99999/?sig=SECRETTOK",
                                 "http://u:SECRETPW@h:port/x#SECRETTOK"])
def test_redact_unparseable_url(url: str) -> None:
    redacted = redact_url(url)
    assert "SECRETPW" not in redacted and "SECRETTOK" not in redacted


def test_redact_text() -> None:
    text = 'HTTP Request: GET http://u:pw1@h/p?token=t1&a=1 "HTTP/1.1 200 OK" then https://h/q?sig=s2'
    redacted = redact_text(text)
    assert "pw1" not in redacted and "t1" not in redacted and "s2" not in redacted
    assert "a=1" in redacted and redacted.count(REDACTED) == 2


def test_redact_text_reads_a_long_word_once() -> None:
    """Each position of a word is tried against at most a scheme's length of
    it: a MB of letters (a hostile origin's redirect target, in httpx's log
    line) is redacted at once, not in minutes. Run in a child process, so a
    regression ends in a timeout instead of a stuck test run."""
    script = ("from registry.redact import redact_text\n"
              "print(redact_text('a' * 1_000_000 + 'https://u:LONGPW@h/?token=LONGTOK ' + 'b' * 1_000_000)[999_960:])")
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("a" * 8) and "LONGPW" not in done.stdout and "LONGTOK" not in done.stdout
    assert f"h/?token={REDACTED} bbb" in done.stdout


def test_httpx_request_log_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs each request URL at INFO; the http origin plugin filters it."""
    from registry_plugins.origin_http import registry_origins

    from registry.bootstrap import load_settings

    settings, _ = load_settings(None)
    registry_origins(settings)
    with caplog.at_level(logging.INFO, logger="httpx"):
        logging.getLogger("httpx").info(
            'HTTP Request: %s %s "%s %d %s"', "GET",
            httpx.URL("http://user:LOGPWx@127.0.0.1:1/p.tar.gz?X-Amz-Signature=LOGSIGx&a=1"), "HTTP/1.1", 200, "OK",
        )
    (record,) = [r for r in caplog.records if r.name == "httpx"]
    message = record.getMessage()
    assert "LOGPWx" not in message and "LOGSIGx" not in message
    assert "a=1" in message and "HTTP/1.1 200 OK" in message


# -- live --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def origin() -> Iterator[HostileServer]:
    server = HostileServer()
    server.route("/pkg.tar.gz", serve(package(salt="secrets")))
    server.route("/other.tar.gz", serve(package(salt="secrets-other")))
    server.route("/garbage.tar.gz", serve(b"not an archive at all"))
    server.route("/missing.tar.gz", serve(b"no", 404))
    server.route("/forbidden.tar.gz", serve(b"no", 403))
    server.route("/silent.tar.gz", silent())
    server.route("/loop.tar.gz", redirect("/loop.tar.gz?token=LOOPSECRETx&sig=LOOPSIGx"))

    def short(request: Request) -> None:
        request.send(response_head(200, {"Content-Length": "5000", "Connection": "close"}) + b"\x1f\x8b")

    server.route("/short.tar.gz", short)
    yield server
    server.close()


@pytest.fixture(scope="module")
def refused_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secret-files")
    (folder / "local.tar.gz").write_bytes(package(salt="secret-file"))
    return folder


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, origin: HostileServer, refused_port: int,
            files: Path) -> Iterator[tuple[RegistryProcess, Api]]:
    root = tmp_path_factory.mktemp("secrets")
    tables = merge(base_config(root, files_root=files), {"origins.http": {
        "allowed_hosts": [f"127.0.0.1:{origin.port}", f"localhost:{origin.port}", f"127.0.0.1:{refused_port}"],
        "connect_timeout": 1, "read_timeout": 1, "total_timeout": 2, "max_redirects": 2,
    }})
    process = start_registry(root, tables)
    client = Api(process.url, process.token("secrets"))
    yield process, client
    client.close()
    process.stop()


class Leaks:
    """Every secret used, and every response seen, for the final sweep."""

    def __init__(self) -> None:
        self.markers: list[str] = []
        self.responses: list[httpx.Response] = []


@pytest.fixture(scope="module")
def leaks() -> Leaks:
    return Leaks()


def with_secrets(leaks: Leaks, base: str, separator: str = "&") -> str:
    user, password = secret("user"), secret("pw")
    leaks.markers += [user, password]
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}?{secret_query(leaks.markers, separator)}"


def link(guarded: tuple[RegistryProcess, Api], leaks: Leaks, code: str, url: str, **fields: object) -> httpx.Response:
    _, api = guarded
    responses = []
    for language in ("en", "zh"):
        api.http.headers["Accept-Language"] = language
        responses.append(api.link(code, url, **fields))
    api.http.headers.pop("Accept-Language")
    leaks.responses += responses
    assert responses[0].status_code == responses[1].status_code or responses[0].status_code == 201
    return responses[0]


def test_stored_source_url_is_redacted(guarded: tuple[RegistryProcess, Api], leaks: Leaks, origin: HostileServer,
                                       code: str) -> None:
    process, _ = guarded
    url = with_secrets(leaks, origin.url("/pkg.tar.gz"))
    response = link(guarded, leaks, code, url, version="1.0.0")
    assert response.status_code == 201, response.text
    # The origin did receive its credentials: they are for it.
    path, headers = origin.requests[-1]
    assert "X-Amz-Signature=" in path and headers.get("authorization", "").startswith("Basic ")
    with sqlite3.connect(process.config.parent / "registry.db") as conn:
        (stored,) = conn.execute("SELECT source_url FROM packages WHERE code = ?", (code,)).fetchone()
    assert stored.startswith(f"http://127.0.0.1:{origin.port}/pkg.tar.gz?keep=visible&")
    assert stored.count(REDACTED) == len(SECRET_PARAMS)
    assert "X-Amz-Date=20240101T000000Z" in stored
    assert "@" not in stored


def test_semicolon_separated_secrets(guarded: tuple[RegistryProcess, Api], leaks: Leaks, origin: HostileServer,
                                     code: str) -> None:
    url = with_secrets(leaks, origin.url("/other.tar.gz"), separator=";")
    assert link(guarded, leaks, code, url, version="1.0.0").status_code == 201


def test_file_url_query_is_redacted(guarded: tuple[RegistryProcess, Api], leaks: Leaks, files: Path,
                                    code: str) -> None:
    token = secret("file")
    leaks.markers.append(token)
    response = link(guarded, leaks, code, f"file://{files}/local.tar.gz?token={token}", version="1.0.0")
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/missing.tar.gz", 502, "PACKAGE_DOWNLOAD_FAILED"),
        ("/forbidden.tar.gz", 502, "PACKAGE_DOWNLOAD_FAILED"),
        ("/garbage.tar.gz", 400, "INVALID_PACKAGE"),
        ("/short.tar.gz", 502, "PACKAGE_DOWNLOAD_FAILED"),
        ("/silent.tar.gz", 504, "PACKAGE_DOWNLOAD_TIMEOUT"),
        ("/loop.tar.gz", 502, "PACKAGE_DOWNLOAD_FAILED"),
    ],
)
def test_failures_do_not_echo_secrets(guarded: tuple[RegistryProcess, Api], leaks: Leaks, origin: HostileServer,
                                      code: str, path: str, status: int, error: str) -> None:
    response = link(guarded, leaks, code, with_secrets(leaks, origin.url(path)), version="1.0.0")
    assert response.status_code == status, response.text
    assert response.json()["code"] == error


def test_checksum_mismatch_does_not_echo_secrets(guarded: tuple[RegistryProcess, Api], leaks: Leaks,
                                                 origin: HostileServer, code: str) -> None:
    response = link(guarded, leaks, code, with_secrets(leaks, origin.url("/pkg.tar.gz")), version="9.9.9",
                    sha256="0" * 64)
    assert response.status_code == 400 and response.json()["code"] == "CHECKSUM_MISMATCH"


@pytest.mark.parametrize(
    ("make", "status", "error"),
    [
        (lambda o, r: f"http://127.0.0.2:{o}/pkg.tar.gz", 403, "SOURCE_ORIGIN_FORBIDDEN"),
        (lambda o, r: f"http://127.0.0.1:{r}/pkg.tar.gz", 502, "PACKAGE_DOWNLOAD_FAILED"),
        (lambda o, r: f"ftp://127.0.0.1:{o}/pkg.tar.gz", 400, "UNSUPPORTED_SOURCE_ORIGIN"),
        (lambda o, r: "file:///etc/passwd", 403, "SOURCE_ORIGIN_FORBIDDEN"),
        (lambda o, r: f"http://[::1:{o}/pkg.tar.gz", 400, "VALIDATION_ERROR"),
        (lambda o, r: f"http://127.0.0.1:{o}0000/pkg.tar.gz", 400, "VALIDATION_ERROR"),
    ],
    ids=["not-allowed", "refused", "scheme", "file-outside", "bad-ipv6", "bad-port"],
)
def test_refusals_do_not_echo_secrets(guarded: tuple[RegistryProcess, Api], leaks: Leaks, origin: HostileServer,
                                      refused_port: int, code: str, make: object, status: int, error: str) -> None:
    url = with_secrets(leaks, make(origin.port, refused_port))  # type: ignore[operator]
    response = link(guarded, leaks, code, url, version="1.0.0")
    assert response.status_code == status, response.text
    assert response.json()["code"] == error


def test_redirect_location_secrets(guarded: tuple[RegistryProcess, Api], leaks: Leaks, origin: HostileServer,
                                   code: str) -> None:
    """A presigned URL handed out by a redirect is as secret as the first one."""
    target = with_secrets(leaks, origin.url("/forbidden.tar.gz"))
    origin.route("/presign.tar.gz", redirect(target))
    response = link(guarded, leaks, code, origin.url("/presign.tar.gz"), version="1.0.0")
    assert response.status_code == 502, response.text


def test_no_secret_anywhere(guarded: tuple[RegistryProcess, Api], leaks: Leaks) -> None:
    """The sweep, after every test above: database files, log, responses."""
    process, api = guarded
    api.http.get("/healthz")  # one more request, so the log is flushed past the last upload
    assert len(leaks.markers) > 50 and leaks.responses
    root = process.config.parent
    database_files = [p for p in root.iterdir() if p.name.startswith("registry.db")]
    assert database_files
    blobs = b"".join(p.read_bytes() for p in database_files)
    log = process.log.read_bytes()
    assert REDACTED.encode() in log  # the log does hold the (redacted) URLs of failed fetches
    for marker in [*leaks.markers, "LOOPSECRETx", "LOOPSIGx"]:
        encoded = marker.encode()
        assert encoded not in blobs, f"{marker} in the database"
        assert encoded not in log, f"{marker} in the log"
        for response in leaks.responses:
            assert marker not in response.text, f"{marker} in a response: {response.text}"
            assert marker not in str(response.headers)
