"""SSRF: the ``http`` origin never connects where policy forbids.

No traffic may leave this machine, so addresses that are not loopback are only
ever judged by pure unit tests of :mod:`registry_plugins.http_policy` and of the
origin with a transport that fails the test if it is reached. Live HTTP tests
use loopback spellings only, against a counting server that proves no
connection was attempted.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from registry_plugins.http_policy import (
    HostEntry,
    HostPolicy,
    is_public,
    literal_address,
    normalize_host,
    parse_entry,
)
from registry_plugins.origin_http import HttpOrigin

from registry.bootstrap import load_settings
from registry.errors import (
    PackageDownloadFailed,
    SourceOriginForbidden,
    ValidationError,
)
from registry.settings import SettingsError
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    merge,
    package,
    start_registry,
)
from tests.hostile_servers import HostileServer, redirect, serve

# Every spelling from the contract and the task, with the address it means.
FORBIDDEN_HOSTS: dict[str, str | None] = {
    "127.0.0.1": "127.0.0.1",
    "localhost": None,
    "LOCALHOST.": None,
    "foo.localhost": None,
    "a.b.LocalHost.": None,
    "127.1": "127.0.0.1",
    "2130706433": "127.0.0.1",
    "0x7f000001": "127.0.0.1",
    "0x7f.1": "127.0.0.1",
    "0177.0.0.1": "127.0.0.1",
    "127.0.0.1.": "127.0.0.1",
    "[::1]": "::1",
    "[::ffff:127.0.0.1]": "::ffff:7f00:1",
    "[::ffff:7f00:1]": "::ffff:7f00:1",
    "10.0.0.1": "10.0.0.1",
    "172.16.0.1": "172.16.0.1",
    "192.168.1.1": "192.168.1.1",
    "169.254.169.254": "169.254.169.254",
    "100.64.0.1": "100.64.0.1",
    "0.0.0.0": "0.0.0.0",
    "0": "0.0.0.0",
    "224.0.0.1": "224.0.0.1",
    "255.255.255.255": "255.255.255.255",
    "240.0.0.1": "240.0.0.1",
    "192.0.2.1": "192.0.2.1",
    "[fe80::1]": "fe80::1",
    "[fc00::1]": "fc00::1",
    "[fd12:3456::1]": "fd12:3456::1",
    "[::]": "::",
    "[::127.0.0.1]": "::7f00:1",            # IPv4-compatible (deprecated)
    "[::ffff:0:127.0.0.1]": "::ffff:0:7f00:1",  # IPv4-translated
    "[64:ff9b::10.0.0.1]": "64:ff9b::a00:1",  # NAT64 of a private address
    "[64:ff9b:1::1]": "64:ff9b:1::1",         # local-use NAT64 prefix
    "[2002:a00:1::1]": "2002:a00:1::1",       # 6to4 of 10.0.0.1
    "[2001:db8::1]": "2001:db8::1",           # documentation
    "[ff02::1]": "ff02::1",                   # multicast
}
PUBLIC_ADDRESSES = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2002:808:808::1",
                    "64:ff9b::808:808", "2a00:1450:4001::200e"]
LOOPBACK_SPELLINGS = ["127.0.0.1", "localhost", "foo.localhost", "LocalHost.", "127.1", "2130706433",
                      "0x7f000001", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "127.0.0.2"]


def run(coro_fn: Callable[..., Any], *args: Any) -> Any:
    return anyio.run(functools.partial(coro_fn, *args))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test on any DNS lookup or HTTP send; returns the lookups attempted."""
    lookups: list[str] = []

    async def no_dns(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        raise AssertionError(f"DNS lookup of {host!r} attempted")

    async def no_send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        raise AssertionError(f"connection to {request.url} attempted")

    monkeypatch.setattr(anyio, "getaddrinfo", no_dns)
    monkeypatch.setattr(httpx.AsyncClient, "send", no_send)
    return lookups


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Answer ``anyio.getaddrinfo`` from ``answers``; returns the names looked up."""
    asked: list[str] = []

    async def lookup(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
             (a, port, 0, 0) if ":" in a else (a, port))
            for a in answers[host]
        ]

    monkeypatch.setattr(anyio, "getaddrinfo", lookup)
    return asked


def strict_origin(**kwargs: Any) -> HttpOrigin:
    policy = HostPolicy(allowed_hosts=tuple(kwargs.pop("allowed_hosts", ())),
                        allow_private_networks=kwargs.pop("allow_private_networks", False))
    return HttpOrigin(policy, connect_timeout=1, read_timeout=1, total_timeout=5,
                      max_redirects=kwargs.pop("max_redirects", 3))


async def fetch(origin: HttpOrigin, url: str) -> bytes:
    async with origin.open(url, 1 << 20) as download:
        return b"".join([chunk async for chunk in download.chunks])


# -- pure policy ---------------------------------------------------------------------

@pytest.mark.parametrize(("spelling", "meaning"), [(h, a) for h, a in FORBIDDEN_HOSTS.items() if a])
def test_literal_spellings_mean_their_address(spelling: str, meaning: str) -> None:
    assert literal_address(normalize_host(spelling)) == ipaddress.ip_address(meaning)


@pytest.mark.parametrize("spelling", [h for h, a in FORBIDDEN_HOSTS.items() if a])
def test_forbidden_addresses_are_not_public(spelling: str) -> None:
    address = literal_address(normalize_host(spelling))
    assert address is not None
    assert not is_public(address)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("name", ["example.com", "localhost.example.com", "deadbeef", "1e100", "127.0.0.1.nip.io"])
def test_names_are_not_literals(name: str) -> None:
    assert literal_address(name) is None


@pytest.mark.parametrize("host", list(FORBIDDEN_HOSTS))
def test_resolve_refuses_without_dns(host: str, no_network: list[str]) -> None:
    policy = HostPolicy(allowed_hosts=(), allow_private_networks=False)
    with pytest.raises(SourceOriginForbidden):
        run(policy.resolve, normalize_host(host), 80)
    assert no_network == []


@pytest.mark.parametrize("host", list(FORBIDDEN_HOSTS))
def test_origin_refuses_before_connecting(host: str, no_network: list[str]) -> None:
    """The whole origin, first URL: refused by policy, never sent.

    httpx itself rejects a few spellings (``0177.0.0.1``) as malformed; those
    are a validation error instead, and never sent either.
    """
    url = f"http://{host}:8080/pkg.tar.gz"
    try:
        httpx.URL(url)
    except httpx.InvalidURL:
        expected: type[Exception] = ValidationError
    else:
        expected = SourceOriginForbidden
    with pytest.raises(expected) as caught:
        run(fetch, strict_origin(), url)
    if expected is SourceOriginForbidden:
        assert caught.value.status == 403 and caught.value.code == "SOURCE_ORIGIN_FORBIDDEN"  # type: ignore[attr-defined]
    assert no_network == []


def test_every_resolved_address_is_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name resolving to a public and a private address is refused (no picking the nice one)."""
    fake_dns(monkeypatch, {"mixed.example": ["93.184.216.34", "10.1.2.3"],
                           "v6.example": ["2606:4700::1111", "fd00::1"],
                           "metadata.example": ["169.254.169.254"]})
    policy = HostPolicy(allowed_hosts=(), allow_private_networks=False)
    for name in ("mixed.example", "v6.example", "metadata.example"):
        with pytest.raises(SourceOriginForbidden):
            run(policy.resolve, name, 80)


def test_resolve_returns_a_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"files.example": ["93.184.216.34", "93.184.216.35"]})
    policy = HostPolicy(allowed_hosts=(), allow_private_networks=False)
    assert run(policy.resolve, "Files.Example.", 80) == ipaddress.ip_address("93.184.216.34")


