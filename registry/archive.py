"""Archive inspection: format by content, safety of every member, app_desc.yaml.

Runs on the staged file before anything is committed, in a worker thread
(it is CPU- and I/O-bound). Nothing is extracted to disk: tar archives are read
as a stream, zip members are read through and discarded, so a bomb costs at
most the configured limits in CPU time and nothing in disk space.

Refused: absolute or ``..`` member paths (``\\`` counts as a separator),
links that resolve outside the archive (following the archive's own links),
device, fifo and socket members, more members or unpacked bytes than the
limits, a compression ratio above the limit (members' data and the whole
decompressed stream alike), oversized extended headers or sparse maps,
global pax headers beyond a few dozen keywords, malformed pax records, a
header GNU tar reads otherwise than tarfile (a prefix field outside ustar,
a link with a size, a sparse or global size, data in an extended header's
padding), a negative size or sparse map number (tarfile would read an
earlier header next, GNU tar refuses it), a compressed stream that is
truncated or fails its checksum, a tar without its end-of-archive marker or
with data after it, a path listed twice, a zip whose local entries and
central directory disagree (:mod:`registry.zip_layout`), a file that also
reads as an archive of another format (a tar with a zip inside that
``unzip`` would find, a zip holding a tar header where GNU tar finds it).
"""

from __future__ import annotations

import contextlib
import io
import lzma
import mmap
import posixpath
import stat
import tarfile
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

from registry.errors import InvalidPackage
from registry.gnu_tar_scan import find_header
from registry.tar_stream import TarStream, decompressing
from registry.zip_layout import check_zip_layout

READ_SIZE = 1024 * 1024
RATIO_CHECK_FLOOR = 64 * 1024 * 1024
APP_DESC_NAMES = frozenset({"app_desc.yaml", "app_desc.yml"})
APP_DESC_MAX_SIZE = 1024 * 1024
BLOCK_SIZE = tarfile.BLOCKSIZE
#: Largest pax or GNU long-name header accepted (tarfile reads one whole).
MAX_EXTENDED_HEADER = 1024 * 1024
_EXTENDED_HEADER_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)
#: Symbolic links followed while resolving one link before calling it a loop.
MAX_LINK_HOPS = 40
#: Longest link target accepted (a system's PATH_MAX; it could not create a longer one).
MAX_LINK_TARGET = 4096
#: Longest member name accepted, for the same reason: inspection keeps every
#: name until the links are checked, so a longer one would only cost memory.
MAX_MEMBER_NAME = 4096
#: Steps all link resolutions of one archive may take together.
MAX_LINK_STEPS = 2_000_000
#: Longest member name quoted in an error message.
MAX_SHOWN_NAME = 300

