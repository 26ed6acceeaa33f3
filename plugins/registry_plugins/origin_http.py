"""Built-in origin ``http``: fetch ``http://`` and ``https://`` links safely.

Each hop (the first URL and every redirect) is checked the same way: scheme,
``allowed_hosts``, then the resolved addresses; the connection goes to the
address that was checked, with the original name in ``Host`` and TLS SNI, so
certificates are still verified against the name. Redirects are followed by
hand, at most ``max_redirects``. Connect and read timeouts come from httpx; a
deadline over the whole fetch stops a server that trickles bytes forever.

httpx is imported, and its TLS context built, by the first fetch in a worker
thread: together they take about 70 ms that neither start-up nor the event
loop should pay, and a registry that is never sent a link never pays them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urljoin, urlsplit

import anyio
import anyio.to_thread

from registry import __version__
from registry.errors import (
    PackageDownloadFailed,
    PackageDownloadTimeout,
    SourceOriginForbidden,
    ValidationError,
)
from registry.hookspecs import hookimpl
from registry.origins import Download, Origin
from registry.redact import install_log_redaction, redact_text, redact_url
from registry.settings import Setting, Settings, not_negative, positive
from registry.validation import MAX_NUMBER_DIGITS, parse_decimal, url_file_name
from registry_plugins.http_policy import HostPolicy, normalize_host, parse_entry

if TYPE_CHECKING:
    import ssl

    import httpx

NAME = "http"
SCHEMES = ("http", "https")
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
USER_AGENT = f"source-package-registry/{__version__}"


@dataclass(frozen=True)
class ClientOptions:
    """What every fetch's ``httpx.AsyncClient`` is made with."""

    timeout: httpx.Timeout
    ssl_context: ssl.SSLContext


class HttpOrigin(Origin):
    """Fetches ``http://`` and ``https://`` URLs, every hop checked by ``policy``.

    :meth:`open` raises ``ValidationError`` for a malformed first URL,
    ``SourceOriginForbidden`` for a host, address or redirect scheme the
    policy refuses, ``PackageDownloadTimeout`` when a connect/read timeout or
    the ``total_timeout`` deadline passes, and ``PackageDownloadFailed`` for
    a status other than 200, too many or malformed redirects, a name that
    does not resolve, or any other transport failure. The download's
    ``size`` is the response's ``Content-Length``, when it sent one.
    """

    name = NAME

    def __init__(
        self,
        policy: HostPolicy,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        max_redirects: int,
    ) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_redirects = max_redirects
        self._options: ClientOptions | None = None

    async def client_options(self) -> ClientOptions:
        """The fetches' timeout and TLS context, made by the first fetch in a
        worker thread (which also imports httpx) and kept: building a TLS
        context reads the CA bundle from disk, which each fetch would
        otherwise do on the event loop. Two first fetches at once may both
        build them; either result serves."""
        if self._options is None:
            self._options = await anyio.to_thread.run_sync(self._make_client_options)
        return self._options

    def _make_client_options(self) -> ClientOptions:
        import httpx

        timeout = httpx.Timeout(connect=self.connect_timeout, read=self.read_timeout, write=self.read_timeout,
                                pool=self.connect_timeout)
        return ClientOptions(timeout=timeout, ssl_context=httpx.create_ssl_context(trust_env=False))

    def accepts(self, url: str) -> bool:
        scheme = url.split(":", 1)[0].lower()
        return scheme in SCHEMES

    @asynccontextmanager
    async def open(self, url: str, max_size: int) -> AsyncIterator[Download]:
        options = await self.client_options()
        import httpx  # loaded by client_options

        try:
            with anyio.fail_after(self.total_timeout):
                async with httpx.AsyncClient(
                    timeout=options.timeout, follow_redirects=False, trust_env=False, verify=options.ssl_context
                ) as client:
                    response = await self._follow(client, url)
                    try:
                        yield Download(chunks=response.aiter_raw(), size=_content_length(response),
                                       file_name=url_file_name(url), display_url=redact_url(url))
                    finally:
                        await response.aclose()
        except TimeoutError:
            raise PackageDownloadTimeout(f"no complete answer within {self.total_timeout:g} s") from None
        except httpx.TimeoutException as exc:
            raise PackageDownloadTimeout(_describe(exc)) from None
        except httpx.HTTPError as exc:
            raise PackageDownloadFailed(_describe(exc)) from None

    async def _follow(self, client: httpx.AsyncClient, url: str) -> httpx.Response:
        import httpx

        current = url
        locations: list[str] = []

        async def remember(response: httpx.Response) -> None:
            locations.append(response.headers.get("location", ""))

        client.event_hooks = {"request": [], "response": [remember]}
        for hop in range(self.max_redirects + 1):
            request = await self._request(client, current, redirected=hop > 0)
            try:
                response = await client.send(request, stream=True)
            except (httpx.InvalidURL, UnicodeError):
                # httpx prepares the next request of a redirect even when not
                # following it, and a Location it cannot build one from
                # (``file:x``, or ``http://xn--/``: an ``idna.IDNAError``)
                # raises this rather than an ``HTTPError``.
                self._refuse_redirect(current, locations[-1] if locations else "")
            if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                await response.aclose()
                try:
                    current = urljoin(current, response.headers["location"])
                except ValueError:
                    raise PackageDownloadFailed("the origin redirected to an invalid URL") from None
                continue
            if response.status_code != 200:
                await response.aclose()
                raise PackageDownloadFailed(f"{redact_url(current)} answered HTTP {response.status_code}")
            return response
        raise PackageDownloadFailed(f"more than {self.max_redirects} redirects")

    @staticmethod
    def _refuse_redirect(current: str, location: str) -> NoReturn:
        """Refuse a redirect httpx could not even parse: a scheme other than
        http(s) is a policy refusal like any other, the rest the origin's fault."""
        try:
            scheme = urlsplit(urljoin(current, location)).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme and scheme not in SCHEMES:
            raise SourceOriginForbidden(f"redirect to a {scheme!r} URL")
        raise PackageDownloadFailed("the origin redirected to an invalid URL")

    async def _request(self, client: httpx.AsyncClient, url: str, *, redirected: bool = False) -> httpx.Request:
        """A request for one hop, aimed at the checked address.

        A malformed first URL is the client's mistake (``VALIDATION_ERROR``);
        a malformed redirect target is the origin's (``PACKAGE_DOWNLOAD_FAILED``).
        """
        import httpx

        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            if redirected:
                raise PackageDownloadFailed("the origin redirected to an invalid URL") from None
            raise ValidationError.single("package_url", "不是合法的 URL", "is not a valid URL") from None
        scheme = target.scheme.lower()
        if scheme not in SCHEMES:
            raise SourceOriginForbidden(f"redirect to a {scheme or 'relative'!r} URL")
        try:
            host = normalize_host(target.host)  # an IDN decoded, as allowed_hosts may list it
        except ValueError:  # idna.IDNAError: a malformed "xn--" label
            if redirected:
                raise PackageDownloadFailed("the origin redirected to an invalid host name") from None
            raise ValidationError.single("package_url", "不是合法的 URL", "is not a valid URL") from None
        if not host:
            if redirected:
                raise PackageDownloadFailed("the origin redirected to a URL without a host")
            raise ValidationError.single("package_url", "缺少主机名", "has no host")
        self.policy.check_host(scheme, host, target.port)
        # DNS, the Host header and TLS SNI take the ASCII (punycode) form of an IDN.
        wire_host = normalize_host(target.raw_host.decode("ascii"))
        address = await self.policy.resolve(wire_host, target.port or (443 if scheme == "https" else 80))
        pinned = target.copy_with(host=str(address))
        host_header = wire_host if ":" not in wire_host else f"[{wire_host}]"
        if target.port is not None:
            host_header = f"{host_header}:{target.port}"
        extensions = {"sni_hostname": wire_host} if scheme == "https" else {}
        return client.build_request(
            "GET",
            pinned,
            headers={"Host": host_header, "Accept-Encoding": "identity", "User-Agent": USER_AGENT},
            extensions=extensions,
        )


