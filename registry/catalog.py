"""What browsing needs beyond one module's records: summaries and captured details.

Plain values, no storage: the record store (``registry/store.py``) returns
them and keeps them.

- :class:`PackageDetails`: the ``app_desc.yaml`` text and first member paths
  of a package, captured once while the archive is inspected and written in
  the same transaction as its record, so a page view never re-reads a blob.
- :class:`Summary`: an application or a module with its counts and last upload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from registry.archive import ArchiveInfo

#: Largest ``app_desc.yaml`` kept for a package's page, in bytes of UTF-8.
APP_DESC_CAP = 64 * 1024


@dataclass(frozen=True)
class PackageDetails:
    """What a package's page shows of its content.

    :param app_desc: the ``app_desc.yaml`` text (invalid UTF-8 replaced), cut
        at :data:`APP_DESC_CAP` bytes, or None when the package has none.
    :param member_paths: the first member paths, in archive order.

    Text from :meth:`from_archive` holds no NUL and no lone surrogate (NUL
    and undecodable names replaced by U+FFFD), so every store can keep it.
    :param members: how many members the archive holds in all.
    """

    app_desc: str | None
    app_desc_truncated: bool = False
    member_paths: list[str] = field(default_factory=list)
    members: int = 0

    @classmethod
    def from_archive(cls, info: ArchiveInfo) -> PackageDetails:
        """The details of an inspected archive."""
        text = None
        truncated = False
        if info.app_desc is not None:
            raw = info.app_desc
            truncated = len(raw) > APP_DESC_CAP
            # errors="ignore" drops a multi-byte character cut in half by the cap.
            text = _storable(raw[:APP_DESC_CAP].decode("utf-8", "replace" if not truncated else "ignore"))
        return cls(text, truncated, [_storable(path) for path in info.member_paths], info.members)


def _storable(text: str) -> str:
    """``text`` without NUL (PostgreSQL text cannot hold it) or lone surrogates
    (a tar name that is not UTF-8 decodes to them; no store can encode them):
    each becomes U+FFFD."""
    try:
        # a name's undecodable bytes come back, then are replaced one for one
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # another lone surrogate
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace").replace("\x00", "\ufffd")


@dataclass(frozen=True)
class Summary:
    """An application or a module: its name, modules (applications only; 0
    for a module), live packages and the time of the newest live upload or
    change (None when every package is deleted)."""

    name: str
    modules: int
    packages: int
    last_uploaded: datetime | None