#: How many member names inspection keeps for the package's page.
KEPT_MEMBER_PATHS = 200

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
    :param member_paths: the first :data:`KEPT_MEMBER_PATHS` member names, in archive order.
    """

    format: str
    members: int
    unpacked_size: int
    app_desc: bytes | None = None
    app_desc_name: str | None = None
    member_paths: list[str] = field(default_factory=list)


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


class FollowedUpload(Protocol):
    """An upload still being written, read by :func:`inspect_following`.

    ``read`` blocks until bytes arrive or the upload is complete (then it
    returns ``b""``); ``consumed`` counts the bytes read so far; ``complete``
    waits for the end of the upload and returns the finished file's path.
    """

    consumed: int

    def read(self, size: int = -1) -> bytes: ...

    def complete(self) -> Path: ...


def inspect_archive(path: Path, limits: ArchiveLimits) -> ArchiveInfo:
    """Check that ``path`` is a safe, complete archive of a supported format.

    :raises InvalidPackage: naming the offending member where there is one.
    """
    packed_size = path.stat().st_size
    with path.open("rb") as f:
        fmt = detect_format(f.read(512))
        f.seek(0)
        info = _inspect(f, fmt, _Budget(limits, lambda: packed_size))
    refuse_other_format(path, info.format)
    return info


def inspect_bytes(data: bytes, limits: ArchiveLimits) -> ArchiveInfo:
    """:func:`inspect_archive` of a package held whole in memory (a small
    upload): the same checks and errors, before anything is written.

    :raises InvalidPackage: as :func:`inspect_archive`.
    """
    fmt = detect_format(data[:512])
    info = _inspect(io.BytesIO(data), fmt, _Budget(limits, lambda: len(data)))
    refuse_other_format(io.BytesIO(data), info.format)
    return info


def inspect_following(upload: FollowedUpload, limits: ArchiveLimits) -> ArchiveInfo:
    """Inspect an upload while it is being received, as far as the format allows.

    Compressed and plain tar archives are a stream: they are checked as the
    bytes arrive, so the check costs no second read and a bomb or an unsafe
    member stops the upload early. The compression ratio is then taken over
    the bytes received so far. A zip keeps its directory at the end, so it is
    checked once complete, exactly like :func:`inspect_archive`.

    :raises InvalidPackage: as :func:`inspect_archive`.
    """
    head = b""
    while len(head) < 512 and (more := upload.read(512 - len(head))):
        head += more
    fmt = detect_format(head)
    if fmt == "zip":
        return inspect_archive(upload.complete(), limits)
    # a tar is read as a stream: tarfile and the decompressors only ever call read()
    stream = cast(IO[bytes], _Prepended(head, upload))
    info = _inspect(stream, fmt, _Budget(limits, lambda: upload.consumed))
    refuse_other_format(upload.complete(), info.format)
    return info


def refuse_other_format(path: Path | IO[bytes], fmt: str) -> None:
    """Refuse a file that another tool reads as another archive than ``fmt``.

    ``unzip`` looks for a zip's directory at the end of a file, wherever the
    file starts: a plain tar (or a gzip with stored blocks) can carry one
    after its members, and unzip then unpacks entries inspection never saw.
    A zip may likewise start with a valid tar header, or hold one at any
    512-byte boundary, where GNU tar finds it after skipping the blocks that
    are no header (see :mod:`registry.gnu_tar_scan`). Such a polyglot is
    refused whatever it holds, since no single reading of it can be checked.
    ``path`` is the file, or a binary file object over the package's bytes
    (at its start).

    :raises InvalidPackage: ``path`` also opens as a zip (or, for a zip, as a tar).
    """
    if fmt != "zip":
        try:
            with zipfile.ZipFile(path) as other:
                listed = len(other.infolist())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError):
            return
        if listed:
            raise InvalidPackage(
                f"the {fmt} archive is also a readable zip ({listed} entries, which unzip would unpack): "
                "ambiguous; a zip as the last member of a plain tar does this, compressing the tar avoids it"
            )
        return
    # A valid first header (checksum and numbers) is what makes a tar reader
    # go on: that alone refuses the zip. Reading on with tarfile would make
    # the verdict hang on what follows, which a hostile file picks: a chain
    # of extended headers recursed past Python's limit (a 500), a record
    # tarfile cannot decode read as "not a tar" where other readers skip it.
    with path.open("rb") if isinstance(path, Path) else contextlib.nullcontext(path) as f:
        head = f.read(BLOCK_SIZE)
        try:
            tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            pass
        else:
            raise InvalidPackage("the zip archive is also a readable tar: ambiguous")
        # Python's tarfile stops at a first block that is no header; GNU tar
        # skips it and reads on (tarfile also reads some checksum fields GNU
        # tar refuses, hence both checks). The file is mapped, not read: the
        # scan looks at two bytes of most blocks.
        if isinstance(f, io.BytesIO):
            with f.getbuffer() as view:
                found = find_header(view)
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                found = find_header(mapped)
    if found is not None:
        raise InvalidPackage(
            f"the zip archive is also a readable tar: ambiguous (GNU tar finds a member header at byte {found})"
        )


def _inspect(f: IO[bytes], fmt: str | None, budget: _Budget) -> ArchiveInfo:
    if fmt is None:
        raise InvalidPackage("not a tar.gz, tar.bz2, tar.xz, tar or zip archive")
    try:
        info = _inspect_zip(f, budget) if fmt == "zip" else _inspect_tar(f, fmt, budget)
    except InvalidPackage:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
            zlib.error, lzma.LZMAError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise InvalidPackage(f"unreadable {fmt} archive ({_reason(exc)}){budget.where()}") from exc
    if info.members == 0:
        raise InvalidPackage("the archive holds no files")
    return info


class _Prepended:
    """``head`` (already read to detect the format), then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: FollowedUpload) -> None:
        self.head = head
        self.rest = rest

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data = self.head if size < 0 else self.head[:size]
            self.head = self.head[len(data):]
            return data
        return self.rest.read(size)


def _show(name: object) -> str:
    """A member name for an error message: quoted, escaped, and cut if huge."""
    text = repr(name)
    return text if len(text) <= MAX_SHOWN_NAME else text[: MAX_SHOWN_NAME - 4] + "...'"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


