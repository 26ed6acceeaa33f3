"""How the web interface writes sizes, times, digests and fetch commands."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime

from registry.archive import FORMATS

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(size: int) -> str:
    """``1.4 MiB``: binary units, one decimal below 10 of a unit."""
    value = float(size)
    for unit in UNITS:
        if value < 1024 or unit == UNITS[-1]:
            if unit == "B":
                return f"{size} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def iso_utc(moment: datetime | None) -> str:
    """A time as ISO 8601 UTC with ``Z`` (for ``<time datetime>``), or ``""``."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_text(moment: datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (shown until the script turns it
    into the viewer's zone, and on hover after), or ``""``."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short_sha(digest: str) -> str:
    """The first 12 hex digits of a sha256, for tables; the whole one goes in a title and a copy button."""
    return digest[:12]


def download_file_name(package_name: str, fmt: str) -> str:
    """A file name for ``registry pull -o`` / ``curl -o``: the package name, ``:`` as ``-``."""
    extension = FORMATS.get(fmt, ("bin", ""))[0]
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in package_name.replace(":", "-"))
    return f"{safe or 'package'}.{extension}"


def curl_line(base_url: str, download_path: str, file_name: str) -> str:
    """A ``curl`` command that downloads the package with a token from ``$REGISTRY_TOKEN``."""
    return (f'curl -fL -H "Authorization: Bearer $REGISTRY_TOKEN" -o {shlex.quote(file_name)} '
            f"{shlex.quote(base_url + download_path)}")


def pull_line(base_url: str, code: str, module: str, package_id: int, file_name: str) -> str:
    """The ``registry pull`` command for the package (the token comes from ``$REGISTRY_TOKEN``)."""
    return (f"registry pull --url {shlex.quote(base_url)} --app {code} --module {module} "
            f"{package_id} -o {shlex.quote(file_name)}")
