"""Where the ``http`` origin may connect: host allow-list and address checks.

The origin resolves a host once, judges every address it resolved to, and
then connects to one of those very addresses, so a DNS answer that changes
between check and connect (rebinding) cannot send it elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

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


def is_public(address: IPAddress) -> bool:
    """True for globally routable unicast addresses only.

    Refuses loopback, RFC 1918, CGNAT, link-local (cloud metadata), multicast,
    unspecified, reserved and documentation ranges, IPv6 ULA and link-local,
    and IPv4 addresses hidden in IPv6 (mapped, 6to4, NAT64) that are not public.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in ipaddress.IPv6Network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class HostPolicy:
    """The ``[origins.http]`` rules for one fetch hop."""

    allowed_hosts: tuple[str, ...]
    allow_private_networks: bool

    def check_host(self, scheme: str, host: str, port: int | None) -> None:
        """Refuse a host not in ``allowed_hosts`` (when that is set)."""
        if not self.allowed_hosts:
            return
        effective = port or DEFAULT_PORTS[scheme]
        for entry in self.allowed_hosts:
            name, _, entry_port = normalize_entry(entry)
            wanted = int(entry_port) if entry_port else DEFAULT_PORTS[scheme]
            if name == host and wanted == effective:
                return
        raise SourceOriginForbidden(f"host {host!r} is not in origins.http.allowed_hosts")

    async def resolve(self, host: str, port: int) -> IPAddress:
        """An address for ``host`` that policy allows; every resolved one is judged.

        :raises SourceOriginForbidden: an address is private or loopback (and
            ``allow_private_networks`` is false).
        :raises PackageDownloadFailed: the name does not resolve.
        """
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


def normalize_entry(entry: str) -> tuple[str, str, str]:
    """An ``allowed_hosts`` entry as (host, ':', port) with the host normalised."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return normalize_host(host), ":", rest.lstrip(":")
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return normalize_host(host), ":", port
    return normalize_host(entry), "", ""