def test_unresolvable_name_is_download_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})
    policy = HostPolicy(allowed_hosts=(), allow_private_networks=False)
    with pytest.raises(PackageDownloadFailed):
        run(policy.resolve, "nowhere.invalid", 80)


def test_private_allowed_when_configured(no_network: list[str]) -> None:
    policy = HostPolicy(allowed_hosts=(), allow_private_networks=True)
    assert run(policy.resolve, "foo.localhost", 80) == ipaddress.ip_address("127.0.0.1")
    assert run(policy.resolve, "10.0.0.1", 80) == ipaddress.ip_address("10.0.0.1")
    assert no_network == []


# -- allowed_hosts --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("entries", "scheme", "host", "port", "allowed"),
    [
        (["files.example.com"], "https", "files.example.com", None, True),
        (["files.example.com"], "https", "files.example.com", 443, True),
        (["files.example.com"], "http", "files.example.com", 80, True),
        (["files.example.com"], "https", "files.example.com", 8443, False),  # no port: default only
        (["files.example.com"], "http", "files.example.com", 443, False),
        (["FILES.Example.COM."], "https", "files.example.com", None, True),  # case, trailing dot
        (["files.example.com"], "https", "FILES.EXAMPLE.COM.", None, True),
        (["files.example.com:8443"], "https", "files.example.com", 8443, True),
        (["files.example.com:8443"], "https", "files.example.com", None, False),
        (["files.example.com:443"], "https", "files.example.com", None, True),
        (["files.example.com:80"], "https", "files.example.com", None, False),
        (["files.example.com"], "https", "evil.example.com", None, False),
        (["files.example.com"], "https", "files.example.com.evil.com", None, False),
        (["example.com"], "https", "files.example.com", None, False),  # no suffix matching
        (["[2606:4700::1111]:8080"], "http", "2606:4700::1111", 8080, True),
        (["[2606:4700::1111]"], "http", "[2606:4700::1111]", None, True),
        (["2606:4700::1111"], "http", "2606:4700::1111", None, True),
        (["a.example", "b.example:81"], "http", "b.example", 81, True),
    ],
)
def test_allowed_hosts_matching(entries: list[str], scheme: str, host: str, port: int | None,
                                allowed: bool) -> None:
    policy = HostPolicy(allowed_hosts=tuple(entries), allow_private_networks=False)
    if allowed:
        policy.check_host(scheme, host, port)
    else:
        with pytest.raises(SourceOriginForbidden):
            policy.check_host(scheme, host, port)