def _content_length(response: httpx.Response) -> int | None:
    """The announced body size; None when absent or malformed. More digits
    than any real size stands for "too large" (never an ``int()`` of
    thousands of digits, which raises)."""
    value = response.headers.get("content-length", "").strip()
    size = parse_decimal(value)
    if size is None and value.isascii() and value.isdigit():
        too_large: int = 10**MAX_NUMBER_DIGITS
        return too_large
    return size


def _describe(exc: httpx.HTTPError) -> str:
    text = redact_text(str(exc) or type(exc).__name__)
    try:
        where = redact_url(str(exc.request.url))
    except RuntimeError:
        return text[:300]
    return f"{where}: {text}"[:300]


@hookimpl
def registry_settings() -> list[Setting]:
    return [
        Setting("origins.http.allowed_hosts", "list[str]", [],
                "Hosts (`host` or `host:port`) links may point to; empty: any public host.",
                check=_check_allowed_hosts),
        Setting("origins.http.allow_private_networks", "bool", False,
                "Allow loopback, private, link-local and other non-public addresses."),
        Setting("origins.http.connect_timeout", "float", 10, "Seconds to connect.", check=positive),
        Setting("origins.http.read_timeout", "float", 60, "Seconds allowed between two reads.", check=positive),
        Setting("origins.http.total_timeout", "float", 600, "Seconds for the whole fetch.", check=positive),
        Setting("origins.http.max_redirects", "int", 5, "Redirects followed, each checked like the first URL.",
                check=not_negative),
    ]


def _check_allowed_hosts(entries: list[str]) -> str | None:
    for entry in entries:
        try:
            parse_entry(entry)
        except ValueError as exc:
            return str(exc)
    return None


@hookimpl
def registry_origins(settings: Settings) -> list[Origin]:
    # httpx logs every request URL at INFO, query string and user:password@
    # included; the server's log must never hold those.
    install_log_redaction("httpx", "httpcore")
    policy = HostPolicy(
        allowed_hosts=tuple(settings["origins.http.allowed_hosts"]),
        allow_private_networks=settings["origins.http.allow_private_networks"],
    )
    return [
        HttpOrigin(
            policy,
            connect_timeout=settings["origins.http.connect_timeout"],
            read_timeout=settings["origins.http.read_timeout"],
            total_timeout=settings["origins.http.total_timeout"],
            max_redirects=settings["origins.http.max_redirects"],
        )
    ]