class _Budget:
    """Counts members, unpacked bytes and decompressed bytes against the limits."""

    def __init__(self, limits: ArchiveLimits, packed: Callable[[], int]) -> None:
        """:param packed: the compressed bytes the ratio is taken against."""
        self.limits = limits
        self.packed = packed
        self.members = 0
        self.unpacked = 0
        self.decompressed = 0
        #: the last member seen, named in errors that have no member of their own
        self.last_name: str | None = None
        #: the first member names, kept with the record for its page
        self.first_names: list[str] = []

    def where(self) -> str:
        return f" after member {_show(self.last_name)}" if self.last_name is not None else ""

    def add_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise InvalidPackage(f"more than {self.limits.max_members} members (at {_show(name)})")
        self.last_name = name
        if len(self.first_names) < KEPT_MEMBER_PATHS:
            self.first_names.append(name)

    def ratio_exceeded(self, unpacked: int) -> bool:
        return (
            unpacked > RATIO_CHECK_FLOOR
            and unpacked / max(self.packed(), 1) > self.limits.max_compression_ratio
        )

    def add_bytes(self, count: int, name: str, *, declared: bool = False) -> None:
        """Charge ``count`` unpacked bytes of member ``name``.

        :param declared: ``count`` is a size announced by a tar header, not yet
            decompressed: it counts toward the unpacked total, but the ratio is
            left to :meth:`add_decompressed`, which sees the bytes as they come
            (while an upload streams in, few packed bytes have arrived yet).
        """
        self.unpacked += count
        if self.unpacked > self.limits.max_unpacked_size:
            raise InvalidPackage(
                f"unpacked size exceeds {self.limits.max_unpacked_size} bytes (at {_show(name)})"
            )
        if not declared and self.ratio_exceeded(self.unpacked):
            raise InvalidPackage(
                f"compression ratio exceeds {self.limits.max_compression_ratio} (at {_show(name)})"
            )

    def add_decompressed(self, count: int) -> None:
        """Charge ``count`` bytes of the decompressed stream (headers, padding
        and anything after the archive's end included): a bomb hidden outside
        the members' data is caught by the same ratio."""
        self.decompressed += count
        if self.ratio_exceeded(self.decompressed):
            raise InvalidPackage(
                f"compression ratio exceeds {self.limits.max_compression_ratio}{self.where()}"
            )