def test_empty_allowed_hosts_allows_any_name() -> None:
    HostPolicy(allowed_hosts=(), allow_private_networks=False).check_host("https", "anything.example", 1234)


def test_parse_entry() -> None:
    assert parse_entry(" Files.Example.COM:8443 ") == HostEntry("files.example.com", 8443)
    assert parse_entry("[::1]:80") == HostEntry("::1", 80)
    assert parse_entry("localhost") == HostEntry("localhost", None)


@pytest.mark.parametrize("entry", ["http://example.com", "example.com:", "example.com:http", "example.com:0",
                                   "example.com:65536", "", "user@example.com", "[::1", "[::1]x",
                                   "example.com/path", "a:b:c"])
def test_malformed_allowed_hosts_entries(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_entry(entry)


def test_malformed_allowed_hosts_stop_startup(tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text('[origins.http]\nallowed_hosts = ["https://files.example.com"]\n')
    with pytest.raises(SettingsError, match=r"origins\.http\.allowed_hosts"):
        load_settings(config)


def test_allowed_host_still_judged_by_address(no_network: list[str]) -> None:
    """Listing a host does not let it reach a private address unless that is allowed too."""
    with pytest.raises(SourceOriginForbidden):
        run(fetch, strict_origin(allowed_hosts=["localhost:8080"]), "http://localhost:8080/p.tar.gz")


# -- redirects and the request actually sent (mock transport: no sockets) ------------------

class Recorder:
    """A mock transport answering from a route table and recording every request."""

    def __init__(self, routes: dict[str, httpx.Response]) -> None:
        self.routes = routes
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        key = f"{request.headers['host']}{request.url.raw_path.decode()}"
        return self.routes.get(key, httpx.Response(404))


@pytest.fixture
def mock_web(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, httpx.Response]], Recorder]]:
    real = httpx.AsyncClient

    def install(routes: dict[str, httpx.Response]) -> Recorder:
        recorder = Recorder(routes)
        monkeypatch.setattr(httpx, "AsyncClient",
                            functools.partial(real, transport=httpx.MockTransport(recorder)))
        return recorder

    fake_dns(monkeypatch, {"files.example": ["93.184.216.34"], "cdn.example": ["93.184.216.35"],
                           "internal.example": ["10.0.0.5"], "rebind.example": ["93.184.216.36"]})
    yield install


