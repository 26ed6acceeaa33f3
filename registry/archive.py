"""Archive inspection: format by content, safety of every member, app_desc.yaml.

Runs on the staged file before anything is committed, in a worker thread
(it is CPU- and I/O-bound). Nothing is extracted to disk: tar archives are read
as a stream, zip members are read through and discarded, so a bomb costs at
most the configured limits in CPU time and nothing in disk space.
"""

from __future__ import annotations

import lzma
import posixpath
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml

from registry.errors import InvalidPackage

READ_SIZE = 1024 * 1024
RATIO_CHECK_FLOOR = 64 * 1024 * 1024
APP_DESC_NAMES = frozenset({"app_desc.yaml", "app_desc.yml"})
APP_DESC_MAX_SIZE = 1024 * 1024

#: Format name -> (file extension, media type).
FORMATS: dict[str, tuple[str, str]] = {
    "tar.gz": ("tar.gz", "application/gzip"),
    "tar.bz2": ("tar.bz2", "application/x-bzip2"),
    "tar.xz": ("tar.xz", "application/x-xz"),
    "tar": ("tar", "application/x-tar"),
    "zip": ("zip", "application/zip"),
}


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_unpacked_size: int
    max_compression_ratio: int


@dataclass
class ArchiveInfo:
    """What inspection learned.

    :param format: a key of :data:`FORMATS`.
    :param app_desc: raw bytes of the shallowest ``app_desc.yaml``/``.yml``, if any.
    """

    format: str
    members: int
    unpacked_size: int
    app_desc: bytes | None = None
    app_desc_name: str | None = None


def detect_format(head: bytes) -> str | None:
    """The archive format from the first 512 bytes, or None."""
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def inspect_archive(path: Path, limits: ArchiveLimits) -> ArchiveInfo:
    """Check that ``path`` is a safe, complete archive of a supported format.

    :raises InvalidPackage: naming the offending member where there is one.
    """
    packed_size = path.stat().st_size
    with path.open("rb") as f:
        fmt = detect_format(f.read(512))
        f.seek(0)
        if fmt is None:
            raise InvalidPackage("not a tar.gz, tar.bz2, tar.xz, tar or zip archive")
        checker = _Budget(limits, packed_size)
        try:
            if fmt == "zip":
                info = _inspect_zip(f, checker)
            else:
                info = _inspect_tar(f, fmt, checker)
        except InvalidPackage:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
                zlib.error, lzma.LZMAError, ValueError, NotImplementedError, RuntimeError) as exc:
            raise InvalidPackage(f"unreadable {fmt} archive ({_reason(exc)})") from exc
    if info.members == 0:
        raise InvalidPackage("the archive holds no files")
    return info


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


class _Budget:
    """Counts members and unpacked bytes against the limits."""

    def __init__(self, limits: ArchiveLimits, packed_size: int) -> None:
        self.limits = limits
        self.packed_size = max(packed_size, 1)
        self.members = 0
        self.unpacked = 0

    def add_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise InvalidPackage(f"more than {self.limits.max_members} members (at {name!r})")

    def add_bytes(self, count: int, name: str) -> None:
        self.unpacked += count
        if self.unpacked > self.limits.max_unpacked_size:
            raise InvalidPackage(
                f"unpacked size exceeds {self.limits.max_unpacked_size} bytes (at {name!r})"
            )
        if (
            self.unpacked > RATIO_CHECK_FLOOR
            and self.unpacked / self.packed_size > self.limits.max_compression_ratio
        ):
            raise InvalidPackage(
                f"compression ratio exceeds {self.limits.max_compression_ratio} (at {name!r})"
            )


def _clean_member_name(name: str) -> str:
    """The member's path, normalised; refuses absolute paths and ``..``."""
    if not name or "\x00" in name:
        raise InvalidPackage(f"member with an empty or invalid name {name!r}")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise InvalidPackage(f"absolute path in member {name!r}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPackage(f"'..' in member {name!r}")
    return "/".join(parts)


def _check_link_target(member: str, target: str, *, relative_to_member: bool) -> None:
    """Refuse a link whose target is absolute or leaves the archive."""
    unified = target.replace("\\", "/")
    if not unified or unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise InvalidPackage(f"link {member!r} points outside the archive ({target!r})")
    base = posixpath.dirname(member) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, unified))
    if resolved == ".." or resolved.startswith("../"):
        raise InvalidPackage(f"link {member!r} points outside the archive ({target!r})")