def _clean_member_name(name: str) -> str:
    """The member's path, normalised; refuses absolute paths and ``..``."""
    if not name or "\x00" in name:
        raise InvalidPackage(f"member with an empty or invalid name {_show(name)}")
    if len(name) > MAX_MEMBER_NAME:
        raise InvalidPackage(f"member name longer than {MAX_MEMBER_NAME} characters ({_show(name)})")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise InvalidPackage(f"absolute path in member {_show(name)}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPackage(f"'..' in member {_show(name)}")
    return "/".join(parts)


def _check_link_target(member: str, target: str) -> None:
    """Refuse a link target that is empty, absolute or longer than a system
    allows; where a relative one leads is decided by :class:`_LinkTree` once
    every link is known."""
    unified = target.replace("\\", "/")
    if not unified or "\x00" in unified or unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise InvalidPackage(f"link {_show(member)} points outside the archive ({_show(target)})")
    if len(target) > MAX_LINK_TARGET:
        raise InvalidPackage(f"link {_show(member)} has a target longer than {MAX_LINK_TARGET} characters")


class _LinkTree:
    """The archive's links, checked together once every member is known.

    Checking each link on its own, lexically, is not enough: with ``x -> .``
    a later ``x/y -> ..`` reads as ``x/..`` (inside) but lands one level above
    the extraction folder. So every link is resolved the way extraction would
    meet it, component by component, following the archive's own symbolic
    links, and refused when the walk leaves the archive or loops. A name that
    is a link must not appear twice either (which entry wins depends on the
    tool), and no member may be stored under a symbolic link.
    The symbolic links are kept in a tree of path components, so each step of
    a walk costs the same however deep the path, and the walks of one archive
    share a budget of steps.
    """

    #: In the component tree, the key holding a symbolic link's target (no
    #: component of a cleaned name is empty, so it cannot clash).
    _TARGET = ""

    def __init__(self) -> None:
        self.symlinks: dict[str, str] = {}
        self.hardlinks: dict[str, str] = {}
        self.display: dict[str, str] = {}
        self.names: set[str] = set()
        self.folders: set[str] = set()
        self._tree: dict[str, Any] = {}
        self._steps = 0

    def add_member(self, name: str, raw_name: str, *, is_dir: bool = False) -> None:
        """Record a file or folder member; refuse a path seen before.

        Extractors disagree on which of two entries for one path wins (tar
        and unzip keep the last, inspection would read the first), so a
        path may appear once; only a folder listed again as a folder is
        harmless (whichever wins, it is a folder).
        """
        if name in self.symlinks or name in self.hardlinks:
            raise InvalidPackage(f"member {_show(raw_name)} appears twice, once as a link")
        if name in self.names and not (is_dir and name in self.folders):
            raise InvalidPackage(f"member {_show(raw_name)} appears twice in the archive")
        self.names.add(name)
        if is_dir:
            self.folders.add(name)

    def add_link(self, name: str, raw_name: str, target: str, *, symbolic: bool) -> None:
        _check_link_target(raw_name, target)
        if name in self.names or name in self.symlinks or name in self.hardlinks:
            raise InvalidPackage(f"link {_show(raw_name)} appears twice in the archive")
        (self.symlinks if symbolic else self.hardlinks)[name] = target.replace("\\", "/")
        self.display[name] = raw_name
        self.names.add(name)

    def check(self) -> None:
        for name, target in self.symlinks.items():
            node = self._tree
            for part in name.split("/"):
                node = node.setdefault(part, {})
            node[self._TARGET] = target
        # A member stored under a symbolic link would be written wherever the
        # link leads (tar itself never archives a path through a link), and
        # its name would no longer say where it is: refused.
        for name in self.names:
            node = self._tree
            parts = name.split("/")
            for depth, part in enumerate(parts[:-1]):
                child = node.get(part)
                if child is None:
                    break
                node = child
                if self._TARGET in node:
                    raise InvalidPackage(
                        f"member {_show(self.display.get(name, name))} is placed under the link "
                        f"{_show('/'.join(parts[: depth + 1]))}"
                    )
        for name, target in self.symlinks.items():
            self._walk(name.split("/")[:-1] + target.split("/"), name, target)
        for name, target in self.hardlinks.items():
            self._walk(target.split("/"), name, target)

    def _walk(self, parts: list[str], name: str, target: str) -> None:
        pending = list(reversed(parts))
        nodes: list[dict[str, Any] | None] = [self._tree]  # the tree node of each folder walked into
        hops = 0
        while pending:
            self._steps += 1
            if self._steps > MAX_LINK_STEPS:
                raise InvalidPackage(f"links too intricate to check (at {_show(self.display[name])})")
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(nodes) == 1:
                    raise InvalidPackage(
                        f"link {_show(self.display[name])} points outside the archive ({_show(target)})"
                    )
                nodes.pop()
                continue
            parent = nodes[-1]
            node = parent.get(part) if parent is not None else None
            followed = node.get(self._TARGET) if node is not None else None
            if followed is None:
                nodes.append(node)
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise InvalidPackage(f"link {_show(self.display[name])} loops ({_show(target)})")
            pending.extend(reversed(followed.split("/")))


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


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses oversized extended headers before tarfile reads them into memory.

    tarfile loads a pax or GNU long-name header whole; a compressed archive
    could otherwise make it allocate gigabytes for a few kilobytes sent.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _GuardedTarInfo:
        """tarfile's reading of a header, refused where GNU tar names it otherwise.

        tarfile puts the prefix field (bytes 345 to 500) before the name in
        any header but a GNU one, GNU tar only in a POSIX ustar header: in
        an old GNU or a V7 header it is times or nothing. The two would
        unpack the member at different paths.
        """
        member = super().frombuf(buf, encoding, errors)
        prefix = buf[345:500].split(b"\0", 1)[0]
        if prefix and buf[257:263] != b"ustar\0" and member.type not in tarfile.GNU_TYPES:
            name = tarfile.nts(buf[:100], encoding, errors)  # type: ignore[attr-defined]
            raise InvalidPackage(f"member {_show(name)} has a prefix field outside a ustar header ({_show(prefix)})")
        return member

    def _block(self, count: int) -> int:
        """``count`` bytes rounded up to whole blocks: how far tarfile moves
        past a header's data (its own, or, for an extended header, the size
        it gives the member after it).

        A tar number field can hold a negative number (base-256), which
        tarfile takes as it is: the next header would then lie before this
        one, on it again (Python's own reading loops there: CVE-2025-8194),
        or less than a block on. GNU tar refuses such a size.

        :raises InvalidPackage: ``count`` is negative.
        """
        if count < 0:
            raise InvalidPackage(f"header {_show(self.name)} gives a negative size ({count})")
        return super()._block(count)  # type: ignore[misc, no-any-return]

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADER_TYPES:
            if self.size > MAX_EXTENDED_HEADER:
                raise InvalidPackage(
                    f"extended header of {self.size} bytes (limit {MAX_EXTENDED_HEADER}) at {_show(self.name)}"
                )
        else:
            _pax_count(tar).members += 1
        return super()._proc_member(tar)  # type: ignore[misc, no-any-return]

    def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        """tarfile's reading of a pax header, its records found in one pass.

        Python's own (before 3.11.10 and 3.12.6: CVE-2024-6232) finds them
        with regular expressions that backtrack over a run of digits or
        rescan the rest of the header for each record: a header of a few
        hundred KiB (a few hundred bytes compressed) held an inspection
        thread for minutes, or took gigabytes. Here each byte is looked at a
        bounded number of times; a record that is not ``"<length>
        <keyword>=<value>\\n"`` exactly ``length`` bytes long is refused, as
        is anything but zeros after the header's size (tarfile reads records
        there, GNU tar does not) and global headers over the limits.
        What the header then does (encodings, sparse maps, the fields it
        overrides) is tarfile's, unchanged.
        """
        assert tar.fileobj is not None
        buf = tar.fileobj.read(self._block(self.size))
        _check_padding(buf, self.size, self.name)
        records = _pax_records(buf[:self.size], self.name)
        _pax_count(tar).add_records(len(records), self.name)
        # a global header's fields hold for every member after it: tarfile's own dict
        kept = cast(dict[str, str], tar.pax_headers)
        pax_headers = kept if self.type == tarfile.XGLTYPE else dict(kept)
        charset = next((value for keyword, value in records if keyword == b"hdrcharset"), None)
        if charset is not None:
            pax_headers["hdrcharset"] = charset.decode("utf-8")
        # only "BINARY" changes anything: the name fields are then raw bytes
        encoding = tar.encoding if pax_headers.get("hdrcharset") == "BINARY" else "utf-8"
        decode = self._decode_pax_field  # type: ignore[attr-defined]
        for keyword, value in records:
            key = decode(keyword, "utf-8", "utf-8", tar.errors)
            if key in tarfile.PAX_NAME_FIELDS:
                pax_headers[key] = decode(value, encoding, tar.encoding, tar.errors)
            else:
                pax_headers[key] = decode(value, "utf-8", "utf-8", tar.errors)
        if self.type == tarfile.XGLTYPE:
            _check_global_pax_headers(pax_headers, self.name)
        try:
            following = self.fromtarfile(tar)
        except tarfile.HeaderError as exc:
            raise tarfile.SubsequentHeaderError(str(exc)) from None  # type: ignore[attr-defined]
        if "GNU.sparse.map" in pax_headers:  # GNU sparse 0.1
            self._proc_gnusparse_01(following, pax_headers)  # type: ignore[attr-defined]
        elif "GNU.sparse.size" in pax_headers:  # GNU sparse 0.0: the pairs are records of their own
            pairs = [(keyword, value) for keyword, value in records
                     if keyword in (b"GNU.sparse.offset", b"GNU.sparse.numbytes")]
            # tarfile leaves out a value that is not digits (a negative one),
            # which pairs the others up wrongly; GNU tar refuses it
            for _, value in pairs:
                if not value.isdigit():
                    raise InvalidPackage(f"member {_show(following.name)} has a negative or malformed number "
                                         f"in its sparse map ({_show(value.decode('utf-8', 'replace'))})")
            offsets = [int(value) for keyword, value in pairs if keyword == b"GNU.sparse.offset"]
            sizes = [int(value) for keyword, value in pairs if keyword == b"GNU.sparse.numbytes"]
            following.sparse = list(zip(offsets, sizes, strict=False))  # type: ignore[assignment]
        elif pax_headers.get("GNU.sparse.major") == "1" and pax_headers.get("GNU.sparse.minor") == "0":
            self._proc_gnusparse_10(following, pax_headers, tar)
        # GNU tar skips a member without a sparse map by its real size,
        # tarfile by its stored size: with a sparse size and no map, the two
        # would find the next header at different places.
        if ("GNU.sparse.size" in pax_headers or "GNU.sparse.realsize" in pax_headers) and not following.sparse:
            raise InvalidPackage(f"member {_show(following.name)} has a GNU sparse size but no sparse map")
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            following._apply_pax_info(pax_headers, tar.encoding, tar.errors)  # type: ignore[attr-defined]
            following.offset = self.offset
            if "size" in pax_headers:  # the data, and so the next header, moved
                offset = following.offset_data
                if following.isreg() or following.type not in tarfile.SUPPORTED_TYPES:
                    offset += following._block(following.size)
                tar.offset = offset
        return following

    def _proc_gnulong(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        """tarfile's reading of a GNU long name or link target, its padding checked.

        tarfile takes the name up to the first zero byte of the header's
        blocks, GNU tar within the header's size: only zeros may follow it.
        """
        assert tar.fileobj is not None
        buf = tar.fileobj.read(self._block(self.size))
        _check_padding(buf, self.size, self.name)
        try:
            following = self.fromtarfile(tar)
        except tarfile.HeaderError as exc:
            raise tarfile.SubsequentHeaderError(str(exc)) from None  # type: ignore[attr-defined]
        following.offset = self.offset
        text = tarfile.nts(buf, tar.encoding, tar.errors)  # type: ignore[attr-defined]
        if self.type == tarfile.GNUTYPE_LONGNAME:
            following.name = text
        else:
            following.linkname = text
        if following.isdir():  # as tarfile's frombuf does
            following.name = following.name.removesuffix("/")
        return following

    # A sparse member's map is read by tarfile until it is complete, however
    # long (old GNU: header blocks while each says another follows; GNU 1.0:
    # as many numbers as its first line says), and it indexes past the end of
    # a block it could not read. Both read through a _SparseMapReader.

    def _proc_sparse(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        with _sparse_map_reading(tar, self.name):
            return super()._proc_sparse(tar)  # type: ignore[misc, no-any-return]

    def _proc_gnusparse_10(self, member: tarfile.TarInfo, pax_headers: dict[str, str],
                           tar: tarfile.TarFile) -> None:
        with _sparse_map_reading(tar, pax_headers.get("GNU.sparse.name", member.name)):
            super()._proc_gnusparse_10(member, pax_headers, tar)  # type: ignore[misc]


#: Most keywords the global pax headers of an archive may hold together, and
#: most characters (keywords and values): tarfile copies them into every
#: member that follows and parses the number fields again for each. ``git
#: archive`` writes one keyword (``comment``, the commit id).
MAX_GLOBAL_PAX_KEYWORDS = 64
MAX_GLOBAL_PAX_TEXT = 8 * 1024


def _check_global_pax_headers(pax_headers: dict[str, str], name: str) -> None:
    """Refuse global headers costlier than the limits above to apply to each
    member, or that set a member's size: GNU tar then skips every member's
    data by that size, tarfile by each header's own, so GNU tar would unpack
    headers hidden in data that inspection read as data.

    :raises InvalidPackage: naming the global header ``name``.
    """
    for keyword in pax_headers:
        if keyword == "size" or keyword.startswith("GNU.sparse."):
            raise InvalidPackage(f"global pax header {_show(name)} sets {_show(keyword)} for every member")
    text = sum(len(keyword) + len(value) for keyword, value in pax_headers.items())
    if len(pax_headers) > MAX_GLOBAL_PAX_KEYWORDS or text > MAX_GLOBAL_PAX_TEXT:
        raise InvalidPackage(
            f"global pax headers hold {len(pax_headers)} keywords, {text} characters (limits "
            f"{MAX_GLOBAL_PAX_KEYWORDS}, {MAX_GLOBAL_PAX_TEXT}) at {_show(name)}"
        )


def _check_padding(blocks: bytes, size: int, name: str) -> None:
    """Refuse an extended header whose ``blocks`` hold more than zeros past
    its ``size``: Python's tarfile reads pax records and long names on into
    that padding, GNU tar does not, so they would extract different names.

    :raises InvalidPackage: naming the header ``name``.
    """
    if not _zeros(blocks[size:]):
        raise InvalidPackage(f"extended header {_show(name)} holds data past its size")


#: Pax records an archive may hold per member it holds, besides
#: :data:`PAX_RECORDS_SLACK`: each costs tarfile about 1.5 us to apply, and
#: 64 MiB of 6-byte records (before the compression ratio is checked) took
#: 15-25 s of an inspection thread for a 100 KB upload. A member usually has
#: at most a handful (GNU tar's posix format: times, long names, xattrs).
PAX_RECORDS_PER_MEMBER = 16
PAX_RECORDS_SLACK = 4096


@dataclass
class _PaxCount:
    """The pax records and members of one archive read so far."""

    records: int = 0
    members: int = 0

    def add_records(self, count: int, name: str) -> None:
        """:raises InvalidPackage: past the limit for the members read so far (``name``: the header's)."""
        self.records += count
        if self.records > PAX_RECORDS_PER_MEMBER * self.members + PAX_RECORDS_SLACK:
            raise InvalidPackage(
                f"{self.records} pax header records for {self.members} members (limit"
                f" {PAX_RECORDS_PER_MEMBER} per member and {PAX_RECORDS_SLACK} more) at {_show(name)}"
            )


#: The counts of each archive being read; entries go with their TarFile.
_PAX_COUNTS: weakref.WeakKeyDictionary[tarfile.TarFile, _PaxCount] = weakref.WeakKeyDictionary()


def _pax_count(tar: tarfile.TarFile) -> _PaxCount:
    count = _PAX_COUNTS.get(tar)
    if count is None:
        count = _PAX_COUNTS[tar] = _PaxCount()
    return count


#: The most digits a pax record's length may have (20 hold any 64-bit size).
_PAX_LENGTH_DIGITS = 20


def _pax_records(data: bytes, name: str) -> list[tuple[bytes, bytes]]:
    """The ``(keyword, value)`` records of a pax header's ``data``, in order.

    Each record is ``"<length> <keyword>=<value>\\n"``, ``length`` counting
    the whole record; the records end at the data's end or at a zero byte
    (padding). One pass: each search stays within its record.

    :raises InvalidPackage: a record is malformed (``name`` is the header's).
    """
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + _PAX_LENGTH_DIGITS + 1)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        end = pos + length
        equals = data.find(b"=", space + 1, end - 1) if length else -1
        if equals <= space + 1 or end > len(data) or data[end - 1] != 0x0A:  # "\n"
            raise InvalidPackage(f"malformed pax header record at byte {pos} of the header of {_show(name)}")
        records.append((data[space + 1:equals], data[equals + 1:end - 1]))
        pos = end
    return records


class _SparseMapReader:
    """The tar stream while tarfile reads a sparse member's map: whole blocks
    only (else the archive is truncated), at most :data:`MAX_EXTENDED_HEADER`
    bytes of them, like the other extended headers."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.stream = stream
        self.name = name
        self.limit = stream.tell() + MAX_EXTENDED_HEADER

    def read(self, size: int) -> bytes:
        if self.stream.tell() + size > self.limit:
            raise InvalidPackage(f"sparse map of more than {MAX_EXTENDED_HEADER} bytes at {_show(self.name)}")
        data = self.stream.read(size)
        if len(data) < size:
            raise InvalidPackage(f"the archive is truncated (in the sparse map of {_show(self.name)})")
        return data

    def tell(self) -> int:
        return self.stream.tell()


@contextlib.contextmanager
def _sparse_map_reading(tar: tarfile.TarFile, name: str) -> Iterator[None]:
    """``tar`` reads through a :class:`_SparseMapReader` for the duration."""
    stream = tar.fileobj
    assert stream is not None
    tar.fileobj = cast(IO[bytes], _SparseMapReader(cast(IO[bytes], stream), name))
    try:
        yield
    finally:
        tar.fileobj = stream


def _inspect_tar(f: IO[bytes], fmt: str, budget: _Budget) -> ArchiveInfo:
    picker = _AppDescPicker()
    links = _LinkTree()
    stream = TarStream(decompressing(f, fmt), budget.add_decompressed)
    # "r:", not the stream mode "r|": tarfile then skips a member's data with
    # one seek, which TarStream serves in large pieces (see registry.tar_stream)
    with tarfile.open(fileobj=stream, mode="r:", tarinfo=_GuardedTarInfo) as tar:  # type: ignore[call-overload]
        while (member := tar.next()) is not None:
            # tarfile keeps every member it reads (with its pax headers, up to
            # MAX_EXTENDED_HEADER each) for random access this never needs:
            # let each go once checked, so memory does not grow with the archive.
            tar.members.clear()
            _check_numbers(member)
            name = _clean_member_name(member.name)
            budget.add_member(member.name)
            if member.ischr() or member.isblk() or member.isfifo():
                raise InvalidPackage(f"device or fifo member {_show(member.name)}")
            if (member.issym() or member.islnk()) and member.size:
                # GNU tar skips that much data after a link, tarfile none: the
                # two would read the next header at different places
                raise InvalidPackage(f"link {_show(member.name)} has a size ({member.size} bytes)")
            if member.issym():
                links.add_link(name, member.name, member.linkname, symbolic=True)
            elif member.islnk():
                links.add_link(name, member.name, member.linkname, symbolic=False)
            elif member.isfile():
                links.add_member(name, member.name)
                budget.add_bytes(member.size, member.name, declared=True)
                if picker.wants(name, member.size):
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    picker.take(name, extracted.read())
            elif member.isdir():
                links.add_member(name, member.name, is_dir=True)
            else:
                raise InvalidPackage(f"member {_show(member.name)} has an unsupported type {_show(member.type)}")
        end = tar.offset
    # tarfile stops quietly at the first block it cannot read as a header, as
    # well as at the end-of-archive marker; only the marker is a proper end.
    # After it, only zero padding may follow: a second archive or garbage
    # there is something another tool could unpack without it being checked.
    rest = stream.since(end)
    if rest is None or len(rest) < BLOCK_SIZE:
        raise InvalidPackage(f"the archive is truncated (no end-of-archive marker){budget.where()}")
    if not _zeros(rest[:BLOCK_SIZE]):
        raise InvalidPackage(f"unreadable header{budget.where()}")
    if not _zeros(rest[BLOCK_SIZE:]):
        raise InvalidPackage(f"data after the end of the archive{budget.where()}")
    while chunk := stream.read(READ_SIZE):
        if not _zeros(chunk):
            raise InvalidPackage(f"data after the end of the archive{budget.where()}")
    links.check()
    return ArchiveInfo(fmt, budget.members, budget.unpacked, picker.content, picker.name, budget.first_names)


def _check_numbers(member: tarfile.TarInfo) -> None:
    """Refuse a member whose size or sparse map holds a negative number.

    Those that move the next header are refused as tarfile reads them (see
    ``_GuardedTarInfo._block``); these do not, but GNU tar refuses them as
    well ("out of range") and goes on looking for a valid header, so it would
    not unpack the archive inspection checked: a folder's or a link's size, a
    sparse member's real size (old GNU header or pax record), its map.
    """
    if member.size < 0:
        raise InvalidPackage(f"member {_show(member.name)} has a negative size ({member.size})")
    sparse = cast(list[tuple[int, int]] | None, member.sparse)
    if sparse and any(offset < 0 or length < 0 for offset, length in sparse):
        raise InvalidPackage(f"member {_show(member.name)} has a negative number in its sparse map")


def _zeros(data: bytes) -> bool:
    """Whether every byte of ``data`` is zero (a tar's padding).

    One comparison with zeroed memory: ``strip(b"\\0")`` looks each byte up
    in its argument, which cost a small upload's inspection more than
    reading the archive (a tar's end is padded to 10 KiB).
    """
    return data == bytes(len(data))


def _inspect_zip(f: IO[bytes], budget: _Budget) -> ArchiveInfo:
    picker = _AppDescPicker()
    links = _LinkTree()
    with zipfile.ZipFile(f) as archive:
        infos = archive.infolist()
        if len(infos) > budget.limits.max_members:
            raise InvalidPackage(
                f"more than {budget.limits.max_members} members (at {_show(infos[budget.limits.max_members].filename)})"
            )
        declared = 0
        for info in infos:
            declared += info.file_size
            if declared > budget.limits.max_unpacked_size:
                raise InvalidPackage(
                    f"unpacked size exceeds {budget.limits.max_unpacked_size} bytes (at {_show(info.filename)})"
                )
            if budget.ratio_exceeded(declared):
                raise InvalidPackage(
                    f"compression ratio exceeds {budget.limits.max_compression_ratio} (at {_show(info.filename)})"
                )
        check_zip_layout(f, archive)  # before any member is read: what a stream reader would see
        for info in infos:
            name = _clean_member_name(info.filename)
            budget.add_member(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise InvalidPackage(f"device or fifo member {_show(info.filename)}")
            if info.is_dir():
                links.add_member(name, info.filename, is_dir=True)
                continue
            is_link = stat.S_ISLNK(mode)
            if is_link and info.file_size > 4096:
                raise InvalidPackage(f"link {_show(info.filename)} has an oversized target")
            keep = is_link or picker.wants(name, info.file_size)
            content = bytearray()
            try:
                with archive.open(info) as member:
                    while chunk := member.read(READ_SIZE):
                        budget.add_bytes(len(chunk), info.filename)
                        if keep:
                            content += chunk
            except InvalidPackage:
                raise
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError,
                    NotImplementedError, RuntimeError) as exc:
                raise InvalidPackage(f"member {_show(info.filename)} is unreadable ({_reason(exc)})") from exc
            if is_link:
                links.add_link(name, info.filename, content.decode("utf-8", "replace"), symbolic=True)
            else:
                links.add_member(name, info.filename)
                if keep:
                    picker.take(name, bytes(content))
    links.check()
    return ArchiveInfo("zip", budget.members, budget.unpacked, picker.content, picker.name, budget.first_names)


def version_from_app_desc(content: bytes) -> str | None:
    """The app version an ``app_desc.yaml`` declares, as written, or None.

    Spec 3 (``specVersion: 3``) keeps it in ``appVersion``, spec 2 in
    ``app_version``. Scalars are read as strings so ``1.10`` stays ``1.10``.

    :raises InvalidPackage: the file is not a YAML mapping.
    """
    import yaml  # here, not at start-up: about 10 ms, paid by the first package that has the file

    # Every scalar as a string (so ``1.10`` stays ``1.10``); libyaml's loader
    # when PyYAML has it, about ten times faster on a large file, else the pure one.
    loader: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    try:
        data = yaml.load(content, Loader=loader)
    except yaml.YAMLError as exc:
        raise InvalidPackage(f"app_desc.yaml is not valid YAML ({_reason(exc)})") from exc
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidPackage("app_desc.yaml is not a mapping")
    # Only scalars are looked at: an alias repeats a node without copying it, so
    # a few hundred bytes can name a billion strings, and turning such a value
    # into text (``str()``) would build all of them.
    spec = data.get("specVersion")
    spec3 = isinstance(spec, str) and spec.strip() == "3"
    keys = ("appVersion", "app_version") if spec3 else ("app_version", "appVersion")
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None