def moved(location: str, status: int = 302) -> httpx.Response:
    return httpx.Response(status, headers={"Location": location})


def ok(data: bytes) -> httpx.Response:
    """A 200 whose body is still a stream (``content=`` would be read already)."""
    return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=httpx.ByteStream(data))


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/admin",
        "http://foo.localhost:8080/",
        "http://127.1/",
        "http://2130706433/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://internal.example/pkg.tar.gz",
        "ftp://files.example/pkg.tar.gz",
        "file:///etc/passwd",
        "gopher://files.example:70/",
        "file:pkg.tar.gz",
        "javascript:alert(1)",
    ],
)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_forbidden_target(mock_web: Callable[..., Recorder], target: str, status: int) -> None:
    web = mock_web({"files.example/pkg.tar.gz": moved(target, status)})
    with pytest.raises(SourceOriginForbidden):
        run(fetch, strict_origin(), "http://files.example/pkg.tar.gz")
    assert [str(r.url) for r in web.seen] == ["http://93.184.216.34/pkg.tar.gz"]


def test_redirect_to_public_host_followed(mock_web: Callable[..., Recorder]) -> None:
    web = mock_web({
        "files.example/pkg.tar.gz": moved("https://cdn.example/blob?X-Amz-Signature=s"),
        "cdn.example/blob?X-Amz-Signature=s": ok(b"package bytes"),
    })
    assert run(fetch, strict_origin(), "http://files.example/pkg.tar.gz") == b"package bytes"
    assert [r.url.host for r in web.seen] == ["93.184.216.34", "93.184.216.35"]
    assert web.seen[1].extensions["sni_hostname"] == "cdn.example"


def test_redirect_outside_allowed_hosts(mock_web: Callable[..., Recorder]) -> None:
    web = mock_web({"files.example/p": moved("http://cdn.example/p")})
    with pytest.raises(SourceOriginForbidden):
        run(fetch, strict_origin(allowed_hosts=["files.example"]), "http://files.example/p")
    assert len(web.seen) == 1


def test_redirect_chain_limit(mock_web: Callable[..., Recorder]) -> None:
    routes = {f"files.example/hop/{n}": moved(f"/hop/{n - 1}") for n in range(1, 10)}
    routes["files.example/hop/0"] = ok(b"ok")
    web = mock_web(routes)
    origin = strict_origin(max_redirects=3)
    assert run(fetch, origin, "http://files.example/hop/3") == b"ok"
    web.seen.clear()
    with pytest.raises(PackageDownloadFailed, match="more than 3 redirects"):
        run(fetch, origin, "http://files.example/hop/4")
    assert len(web.seen) == 4


def test_redirect_loop(mock_web: Callable[..., Recorder]) -> None:
    mock_web({"files.example/loop": moved("/loop")})
    with pytest.raises(PackageDownloadFailed):
        run(fetch, strict_origin(), "http://files.example/loop")


@pytest.mark.parametrize("location", ["http://[::1/", "http://exa mple.com:99999/", "http:///nohost"])
def test_redirect_to_malformed_url_is_download_failed(mock_web: Callable[..., Recorder], location: str) -> None:
    mock_web({"files.example/p": moved(location)})
    with pytest.raises((PackageDownloadFailed, SourceOriginForbidden)):
        run(fetch, strict_origin(), "http://files.example/p")


