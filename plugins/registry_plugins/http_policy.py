"""Where the ``http`` origin may connect: host allow-list and address checks.

The origin resolves a host once, judges every address it resolved to, and
then connects to one of those very addresses, so a DNS answer that changes
between check and connect (rebinding) cannot send it elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

import anyio

from registry.errors import PackageDownloadFailed, SourceOriginForbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_host(host: str) -> str:
    """Lower-case, without brackets and without a trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def literal_address(host: str) -> IPAddress | None:
    """The address a numeric host spelling means (``127.1``, ``2130706433``,
    ``0x7f000001``, ``::ffff:127.0.0.1``), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


#: IPv6 global unicast: everything routable on the internet lives here today.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
#: NAT64: the well-known prefix (judged by the IPv4 address it embeds) and the
#: local-use prefix (RFC 8215), which translates to whatever the operator chose.
_NAT64_V6 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64_V6 = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public(address: IPAddress) -> bool:
    """True for globally routable unicast addresses only.

    Refuses loopback, RFC 1918, CGNAT, link-local (cloud metadata), multicast,
    unspecified, reserved and documentation ranges, IPv6 ULA and link-local,
    IPv6 outside global unicast (``2000::/3``: this also refuses the
    IPv4-compatible ``::a.b.c.d`` and IPv4-translated ``::ffff:0:a.b.c.d``
    forms), scoped addresses, and IPv4 addresses hidden in IPv6 (mapped,
    6to4, NAT64) that are not public.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64_V6:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address not in _GLOBAL_UNICAST_V6 or address in _LOCAL_NAT64_V6:
            return False
        return address.is_global and not address.is_multicast and not address.is_reserved
    return address.is_global and not address.is_multicast and not address.is_reserved


@dataclass(frozen=True)
class HostEntry:
    """One parsed ``allowed_hosts`` entry; ``port`` None means the scheme's default."""

    host: str
    port: int | None

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        default = DEFAULT_PORTS[scheme]
        return self.host == host and (self.port or default) == (port or default)


def parse_entry(entry: str) -> HostEntry:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``, normalised.

    :raises ValueError: not one of those forms (a URL, an empty host, a bad port).
    """
    text = entry.strip()
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed host entry {entry!r}")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"malformed host entry {entry!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise ValueError(f"malformed host entry {entry!r}")
    else:
        host = text
    host = normalize_host(host)
    if not host or any(c in host for c in "/@?#\\ \t") or (":" in host and literal_address(host) is None):
        raise ValueError(f"malformed host entry {entry!r} (expected host or host:port)")
    port: int | None = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in host entry {entry!r}")
        port = int(port_text)
    return HostEntry(host, port)


@dataclass(frozen=True)
class HostPolicy:
    """The ``[origins.http]`` rules for one fetch hop.

    :raises ValueError: an ``allowed_hosts`` entry is malformed.
    """

    allowed_hosts: tuple[str, ...]
    allow_private_networks: bool
    entries: tuple[HostEntry, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(parse_entry(e) for e in self.allowed_hosts))

    def check_host(self, scheme: str, host: str, port: int | None) -> None:
        """Refuse a host not in ``allowed_hosts`` (when that is set).

        ``host`` is compared normalised (lower case, no brackets or trailing
        dot); an entry without a port matches only the scheme's default port.
        """
        if not self.entries:
            return
        host = normalize_host(host)
        if any(entry.matches(scheme, host, port) for entry in self.entries):
            return
        raise SourceOriginForbidden(f"host {host!r} is not in origins.http.allowed_hosts")

    async def resolve(self, host: str, port: int) -> IPAddress:
        """An address for ``host`` that policy allows; every resolved one is judged.

        :raises SourceOriginForbidden: an address is private or loopback (and
            ``allow_private_networks`` is false).
        :raises PackageDownloadFailed: the name does not resolve.
        """
        host = normalize_host(host)
        if host == "localhost" or host.endswith(".localhost"):
            addresses: list[IPAddress] = [ipaddress.IPv4Address("127.0.0.1")]
        elif (literal := literal_address(host)) is not None:
            addresses = [literal]
        else:
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise PackageDownloadFailed(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
            addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
            if not addresses:
                raise PackageDownloadFailed(f"cannot resolve {host!r}")
        if not self.allow_private_networks:
            for address in addresses:
                if not is_public(address):
                    raise SourceOriginForbidden(f"host {host!r} resolves to a non-public address")
        return addresses[0]