class _AppDescPicker:
    """Keeps the shallowest app_desc.yaml seen."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.depth = 1 << 30
        self.content: bytes | None = None

    def wants(self, name: str, size: int) -> bool:
        depth = name.count("/")
        return (
            posixpath.basename(name) in APP_DESC_NAMES
            and depth < self.depth
            and size <= APP_DESC_MAX_SIZE
        )

    def take(self, name: str, content: bytes) -> None:
        self.name, self.depth, self.content = name, name.count("/"), content


def _inspect_tar(f: IO[bytes], fmt: str, budget: _Budget) -> ArchiveInfo:
    mode = {"tar.gz": "r|gz", "tar.bz2": "r|bz2", "tar.xz": "r|xz", "tar": "r|"}[fmt]
    picker = _AppDescPicker()
    with tarfile.open(fileobj=f, mode=mode) as tar:  # type: ignore[call-overload]
        for member in tar:
            name = _clean_member_name(member.name)
            budget.add_member(member.name)
            if member.ischr() or member.isblk() or member.isfifo():
                raise InvalidPackage(f"device or fifo member {member.name!r}")
            if member.issym():
                _check_link_target(name, member.linkname, relative_to_member=True)
            elif member.islnk():
                _check_link_target(name, member.linkname, relative_to_member=False)
            elif member.isfile():
                budget.add_bytes(member.size, member.name)
                if picker.wants(name, member.size):
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    picker.take(name, extracted.read())
        # Read the compressed stream to its end so truncation or trailing
        # corruption is noticed now rather than by whoever unpacks it later.
        stream = tar.fileobj
        assert stream is not None
        while stream.read(READ_SIZE):
            pass
    return ArchiveInfo(fmt, budget.members, budget.unpacked, picker.content, picker.name)


def _inspect_zip(f: IO[bytes], budget: _Budget) -> ArchiveInfo:
    picker = _AppDescPicker()
    with zipfile.ZipFile(f) as archive:
        infos = archive.infolist()
        if len(infos) > budget.limits.max_members:
            raise InvalidPackage(f"more than {budget.limits.max_members} members")
        declared = sum(info.file_size for info in infos)
        if declared > budget.limits.max_unpacked_size:
            raise InvalidPackage(f"unpacked size exceeds {budget.limits.max_unpacked_size} bytes")
        for info in infos:
            name = _clean_member_name(info.filename)
            budget.add_member(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise InvalidPackage(f"device or fifo member {info.filename!r}")
            if info.is_dir():
                continue
            is_link = stat.S_ISLNK(mode)
            if is_link and info.file_size > 4096:
                raise InvalidPackage(f"link {info.filename!r} has an oversized target")
            keep = is_link or picker.wants(name, info.file_size)
            content = bytearray()
            with archive.open(info) as member:
                while chunk := member.read(READ_SIZE):
                    budget.add_bytes(len(chunk), info.filename)
                    if keep:
                        content += chunk
            if is_link:
                _check_link_target(name, content.decode("utf-8", "replace"), relative_to_member=True)
            elif keep:
                picker.take(name, bytes(content))
    return ArchiveInfo("zip", budget.members, budget.unpacked, picker.content, picker.name)


def version_from_app_desc(content: bytes) -> str | None:
    """The app version an ``app_desc.yaml`` declares, as written, or None.

    Spec 3 (``specVersion: 3``) keeps it in ``appVersion``, spec 2 in
    ``app_version``. Scalars are read as strings so ``1.10`` stays ``1.10``.

    :raises InvalidPackage: the file is not a YAML mapping.
    """
    try:
        data = yaml.load(content, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds only str/list/dict
    except yaml.YAMLError as exc:
        raise InvalidPackage(f"app_desc.yaml is not valid YAML ({_reason(exc)})") from exc
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidPackage("app_desc.yaml is not a mapping")
    spec3 = str(data.get("specVersion", "")).strip() == "3"
    keys = ("appVersion", "app_version") if spec3 else ("app_version", "appVersion")
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None