def test_connects_to_the_checked_address(mock_web: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is resolved once per hop and the request goes to
    that very address; the original name travels in Host and SNI only."""
    answers = iter([["93.184.216.36"], ["127.0.0.1"]])
    asked: list[str] = []

    async def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]

    web = mock_web({"rebind.example:8443/a/b.tar.gz?x=1": ok(b"data")})
    monkeypatch.setattr(anyio, "getaddrinfo", rebinding)
    assert run(fetch, strict_origin(), "https://ReBind.Example.:8443/a/b.tar.gz?x=1") == b"data"
    assert asked == ["rebind.example"]
    (request,) = web.seen
    assert request.url.scheme == "https"
    assert request.url.host == "93.184.216.36"
    assert request.url.port == 8443
    assert request.url.raw_path == b"/a/b.tar.gz?x=1"
    assert request.headers["host"] == "rebind.example:8443"
    assert request.extensions["sni_hostname"] == "rebind.example"
    assert request.headers["accept-encoding"] == "identity"


def test_request_building_pins_ipv6_and_keeps_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"v6only.example": ["2606:4700::1111"]})

    async def build() -> httpx.Request:
        async with httpx.AsyncClient() as client:
            return await strict_origin()._request(client, "http://v6only.example/pkg.tar.gz")

    request = run(build)
    assert str(request.url) == "http://[2606:4700::1111]/pkg.tar.gz"
    assert request.headers["host"] == "v6only.example"
    assert "sni_hostname" not in request.extensions


# -- live: loopback spellings against a counting server -----------------------------------

@pytest.fixture(scope="module")
def target() -> Iterator[HostileServer]:
    """A server that would serve a valid package to anyone who connects."""
    server = HostileServer(ipv6=True)
    server.route("/pkg.tar.gz", serve(package(salt="ssrf-target")))
    yield server
    server.close()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Api]]:
    root = tmp_path_factory.mktemp("ssrf-strict")
    process = start_registry(root, merge(base_config(root), {"origins.http": {"allow_private_networks": False}}))
    client = Api(process.url, process.token("ssrf"))
    yield process, client
    client.close()
    process.stop()


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_loopback_spellings_refused_live(strict: tuple[RegistryProcess, Api], target: HostileServer,
                                        spelling: str, code: str) -> None:
    _, api = strict
    before = target.connections
    response = api.link(code, f"http://{spelling}:{target.port}/pkg.tar.gz", version="1.0.0")
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "SOURCE_ORIGIN_FORBIDDEN"
    assert response.headers["bkapi-error-code"] == "SOURCE_ORIGIN_FORBIDDEN"
    assert target.connections == before, "a connection was attempted"
    assert api.list(code).json()["count"] == 0


@pytest.mark.parametrize("spelling", ["127.1", "2130706433", "0x7f000001", "[::1]", "[::ffff:127.0.0.1]",
                                      "foo.localhost", "0.0.0.0"])
def test_loopback_spellings_reach_loopback_when_allowed(api: Api, target: HostileServer, spelling: str,
                                                        code: str) -> None:
    """Control: with private networks allowed (the shared registry) the same
    URLs do reach the counting server, so the refusals above are policy."""
    before = target.connections
    response = api.link(code, f"http://{spelling}:{target.port}/pkg.tar.gz", version="1.0.0")
    assert response.status_code == 201, response.text
    assert target.connections == before + 1


# -- live: redirects from an allowed local server ----------------------------------------------

@pytest.fixture(scope="module")
def forbidden_target() -> Iterator[HostileServer]:
    server = HostileServer()
    server.route("/pkg.tar.gz", serve(package(salt="never-fetched")))
    yield server
    server.close()


@pytest.fixture(scope="module")
def redirector(forbidden_target: HostileServer) -> Iterator[HostileServer]:
    server = HostileServer()
    data = package(salt="redirect-ok")
    server.route("/pkg.tar.gz", serve(data))
    for n in range(1, 6):
        server.route(f"/hop/{n}/pkg.tar.gz", redirect(f"/hop/{n - 1}/pkg.tar.gz"))
    server.route("/hop/0/pkg.tar.gz", serve(data))
    server.route("/loop.tar.gz", redirect("/loop.tar.gz", 307))
    other = forbidden_target.port
    server.route("/to-other-host.tar.gz", redirect(f"http://localhost:{other}/pkg.tar.gz"))
    server.route("/to-other-port.tar.gz", redirect(f"http://127.0.0.1:{other}/pkg.tar.gz"))
    server.route("/to-numeric.tar.gz", redirect(f"http://2130706433:{other}/pkg.tar.gz", 308))
    server.route("/to-ftp.tar.gz", redirect(f"ftp://127.0.0.1:{server.port}/pkg.tar.gz"))
    server.route("/to-file.tar.gz", redirect("file:///etc/passwd", 301))
    server.route("/to-relative-file.tar.gz", redirect("file:pkg.tar.gz"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, redirector: HostileServer) -> Iterator[Api]:
    """allow_private_networks (the servers are local) but only the redirector's host:port allowed."""
    root = tmp_path_factory.mktemp("ssrf-gated")
    tables = merge(base_config(root), {"origins.http": {
        "allow_private_networks": True,
        "allowed_hosts": [f"127.0.0.1:{redirector.port}", f"LOCALHOST.:{redirector.port}"],
        "max_redirects": 2,
    }})
    process = start_registry(root, tables)
    client = Api(process.url, process.token("ssrf"))
    yield client
    client.close()
    process.stop()


def test_allowed_host_fetches(gated: Api, redirector: HostileServer, code: str) -> None:
    assert gated.link(code, redirector.url("/pkg.tar.gz"), version="1").status_code == 201
    # The entry "LOCALHOST." matches however the URL spells it.
    url = f"http://LocalHost:{redirector.port}/pkg.tar.gz"
    assert gated.link(code, url, version="2").status_code == 201


@pytest.mark.parametrize("path", ["/to-other-host.tar.gz", "/to-other-port.tar.gz", "/to-numeric.tar.gz",
                                  "/to-ftp.tar.gz", "/to-file.tar.gz", "/to-relative-file.tar.gz"])
def test_redirect_to_forbidden_host_live(gated: Api, redirector: HostileServer, forbidden_target: HostileServer,
                                         path: str, code: str) -> None:
    before = forbidden_target.connections
    response = gated.link(code, redirector.url(path), version="1")
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "SOURCE_ORIGIN_FORBIDDEN"
    assert forbidden_target.connections == before
    assert gated.list(code).json()["count"] == 0


def test_host_not_allowed_is_refused_before_connecting(gated: Api, forbidden_target: HostileServer,
                                                      code: str) -> None:
    before = forbidden_target.connections
    response = gated.link(code, forbidden_target.url("/pkg.tar.gz"), version="1")
    assert response.status_code == 403, response.text
    assert forbidden_target.connections == before


def test_redirect_chain_within_limit_live(gated: Api, redirector: HostileServer, code: str) -> None:
    response = gated.link(code, redirector.url("/hop/2/pkg.tar.gz"), version="1")
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("path", ["/hop/3/pkg.tar.gz", "/hop/5/pkg.tar.gz", "/loop.tar.gz"])
def test_redirect_chain_too_long_live(gated: Api, redirector: HostileServer, path: str, code: str) -> None:
    response = gated.link(code, redirector.url(path), version="1")
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "PACKAGE_DOWNLOAD_FAILED"
    assert gated.list(code).json()["count"] == 0


# -- the file origin: only under allowed_roots ---------------------------------------------------

def test_file_origin_refuses_everything_without_roots(strict: tuple[RegistryProcess, Api], code: str,
                                                      tmp_path: Path) -> None:
    _, api = strict
    local = tmp_path / "pkg.tar.gz"
    local.write_bytes(package(salt=code))
    for url in (f"file://{local}", "file:///etc/passwd", f"file://localhost{local}"):
        response = api.link(code, url, version="1")
        assert response.status_code == 403, (url, response.text)
        assert response.json()["code"] == "SOURCE_ORIGIN_FORBIDDEN"


@pytest.fixture
def outside(tmp_path: Path, code: str) -> Path:
    secret = tmp_path / "outside" / "secret.tar.gz"
    secret.parent.mkdir()
    secret.write_bytes(package(salt=code + "-secret"))
    return secret


def test_file_origin_escapes(api: Api, code: str, file_server: Any, outside: Path) -> None:
    root: Path = file_server.root
    here = root / code
    here.mkdir(parents=True, exist_ok=True)
    (here / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    (here / "zero").symlink_to("/dev/zero")
    (here / "rootlink").symlink_to("/", target_is_directory=True)
    sibling = root.parent / (root.name + "-evil")
    sibling.mkdir(exist_ok=True)
    (sibling / "pkg.tar.gz").write_bytes(package(salt=code))
    escapes = [
        f"file://{here}/dirlink/secret.tar.gz",                 # a folder link leading out
        f"file://{here}/%2e%2e/%2E%2E/{outside.relative_to(Path('/'))}",  # encoded dot-dot
        f"file://{here}/..%2f..%2f{outside.name}",
        f"file://{here}/zero",                                  # a link to a device outside
        f"file://{here}/rootlink/etc/passwd",
        f"file://{sibling}/pkg.tar.gz",                         # a prefix of the root is not the root
        f"file://{here}/pkg.tar.gz%00.txt",
        f"file://otherhost{here}/pkg.tar.gz",                   # a remote host
        f"file://127.0.0.1{here}/pkg.tar.gz",
        "file:///proc/self/environ",
        "file:///etc/passwd",
    ]
    for url in escapes:
        response = api.link(code, url, version="1")
        assert response.status_code == 403, (url, response.text)
        assert response.json()["code"] == "SOURCE_ORIGIN_FORBIDDEN"
    assert api.list(code).json()["count"] == 0


def test_file_origin_inside_root_spellings(api: Api, code: str, file_server: Any) -> None:
    root: Path = file_server.root
    file_server.add(f"{code}/ok.tar.gz", package(salt=code))
    (root / code / "inner").mkdir()
    (root / code / "inner" / "link.tar.gz").symlink_to(root / code / "ok.tar.gz")
    accepted = [
        f"file://localhost{root}/{code}/ok.tar.gz",
        f"FILE://{root}/{code}/ok.tar.gz",
        f"file://{root}/{code}/inner/../ok.tar.gz",
        f"file://{root}/{code}/inner/link.tar.gz",              # a link that stays inside
        f"file://{root}/{code}/%6Fk.tar.gz",
    ]
    for number, url in enumerate(accepted):
        response = api.link(code, url, version=f"1.{number}")
        assert response.status_code == 201, (url, response.text)


def test_file_origin_special_files_fail_without_hanging(api: Api, code: str, file_server: Any) -> None:
    """A FIFO would block a plain open() until a writer comes: refused at once."""
    import os

    here: Path = file_server.root / code
    here.mkdir(parents=True, exist_ok=True)
    os.mkfifo(here / "fifo.tar.gz")
    (here / "folder.tar.gz").mkdir()
    for name in ("fifo.tar.gz", "folder.tar.gz", "missing.tar.gz"):
        response = api.link(code, f"file://{here}/{name}", version="1")
        assert response.status_code == 502, (name, response.text)
        assert response.json()["code"] == "PACKAGE_DOWNLOAD_FAILED"


def test_file_origin_relative_forms_unsupported(api: Api, code: str) -> None:
    for url in ("file:relative/pkg.tar.gz", "file:/etc/passwd"):
        response = api.link(code, url, version="1")
        assert response.status_code in (400, 403), (url, response.text)
        assert response.json()["code"] in ("UNSUPPORTED_SOURCE_ORIGIN", "SOURCE_ORIGIN_FORBIDDEN")


def test_file_origin_checks_the_file_actually_opened(tmp_path: Path) -> None:
    """Between the check and the open, a folder can be swapped for a link:
    the opened file is checked against the roots again."""
    from registry_plugins.origin_file import FileOrigin

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "pkg.tar.gz").write_bytes(b"inside")
    away = tmp_path / "away"
    away.mkdir()
    (away / "pkg.tar.gz").write_bytes(b"outside")
    origin = FileOrigin([str(root)])
    checked = origin._allowed_path(f"file://{root}/sub/pkg.tar.gz")
    # The swap: sub becomes a link to a folder outside the root.
    (root / "sub").rename(tmp_path / "old-sub")
    (root / "sub").symlink_to(away, target_is_directory=True)
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc/self/fd to check the opened file against")
    with pytest.raises(SourceOriginForbidden):
        origin._open_regular(checked)
