"""Archive inspection against hostile archives, built in memory.

Every unsafe archive is refused with ``INVALID_PACKAGE`` and the offending
member named in the detail; nothing is ever extracted (the tests check that
no file appears beside the archive and that the working folder is untouched).
A few cases go through a live registry as well.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import itertools
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.archive import ArchiveLimits, inspect_archive, inspect_bytes
from registry.errors import InvalidPackage
from tests.helpers import (
    Api,
    RegistryProcess,
    app_desc,
    blob_files,
    run_python,
    staged_files,
)

MiB = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
LIMITS = ArchiveLimits(max_members=1000, max_unpacked_size=512 * MiB, max_compression_ratio=100)


# -- building archives -------------------------------------------------------------

def assert_refused(response: httpx.Response, reason: str) -> None:
    """``response`` is the contract's INVALID_PACKAGE, its detail naming ``reason``."""
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_PACKAGE"
    assert reason in response.json()["detail"]


def assert_nothing_kept(api: Api, code: str, registry: RegistryProcess) -> None:
    """No record in ``code``'s module, no blob under it, no staging file left."""
    assert api.list(code, include_deleted="true").json()["count"] == 0
    root = registry.config.parent / "packages"
    assert list(blob_files(root / code)) == []
    assert staged_files(root / ".staging") == []


def tar_bytes(add: Callable[[tarfile.TarFile], None], compression: str = "gz",
              fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buffer, mode=mode, format=fmt) as tar:  # type: ignore[call-overload]
        add(tar)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mtime = 1_700_000_000
    tar.addfile(info)


def tar_of(*members: tuple[str, bytes, str], compression: str = "gz") -> bytes:
    """Members as (name, tar type, link target); regular files hold b"x"."""
    def add(tar: tarfile.TarFile) -> None:
        for name, kind, link in members:
            if kind == tarfile.REGTYPE:
                add_file(tar, name)
            else:
                add_special(tar, name, kind, link)
    return tar_bytes(add, compression)


def zip_of(*members: tuple[str, bytes], mode: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def zip_symlink(name: str, target: str, extra: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in extra:
            archive.writestr(member, data)
        info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, target)
    return buffer.getvalue()


@pytest.fixture(params=["staged", "in-memory"])
def inspect(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Inspect bytes as a staged file, or held in memory as a small upload is
    (``inspect_bytes``: the same verdicts); afterwards the folder holds at most that file."""
    path = tmp_path / "staged.part"

    def run(data: bytes, limits: ArchiveLimits = LIMITS) -> object:
        if request.param == "in-memory":
            return inspect_bytes(data, limits)
        path.write_bytes(data)
        return inspect_archive(path, limits)

    yield run
    assert sorted(p.name for p in tmp_path.iterdir()) == (["staged.part"] if path.exists() else [])


def refused(inspect: Callable[..., object], data: bytes, *fragments: str,
            limits: ArchiveLimits = LIMITS) -> str:
    with pytest.raises(InvalidPackage) as caught:
        inspect(data, limits)
    detail = caught.value.detail("en")
    for fragment in fragments:
        assert fragment in detail, detail
    assert caught.value.code == "INVALID_PACKAGE" and caught.value.status == 400
    return detail


# -- sanity: good archives pass ----------------------------------------------------

@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_good_tar_accepted(inspect: Callable[..., object], compression: str) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_file(tar, "app/src/main.py", b"print(1)\n")
        add_file(tar, "app/app_desc.yaml", app_desc("1.2.3"))
        add_special(tar, "app/docs", tarfile.DIRTYPE)
        add_special(tar, "app/link", tarfile.SYMTYPE, "src/main.py")
        add_special(tar, "app/up", tarfile.SYMTYPE, "../app/src")
        add_special(tar, "app/hard", tarfile.LNKTYPE, "app/src/main.py")
    info = inspect(tar_bytes(add, compression))
    assert info.members == 6  # type: ignore[attr-defined]
    assert info.app_desc == app_desc("1.2.3")  # type: ignore[attr-defined]


def test_good_zip_accepted(inspect: Callable[..., object]) -> None:
    info = inspect(zip_of(("a/b.txt", b"hello"), ("a/app_desc.yaml", app_desc("2.0"))))
    assert info.format == "zip"  # type: ignore[attr-defined]
    assert info.app_desc == app_desc("2.0")  # type: ignore[attr-defined]


def test_zip_symlink_inside_accepted(inspect: Callable[..., object]) -> None:
    inspect(zip_symlink("dir/link", "../file.txt", extra=(("file.txt", b"x"),)))


# -- paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "//etc/passwd", "C:/Windows/evil.dll", "c:evil"])
def test_absolute_paths(inspect: Callable[..., object], name: str) -> None:
    refused(inspect, tar_of(("ok.txt", tarfile.REGTYPE, ""), (name, tarfile.REGTYPE, "")), "absolute", repr(name))


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "a/b/../../../evil", "./../evil", "a/.."])
def test_dot_dot_paths_tar(inspect: Callable[..., object], name: str) -> None:
    refused(inspect, tar_of((name, tarfile.REGTYPE, "")), "'..'", repr(name))


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs/evil"])
def test_dot_dot_and_absolute_paths_zip(inspect: Callable[..., object], name: str) -> None:
    refused(inspect, zip_of(("ok.txt", b"x"), (name, b"evil")), repr(name))


@pytest.mark.parametrize("name", ["..\\evil.txt", "a\\..\\..\\evil.txt", "\\abs\\evil.txt", "C:\\evil.txt"])
def test_backslash_traversal_in_zip(inspect: Callable[..., object], name: str) -> None:
    # ZipInfo turns "\" into "/" only on Windows; build the raw name by hand.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("placeholder", date_time=(2024, 1, 1, 0, 0, 0))
        info.filename = info.orig_filename = name
        archive.writestr(info, b"evil")
    refused(inspect, buffer.getvalue(), name.replace("\\", "\\\\"))


def test_backslash_traversal_in_tar(inspect: Callable[..., object]) -> None:
    refused(inspect, tar_of(("..\\..\\evil", tarfile.REGTYPE, "")), "'..'")


def test_nul_in_pax_path(inspect: Callable[..., object]) -> None:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("safe.txt")
        info.pax_headers = {"path": "safe.txt\x00/../../evil"}
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    refused(inspect, tar_bytes(add), "invalid name")


def test_pax_path_overrides_checked(inspect: Callable[..., object]) -> None:
    """A pax header can rename the member that follows: the real name is checked."""
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("innocent.txt")
        info.pax_headers = {"path": "../../etc/evil"}
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    refused(inspect, tar_bytes(add), "'..'", "../../etc/evil")


# -- links ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("link", "/etc/passwd"),
        ("link", "../outside"),
        ("a/b/link", "../../../outside"),
        ("link", "a/../../outside"),
        ("link", "C:\\Windows"),
        ("link", "..\\outside"),
        ("link", ""),
    ],
)
def test_symlink_escaping(inspect: Callable[..., object], name: str, target: str) -> None:
    refused(inspect, tar_of((name, tarfile.SYMTYPE, target)), "link", repr(name))


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside", "a/../../outside"])
def test_hardlink_escaping(inspect: Callable[..., object], target: str) -> None:
    refused(inspect, tar_of(("hard", tarfile.LNKTYPE, target)), "link", "'hard'")


def test_symlink_chain_escaping_through_another_link(inspect: Callable[..., object]) -> None:
    """``x -> .`` then ``x/y -> ..``: lexically ``x/..`` is inside, on disk it is the parent."""
    data = tar_of(("x", tarfile.SYMTYPE, "."), ("x/y", tarfile.SYMTYPE, ".."))
    refused(inspect, data, "'x/y'")


def test_symlink_chain_defined_in_reverse_order(inspect: Callable[..., object]) -> None:
    """The link that makes the other escape comes later in the archive."""
    data = tar_of(("x/y", tarfile.SYMTYPE, ".."), ("x", tarfile.SYMTYPE, "."))
    refused(inspect, data, "'x/y'")


def test_link_chain_through_real_folders_escaping(inspect: Callable[..., object]) -> None:
    """Each link alone stays inside, the chain does not: ``up -> a/b/..``
    (inside) and ``a/b -> ../..`` (from ``a``: the root's parent)."""
    data = tar_of(("a", tarfile.DIRTYPE, ""), ("a/b", tarfile.SYMTYPE, "../.."), ("up", tarfile.SYMTYPE, "a/b/x"))
    refused(inspect, data, "points outside")
    data = tar_of(("a", tarfile.DIRTYPE, ""), ("a/self", tarfile.SYMTYPE, "."),
                  ("up", tarfile.SYMTYPE, "a/self/self/self/../../.."))
    refused(inspect, data, "link 'up' points outside")


def test_file_stored_under_a_link(inspect: Callable[..., object]) -> None:
    """tar never archives a path through a link; such an entry is written
    wherever the link leads."""
    data = tar_of(("inside", tarfile.DIRTYPE, ""), ("x", tarfile.SYMTYPE, "inside"), ("x/f", tarfile.REGTYPE, ""))
    refused(inspect, data, "'x/f'", "under the link 'x'")


def test_long_link_target(inspect: Callable[..., object]) -> None:
    data = tar_of(("l", tarfile.SYMTYPE, "a/" * 3000))
    refused(inspect, data, "longer than")


@pytest.mark.parametrize("kind", ["pax", "gnu", "zip"])
def test_member_name_longer_than_a_path_can_be(inspect: Callable[..., object], kind: str) -> None:
    """A member name beyond PATH_MAX (4096) is refused, like a link target:
    no system could unpack it, and inspection keeps every name meanwhile."""
    name = "d/" * 2048 + "f"
    if kind == "zip":
        data = zip_of((name, b"x"))
    else:
        data = tar_bytes(lambda tar: add_file(tar, name), fmt=tarfile.PAX_FORMAT if kind == "pax"
                         else tarfile.GNU_FORMAT)
    refused(inspect, data, "member name longer than 4096")
    inspect(tar_of(("d/" * 2047 + "f", tarfile.REGTYPE, "")))  # 4095 characters: read


def test_members_are_not_kept_while_a_tar_is_read(tmp_path: Path) -> None:
    """Inspecting a tar holds no more than a member at a time: 48 members with
    a 512 KiB pax comment each (24 MiB of headers) peak far below that
    (tarfile on its own keeps every member it has read, headers and all)."""
    def add(tar: tarfile.TarFile) -> None:
        for i in range(48):
            info = tarfile.TarInfo(f"f{i}")
            info.pax_headers = {"comment": "c" * (512 * 1024)}
            tar.addfile(info, io.BytesIO(b""))
    path = tmp_path / "commented.tar"
    path.write_bytes(tar_bytes(add, compression=""))
    tracemalloc.start()
    try:
        info = inspect_archive(path, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.members == 48
    assert peak < 8 * MiB, f"inspection peaked at {peak / MiB:.1f} MiB"


def test_many_links_are_checked_quickly(inspect: Callable[..., object]) -> None:
    """Each link resolving through a chain of others: bounded work, accepted."""
    members = [("d0", tarfile.DIRTYPE, "")] + [(f"l{i}", tarfile.SYMTYPE, f"l{i - 1}" if i else "d0")
                                                for i in range(30)]
    inspect(tar_of(*members))


def test_link_through_a_deeper_link_stays_inside(inspect: Callable[..., object]) -> None:
    """Links into folders, and back up as far as the archive root, are fine."""
    inspect(tar_of(("a/b/c/f", tarfile.REGTYPE, ""), ("deep", tarfile.SYMTYPE, "a/b/c"),
                   ("back", tarfile.SYMTYPE, "deep/../../.."), ("file", tarfile.SYMTYPE, "deep/f")))


def test_hardlink_through_a_symlinked_folder(inspect: Callable[..., object]) -> None:
    data = tar_of(("x", tarfile.SYMTYPE, "."), ("h", tarfile.LNKTYPE, "x/../etc/passwd"))
    refused(inspect, data, "link 'h' points outside")


def test_symlink_loop(inspect: Callable[..., object]) -> None:
    data = tar_of(("a", tarfile.SYMTYPE, "b"), ("b", tarfile.SYMTYPE, "a"))
    refused(inspect, data, "loops")


def test_file_written_over_a_link(inspect: Callable[..., object]) -> None:
    """A link, then a file of the same name: some tools write through the link."""
    data = tar_of(("dir", tarfile.DIRTYPE, ""), ("f", tarfile.SYMTYPE, "dir"), ("f", tarfile.REGTYPE, ""))
    refused(inspect, data, "'f'", "twice")


def test_zip_symlink_escaping(inspect: Callable[..., object]) -> None:
    refused(inspect, zip_symlink("evil", "../../../etc/passwd"), "link 'evil'")
    refused(inspect, zip_symlink("evil", "/etc/passwd"), "link 'evil'")


# -- special members -------------------------------------------------------------------

@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_and_fifo_members(inspect: Callable[..., object], kind: bytes) -> None:
    refused(inspect, tar_of(("ok.txt", tarfile.REGTYPE, ""), ("dev/thing", kind, "")), "device or fifo", "'dev/thing'")


@pytest.mark.parametrize("mode", [stat.S_IFCHR | 0o666, stat.S_IFBLK | 0o660, stat.S_IFIFO | 0o644,
                                  stat.S_IFSOCK | 0o644])
def test_zip_device_fifo_socket_members(inspect: Callable[..., object], mode: int) -> None:
    refused(inspect, zip_of(("dev/thing", b""), mode=mode), "'dev/thing'")


def test_unknown_tar_member_type(inspect: Callable[..., object]) -> None:
    refused(inspect, tar_of(("volume", b"V", "")), "unsupported type", "'volume'")


# -- limits and bombs ----------------------------------------------------------------------

def test_more_than_max_members_tar(inspect: Callable[..., object]) -> None:
    limits = ArchiveLimits(max_members=10, max_unpacked_size=MiB, max_compression_ratio=100)
    data = tar_of(*[(f"f{i}", tarfile.REGTYPE, "") for i in range(11)])
    refused(inspect, data, "more than 10 members", "'f10'", limits=limits)
    inspect(tar_of(*[(f"f{i}", tarfile.REGTYPE, "") for i in range(10)]), limits)


def test_more_than_max_members_zip(inspect: Callable[..., object]) -> None:
    limits = ArchiveLimits(max_members=10, max_unpacked_size=MiB, max_compression_ratio=100)
    refused(inspect, zip_of(*[(f"f{i}", b"x") for i in range(11)]), "more than 10 members", "'f10'", limits=limits)


def test_unpacked_total_above_limit_tar(inspect: Callable[..., object]) -> None:
    limits = ArchiveLimits(max_members=100, max_unpacked_size=10_000, max_compression_ratio=100)
    data = tar_bytes(lambda t: [add_file(t, f"part{i}", b"a" * 4000) for i in range(3)])
    refused(inspect, data, "unpacked size exceeds 10000", "'part2'", limits=limits)


def test_unpacked_total_above_limit_zip(inspect: Callable[..., object]) -> None:
    limits = ArchiveLimits(max_members=100, max_unpacked_size=10_000, max_compression_ratio=100)
    refused(inspect, zip_of(*[(f"part{i}", b"a" * 4000) for i in range(3)]), "'part2'", limits=limits)


BOMB_SIZE = 80 * MiB


@pytest.fixture(scope="module")
def zeros_tar() -> bytes:
    """An uncompressed tar holding one member of 80 MiB of zeros."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("bomb.bin")
        info.size = BOMB_SIZE
        tar.addfile(info, io.BytesIO(bytes(BOMB_SIZE)))
    return buffer.getvalue()


def test_gzip_bomb_by_ratio(inspect: Callable[..., object], zeros_tar: bytes) -> None:
    data = gzip.compress(zeros_tar, 1)
    assert len(data) * 100 < BOMB_SIZE
    refused(inspect, data, "compression ratio exceeds 100", "'bomb.bin'")


@pytest.mark.parametrize("compress", [bz2.compress, lambda d: lzma.compress(d, preset=0)], ids=["bz2", "xz"])
def test_other_compression_bombs(inspect: Callable[..., object], zeros_tar: bytes,
                                 compress: Callable[[bytes], bytes]) -> None:
    refused(inspect, compress(zeros_tar[: 66 * MiB]), "compression ratio exceeds 100")


def test_zip_bomb_by_ratio(inspect: Callable[..., object]) -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("bomb.bin", "w", force_zip64=True) as member,
    ):
        block = bytes(MiB)
        for _ in range(BOMB_SIZE // MiB):
            member.write(block)
    refused(inspect, buffer.getvalue(), "compression ratio exceeds 100", "'bomb.bin'")


def test_zip_bomb_with_lying_sizes(inspect: Callable[..., object]) -> None:
    """Declared sizes say "tiny", the data says 80 MiB: what is read is counted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.bin", bytes(BOMB_SIZE))
    data = bytearray(buffer.getvalue())
    # Patch the declared uncompressed size (local header and central directory) to 10.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset: at + offset + 4] = (10).to_bytes(4, "little")
    refused(inspect, bytes(data), "'bomb.bin'")


def test_zip_overlapping_members_bomb(inspect: Callable[..., object]) -> None:
    """Many central-directory entries sharing one compressed block (a "quine" style bomb)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a0", bytes(8 * MiB))
    data = buffer.getvalue()
    central = data.find(b"PK\x01\x02")
    end = data.find(b"PK\x05\x06")
    entry = data[central:end]
    copies = [entry[:46] + f"a{i}".encode()[:2] + entry[48:] for i in range(10)]
    count = len(copies).to_bytes(2, "little")
    eocd = bytearray(data[end:])
    eocd[8:10] = count
    eocd[10:12] = count
    eocd[12:16] = len(b"".join(copies)).to_bytes(4, "little")
    bomb = data[:central] + b"".join(copies) + bytes(eocd)
    refused(inspect, bomb, "compression ratio exceeds 100", limits=ArchiveLimits(1000, 512 * MiB, 100))


def test_bomb_hidden_after_the_end_of_the_tar(inspect: Callable[..., object], zeros_tar: bytes) -> None:
    """Zeros past the end-of-archive marker are no member, but still decompressed."""
    small = tar_of(("a.txt", tarfile.REGTYPE, ""), compression="")
    data = gzip.compress(small + bytes(70 * MiB), 1)
    refused(inspect, data, "compression ratio exceeds 100")


def test_pax_header_memory_bomb(inspect: Callable[..., object]) -> None:
    """A huge pax header: tarfile would load it whole; refused before that."""
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("a.txt")
        info.pax_headers = {"comment": "A" * (4 * MiB)}
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    refused(inspect, tar_bytes(add), "extended header")


def test_gnu_long_name_memory_bomb(inspect: Callable[..., object]) -> None:
    header = tarfile.TarInfo("././@LongLink")
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = 2 * MiB
    raw = header.tobuf(tarfile.GNU_FORMAT) + b"a" * (2 * MiB)
    raw += tar_of(("x", tarfile.REGTYPE, ""), compression="")
    refused(inspect, gzip.compress(raw, 1), "extended header")


def old_gnu_sparse(name: str, realsize: int, *, extended: bool) -> bytes:
    """The header of an old-GNU sparse member (type ``S``) holding no data: its map
    is in the header, continued in the blocks after it when ``extended``."""
    block = bytearray(512)
    block[0:len(name)] = name.encode()
    block[100:108] = b"0000644\0"
    block[124:136] = b"%011o\0" % 0
    block[156:157] = tarfile.GNUTYPE_SPARSE
    block[257:265] = tarfile.GNU_MAGIC
    block[482] = int(extended)
    block[483:495] = b"%011o\0" % realsize
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def sparse_extension(pieces: int, *, more: bool) -> bytes:
    """An old-GNU sparse map's continuation block: ``pieces`` (at most 21) map
    entries, and whether another block follows."""
    block = bytearray(512)
    for i in range(pieces):
        block[24 * i:24 * i + 24] = b"%011o\0%011o\0" % (2 * i, 1)
    block[504] = int(more)
    return bytes(block)


@pytest.mark.parametrize("rest", [b"", b"\1" * 100, sparse_extension(21, more=True)],
                         ids=["nothing", "part-block", "one-block-then-nothing"])
def test_old_gnu_sparse_map_cut_short(inspect: Callable[..., object], rest: bytes) -> None:
    """The archive ends inside a sparse member's map: tarfile indexes past the
    end of the block it could not read (IndexError, a 500 until refused here)."""
    raw = old_gnu_sparse("a.txt", 10, extended=True) + rest
    for data in (raw, gzip.compress(raw, 1)):
        refused(inspect, data, "sparse map", "'a.txt'")


def test_sparse_map_memory_bomb(inspect: Callable[..., object]) -> None:
    """A sparse member's map is read whole, however long (the old-GNU blocks,
    or the GNU 1.0 map in front of the data); each entry takes several times
    its bytes in memory: refused beyond the extended-header limit."""
    blocks = 2 * MiB // 512
    raw = (old_gnu_sparse("a.txt", 2 * blocks * 21, extended=True)
           + sparse_extension(21, more=True) * (blocks - 1) + sparse_extension(21, more=False))
    refused(inspect, gzip.compress(raw + bytes(1024), 1), "sparse map", "'a.txt'")

    pieces = 200_000  # about 2 MiB of map
    numbers = b"".join(b"%d\n1\n" % (2 * i) for i in range(pieces))
    mapped = b"%d\n" % pieces + numbers
    mapped += bytes(-len(mapped) % 512)

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("GNUSparseFile.0/b.txt")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "b.txt", "GNU.sparse.realsize": str(2 * pieces)}
        info.size = len(mapped) + 512 * 0 + pieces
        tar.addfile(info, io.BytesIO(mapped + b"x" * pieces))
    refused(inspect, tar_bytes(add), "sparse map", "'b.txt'")


def test_sparse_members_within_the_limit_are_read(inspect: Callable[..., object]) -> None:
    """A GNU 1.0 sparse app_desc.yaml: its data is found behind its map."""
    content = app_desc("5.1")
    mapped = b"1\n0\n%d\n" % len(content)
    mapped += bytes(-len(mapped) % 512)

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("GNUSparseFile.0/app_desc.yaml")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "app_desc.yaml", "GNU.sparse.realsize": str(len(content))}
        info.size = len(mapped) + len(content)
        tar.addfile(info, io.BytesIO(mapped + content))
        add_file(tar, "after.txt")
    info = inspect(tar_bytes(add))
    assert info.app_desc == content  # type: ignore[attr-defined]
    assert info.member_paths == ["app_desc.yaml", "after.txt"]  # type: ignore[attr-defined]


# -- pax headers: read in linear time (CVE-2024-6232) ---------------------------------------

def have_gnu_tar() -> bool:
    """Whether ``tar`` is GNU tar (the tests that show another tool's reading need it)."""
    return bool(shutil.which("tar")) and b"GNU tar" in subprocess.run(["tar", "--version"], check=False,
                                                                       capture_output=True).stdout


def gnu_tar_lists(tar: bytes) -> list[bytes] | None:
    """The member names GNU tar lists in ``tar``, or None where GNU tar is not
    installed: what another tool unpacks, to show a test's premise holds."""
    if not have_gnu_tar():
        return None
    return subprocess.run(["tar", "tf", "-"], input=tar, capture_output=True, check=True).stdout.split()


def pax_record(keyword: bytes, value: bytes) -> bytes:
    """One pax record, ``"<length> <keyword>=<value>\\n"``, its length counting its own digits."""
    body = b" " + keyword + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def with_pax_header(data: bytes, member_size_field: int = 1, member_data: bytes = b"a",
                    kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A plain tar: a pax header of ``kind`` holding ``data`` as it is, then the
    file ``src/a.txt`` (its ustar size field and its data given), then the end."""
    header = tarfile.TarInfo("./PaxHeaders/a.txt")
    header.type = kind
    header.size = len(data)
    member = tarfile.TarInfo("src/a.txt")
    member.size = member_size_field
    return (header.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512) + member.tobuf(tarfile.USTAR_FORMAT)
            + member_data + bytes(-len(member_data) % 512) + bytes(1024))


@pytest.mark.parametrize("data", [
    b"4 xx" * 1000 + b"=\n",  # no "=" within a record: Python's reading rescanned the rest for each
    b"0 a=b\n", b"99 a=b\n", b"6 a=bc", b"6 =bc\n", b"1" * 30 + b" a=b\n", b"x a=b\n",
    pax_record(b"path", b"src/a.txt") + b"junk",
], ids=["no-equals-in-record", "zero-length", "past-the-end", "no-newline", "empty-keyword",
        "length-too-long", "length-not-a-number", "junk-after-a-record"])
def test_malformed_pax_records_are_refused(inspect: Callable[..., object], data: bytes) -> None:
    refused(inspect, gzip.compress(with_pax_header(data)), "malformed pax header record", "PaxHeaders/a.txt")


def test_pax_records_past_the_budget_are_refused(inspect: Callable[..., object]) -> None:
    """Each pax record costs tarfile time to apply: past 16 per member read
    so far plus 4096, the archive is refused (a few MiB of 6-byte records,
    a few KB compressed, took seconds of an inspection thread)."""
    refused(inspect, gzip.compress(with_pax_header(pax_record(b"a", b"b") * 5000)),
            "5000 pax header records for 0 members", "PaxHeaders/a.txt")


def test_pax_records_within_the_budget_are_read(inspect: Callable[..., object]) -> None:
    """4000 records before the first member (the slack), then 300 members with
    16 extended attributes each: accepted, every member read."""
    def add(tar: tarfile.TarFile) -> None:
        first = tarfile.TarInfo("big/first.txt")
        first.pax_headers = {f"SCHILY.xattr.user.k{i}": "v" for i in range(4000)}
        tar.addfile(first, io.BytesIO(b""))
        for n in range(300):
            info = tarfile.TarInfo(f"src/f{n}.txt")
            info.size = 1
            info.pax_headers = {f"SCHILY.xattr.user.k{i}": "v" for i in range(16)}
            tar.addfile(info, io.BytesIO(b"x"))
    info = inspect(tar_bytes(add))
    assert info.members == 301  # type: ignore[attr-defined]


def _read_members(data: bytes, tarinfo: type[tarfile.TarInfo]) -> list[tuple[object, ...]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", tarinfo=tarinfo) as tar:  # type: ignore[call-overload]
        return [(m.name, m.size, m.type, m.linkname, m.mtime, m.uname, m.offset_data, m.pax_headers,
                 getattr(m, "sparse", None)) for m in tar]


def assert_read_as_tarfile_reads(data: bytes) -> None:
    """Inspection's reading of pax headers gives every member exactly as Python's does."""
    from registry.archive import _GuardedTarInfo
    assert _read_members(data, _GuardedTarInfo) == _read_members(data, tarfile.TarInfo)


_PAX_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=60)


@settings(max_examples=200, deadline=None, database=None)
@given(names=st.lists(_PAX_TEXT.filter(bool), min_size=1, max_size=4),
       extra=st.dictionaries(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="="),
                                     min_size=1, max_size=12).map(lambda k: "SCHILY.xattr.user." + k),
                             _PAX_TEXT, max_size=3),
       global_headers=st.dictionaries(st.sampled_from(["comment", "uname", "gname"]), _PAX_TEXT, max_size=2),
       binary=st.booleans())
def test_pax_headers_read_as_tarfile_reads_them(names: list[str], extra: dict[str, str],
                                                 global_headers: dict[str, str], binary: bool) -> None:
    """Names, links and extended attributes of any text, a global header, names
    that are not UTF-8 (``hdrcharset=BINARY``): every member's fields match."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_headers,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for n, name in enumerate(names):
            info = tarfile.TarInfo(name + ("\udcff" if binary and n == 0 else "") + "/x" * 60)
            info.size, info.mtime, info.pax_headers = 1, 1_700_000_000.25 * (n + 1), extra
            tar.addfile(info, io.BytesIO(b"z"))
            link = tarfile.TarInfo(f"link{n}")
            link.type, link.linkname = tarfile.SYMTYPE, name + "/target" * 30
            tar.addfile(link)
    assert_read_as_tarfile_reads(buffer.getvalue())


def test_pax_size_and_gnu_sparse_0_0_read_as_tarfile_reads_them() -> None:
    """The two header records that change how tarfile goes on: ``size`` (the
    data, so the next header, moves) and a GNU 0.0 sparse map (its pairs are
    records of their own)."""
    assert_read_as_tarfile_reads(with_pax_header(pax_record(b"size", b"700"), member_size_field=0,
                                                 member_data=b"s" * 700))
    sparse = b"".join(pax_record(k, v) for k, v in [
        (b"GNU.sparse.size", b"20"), (b"GNU.sparse.numblocks", b"2"), (b"GNU.sparse.offset", b"0"),
        (b"GNU.sparse.numbytes", b"1"), (b"GNU.sparse.offset", b"10"), (b"GNU.sparse.numbytes", b"1")])
    assert_read_as_tarfile_reads(with_pax_header(sparse, member_size_field=2, member_data=b"ab"))
    assert _read_members(with_pax_header(sparse, 2, b"ab"), tarfile.TarInfo)[0][-1] == [(0, 1), (10, 1)]
    assert_read_as_tarfile_reads(with_pax_header(pax_record(b"comment", b"global"), kind=tarfile.XGLTYPE))


def padded_header(kind: bytes, data: bytes, padding: bytes, name: str = "./PaxHeaders/a.txt") -> bytes:
    """An extended header of ``kind`` whose size covers ``data``; ``padding``
    fills the rest of its last block (zeros after it)."""
    header = tarfile.TarInfo(name)
    header.type, header.size = kind, len(data)
    body = data + padding
    return header.tobuf(tarfile.USTAR_FORMAT) + body + bytes(-len(body) % BLOCK)


def plain_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    if kind != tarfile.REGTYPE:
        return member.tobuf(tarfile.USTAR_FORMAT)
    member.size = 1
    return member.tobuf(tarfile.USTAR_FORMAT) + b"a" + bytes(BLOCK - 1)


@pytest.mark.parametrize(("tar", "python_reads"), [
    # tarfile reads pax records on into the padding, tar reads only the header's size
    (padded_header(tarfile.XHDTYPE, pax_record(b"comment", b"c"), pax_record(b"path", b"../../evil"))
     + plain_member("src/a.txt"), ("../../evil", "")),
    (padded_header(tarfile.XHDTYPE, pax_record(b"linkpath", b"../../.."), pax_record(b"linkpath", b"a.txt"))
     + plain_member("src/l", tarfile.SYMTYPE, "a.txt"), ("src/l", "a.txt")),
    # and a GNU long name up to a zero byte, wherever that is
    (padded_header(tarfile.GNUTYPE_LONGLINK, b"../..", b"x\0", "././@LongLink")
     + plain_member("src/l", tarfile.SYMTYPE, "a"), ("src/l", "../..x")),
], ids=["pax-record-in-padding", "pax-record-in-padding-overrides", "long-link-into-padding"])
def test_extended_header_padding_must_be_zeros(inspect: Callable[..., object], tar: bytes,
                                              python_reads: tuple[str, str]) -> None:
    """Bytes past an extended header's size are read by Python's tarfile and
    ignored by GNU tar: the two extract different names or link targets
    (here ``../../evil``, or a link out of the archive for one of them), so
    only zeros are accepted there."""
    tar += bytes(2 * BLOCK)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as python:
        assert [(m.name, m.linkname) for m in python] == [python_reads]
    refused(inspect, gzip.compress(tar), "past its size")


@pytest.mark.parametrize(("kind", "keyword"), [
    (tarfile.XHDTYPE, b"GNU.sparse.size"), (tarfile.XHDTYPE, b"GNU.sparse.realsize"),
    (tarfile.XGLTYPE, b"size"), (tarfile.XGLTYPE, b"GNU.sparse.size"), (tarfile.XGLTYPE, b"GNU.sparse.realsize"),
])
def test_pax_sizes_that_move_gnu_tars_next_header_are_refused(inspect: Callable[..., object], kind: bytes,
                                                              keyword: bytes) -> None:
    """GNU tar skips a member's data by these sizes (a sparse size on a member
    without a sparse map, a global ``size`` on every member after it), tarfile
    by the ustar size: here GNU tar finds a link out of the archive inside the
    data of ``f``, which inspection read as data."""
    hidden = tarfile.TarInfo("escape")
    hidden.type, hidden.linkname = tarfile.SYMTYPE, "../../../../etc"
    inner = hidden.tobuf(tarfile.USTAR_FORMAT)
    member = tarfile.TarInfo("f")
    member.size = len(inner)
    tar = (extended_header(kind, pax_record(keyword, b"0")) + member.tobuf(tarfile.USTAR_FORMAT) + inner
           + bytes(10 * BLOCK))
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as python:
        assert python.getnames() == ["f"]
    assert gnu_tar_lists(tar) in (None, [b"f", b"escape"])
    refused(inspect, gzip.compress(tar), *(["global pax header", keyword.decode()] if kind == tarfile.XGLTYPE
                                           else ["'f' has a GNU sparse size but no sparse map"]))


@pytest.mark.parametrize(("kind", "pax"), [(tarfile.SYMTYPE, False), (tarfile.SYMTYPE, True), (tarfile.LNKTYPE, True)],
                         ids=["symbolic-ustar-size", "symbolic-pax-size", "hard-pax-size"])
def test_a_link_with_a_size_is_refused(inspect: Callable[..., object], kind: bytes, pax: bool) -> None:
    """GNU tar skips a link's size of data, tarfile skips none: the block
    after the link is a file to tarfile, whose data hides from it a header
    that GNU tar unpacks (a link out of the archive)."""
    link = tarfile.TarInfo("l")
    link.type, link.linkname, link.size = kind, "x", 0 if pax else BLOCK
    skipped = tarfile.TarInfo("x")
    skipped.size = BLOCK
    hidden = tarfile.TarInfo("escape")
    hidden.type, hidden.linkname = tarfile.SYMTYPE, "../../../../etc"
    tar = ((extended_header(tarfile.XHDTYPE, pax_record(b"size", b"%d" % BLOCK)) if pax else b"")
           + link.tobuf(tarfile.USTAR_FORMAT) + skipped.tobuf(tarfile.USTAR_FORMAT)
           + hidden.tobuf(tarfile.USTAR_FORMAT) + bytes(10 * BLOCK))
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as python:
        assert python.getnames() == ["l", "x"]
    assert gnu_tar_lists(tar) in (None, [b"l", b"escape"])
    refused(inspect, gzip.compress(tar), "link 'l' has a size")


def with_prefix_field(header: bytes, prefix: bytes) -> bytes:
    """``header`` with ``prefix`` in the ustar prefix field (old GNU: atime),
    its checksum computed again."""
    block = bytearray(header)
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:BLOCK])
    return bytes(block)


@pytest.mark.parametrize("magic", [b"ustar  \0", bytes(8)], ids=["old-gnu", "v7"])
def test_a_prefix_field_outside_ustar_is_refused(inspect: Callable[..., object], magic: bytes) -> None:
    """tarfile puts the prefix field before the name in any header, GNU tar
    only in a POSIX ustar one (an old GNU header keeps times there): tarfile
    reads ``p/x -> ..`` (inside), GNU tar unpacks ``x -> ..``, a link out."""
    link = tarfile.TarInfo("x")
    link.type, link.linkname = tarfile.SYMTYPE, ".."
    header = bytearray(link.tobuf(tarfile.USTAR_FORMAT))
    header[257:265] = magic
    tar = with_prefix_field(bytes(header), b"p") + bytes(10 * BLOCK)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as python:
        assert [(m.name, m.linkname) for m in python] == [("p/x", "..")]
    assert gnu_tar_lists(tar) in (None, [b"x"])
    refused(inspect, gzip.compress(tar), "prefix field", "'x'")


def test_a_prefix_field_in_ustar_is_read(inspect: Callable[..., object]) -> None:
    """In a POSIX ustar header every reader puts the prefix before the name."""
    tar = with_prefix_field(plain_member("a.txt"), b"src") + bytes(10 * BLOCK)
    assert inspect(gzip.compress(tar)).member_paths == ["src/a.txt"]  # type: ignore[attr-defined]


def test_git_archive_global_header_accepted(inspect: Callable[..., object]) -> None:
    """``git archive`` writes one global header (the commit id as ``comment``)."""
    def add(tar: tarfile.TarFile) -> None:
        add_file(tar, "src/a.txt")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "0" * 40}) as tar:
        add(tar)
    assert inspect(buffer.getvalue()).member_paths == ["src/a.txt"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("global_headers", [
    [b"".join(pax_record(b"k%d" % n, b"") for n in range(65))],
    [b"".join(pax_record(b"k%d" % n, b"") for n in range(part, 70, 2)) for part in (0, 1)],  # together
    [pax_record(b"comment", b"c" * (16 * 1024))],
], ids=["many-keywords", "many-keywords-over-two-headers", "long-value"])
def test_oversized_global_pax_headers_are_refused(inspect: Callable[..., object],
                                                  global_headers: list[bytes]) -> None:
    """tarfile copies and applies every global record to every member after
    it: 1 MiB of them (95,000 keywords, 18 KB as xz) cost 12 s per thousand
    members, and an archive may hold 100,000. So they are bounded, together."""
    tar = b"".join(extended_header(tarfile.XGLTYPE, data, "pax_global_header") for data in global_headers)
    refused(inspect, gzip.compress(tar + with_pax_header(pax_record(b"comment", b"c"))),
            "global pax headers", "pax_global_header")


def test_gnu_long_names_read_as_tarfile_reads_them() -> None:
    """GNU long names and link targets (a directory's trailing slash
    dropped), of sizes on and off a block boundary, read as tarfile reads them."""
    def add(tar: tarfile.TarFile) -> None:
        for length in (100, 511, 512, 700):
            add_file(tar, "f" * length)
            add_special(tar, "d" * length + "/", tarfile.DIRTYPE)
            add_special(tar, f"l{length}", tarfile.SYMTYPE, "t" * length)
    data = tar_bytes(add, "", tarfile.GNU_FORMAT)
    assert_read_as_tarfile_reads(data)
    assert b"././@LongLink" in data


#: Inspects the archive in the file named by argv[1] and prints its member paths or the refusal.
_INSPECT_SCRIPT = """
import sys
from pathlib import Path
from registry.archive import ArchiveLimits, inspect_archive
from registry.errors import InvalidPackage
try:
    print(inspect_archive(Path(sys.argv[1]), ArchiveLimits(1000, 2**30, 1000)).member_paths)
except InvalidPackage as exc:
    print(exc.detail("en"))
"""


def tar_in_a_zip(tar: bytes) -> bytes:
    """A zip whose first bytes are also ``tar``'s first header: a stored entry
    whose extra field holds the rest of that header, its data the rest of the tar."""
    name = b"a"
    extra_payload = BLOCK - 30 - len(name) - 4
    head = tar[:BLOCK]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        info = zipfile.ZipInfo(name.decode(), date_time=(2024, 1, 1, 0, 0, 0))
        info.extra = b"\xfe\xca" + extra_payload.to_bytes(2, "little") + head[30 + len(name) + 4:]
        archive.writestr(info, tar[BLOCK:])
    data = bytearray(buffer.getvalue())
    # the tar header's fields all lie in the extra field, but its checksum
    # covers the zip's first bytes too: computed again (the field as spaces)
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:BLOCK])
    return bytes(data)



@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_long_run_of_digits_in_a_pax_header_is_read_quickly(tmp_path: Path, kind: str) -> None:
    """A well-formed pax record holding a MiB of digits: Python's reading
    backtracked over the run from each of its positions (minutes of a thread;
    a few hundred bytes compressed). Read at once now: the tar is accepted, the
    zip that is also that tar refused as ambiguous. Run in a child process, so
    that a regression ends in a timeout instead of a stuck test run."""
    if kind == "zip":  # the polyglot is a real zip and a real tar (shown on a short header)
        polyglot = tar_in_a_zip(with_pax_header(pax_record(b"comment", b"1" * 100)))
        assert zipfile.ZipFile(io.BytesIO(polyglot)).namelist() == ["a"]
        with tarfile.open(fileobj=io.BytesIO(polyglot), mode="r:") as tar:
            assert tar.getnames() == ["src/a.txt"]
    tar = with_pax_header(pax_record(b"comment", b"1" * (MiB - 100)))
    path = tmp_path / f"package.{kind}"
    path.write_bytes(gzip.compress(tar) if kind == "tar.gz" else tar_in_a_zip(tar))
    done = run_python(_INSPECT_SCRIPT, str(path), timeout=120)
    assert done.returncode == 0, done.stderr
    expected = "['src/a.txt']" if kind == "tar.gz" else "Invalid source package: the zip archive is also a readable tar: ambiguous"
    assert done.stdout.strip() == expected


def extended_header(kind: bytes, data: bytes, name: str = "./PaxHeaders/a.txt") -> bytes:
    """A pax (or GNU long-name) header of ``kind`` holding ``data``, padded."""
    header = tarfile.TarInfo(name)
    header.type, header.size = kind, len(data)
    return header.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % BLOCK)


# -- negative sizes (CVE-2025-8194) ----------------------------------------------------------

def with_number(header: bytes, at: int, value: int) -> bytes:
    """``header`` with ``value`` in the 12-byte number field at ``at``, written
    in base-256 (the only way a tar header holds a negative number), its
    checksum computed again."""
    block = bytearray(header)
    block[at:at + 12] = (value % (1 << 96)).to_bytes(12, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:BLOCK])
    return bytes(block)


SIZE_FIELD, OLD_GNU_FIRST_SPARSE, OLD_GNU_REALSIZE = 124, 386, 483


def gnu_tar_refuses(tar: bytes) -> bool | None:
    """Whether GNU tar fails to list ``tar`` (None where GNU tar is not installed)."""
    if not have_gnu_tar():
        return None
    return subprocess.run(["tar", "tf", "-"], input=tar, capture_output=True, check=False).returncode != 0


def _negative_size_cases() -> dict[str, bytes]:
    """Plain tars, each holding one negative size (or sparse map number)."""
    def header(name: str, kind: bytes = tarfile.REGTYPE) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        return info.tobuf(tarfile.USTAR_FORMAT)
    first = plain_member("z.txt")
    sparse_0_1 = [pax_record(b"GNU.sparse.realsize", b"-1") + pax_record(b"GNU.sparse.map", b"0,1"),
                  pax_record(b"GNU.sparse.realsize", b"2") + pax_record(b"GNU.sparse.map", b"0,-1")]
    sparse_0_0 = b"".join(pax_record(keyword, value) for keyword, value in [
        (b"GNU.sparse.size", b"2"), (b"GNU.sparse.numblocks", b"1"),
        (b"GNU.sparse.offset", b"0"), (b"GNU.sparse.numbytes", b"-1")])
    cases = {
        # tarfile's next header: back to this one (Python's own reading, before gh-130577, loops)
        "file-back-to-its-own-header": first + with_number(header("a.txt"), SIZE_FIELD, -BLOCK),
        "file-back-before-the-archive": with_number(header("a.txt"), SIZE_FIELD, -4 * BLOCK),
        "file-minus-one": first + with_number(header("a.txt"), SIZE_FIELD, -1),
        "folder": first + with_number(header("d", tarfile.DIRTYPE), SIZE_FIELD, -1),
        "pax-header-itself": first + with_number(header("./PaxHeaders/a.txt", tarfile.XHDTYPE), SIZE_FIELD, -1)
        + plain_member("a.txt"),
        "long-name-itself": first + with_number(header("././@LongLink", tarfile.GNUTYPE_LONGNAME), SIZE_FIELD, -1)
        + plain_member("a.txt"),
        "pax-size-back": first + extended_header(tarfile.XHDTYPE, pax_record(b"size", b"-1024"))
        + plain_member("a.txt"),
        "pax-size-minus-one": first + extended_header(tarfile.XHDTYPE, pax_record(b"size", b"-1"))
        + plain_member("a.txt"),
        "pax-sparse-realsize": first + extended_header(tarfile.XHDTYPE, sparse_0_1[0]) + plain_member("a.txt"),
        "pax-sparse-map": first + extended_header(tarfile.XHDTYPE, sparse_0_1[1]) + plain_member("a.txt"),
        "pax-sparse-0.0-map": first + extended_header(tarfile.XHDTYPE, sparse_0_0) + plain_member("a.txt"),
        "old-gnu-sparse-size": first + with_number(old_gnu_sparse("a.txt", 10, extended=False), SIZE_FIELD, -BLOCK),
        "old-gnu-sparse-realsize": first + with_number(old_gnu_sparse("a.txt", 10, extended=False),
                                                       OLD_GNU_REALSIZE, -1),
        "old-gnu-sparse-map": first + with_number(with_number(old_gnu_sparse("a.txt", 10, extended=False),
                                                              OLD_GNU_FIRST_SPARSE, 5),
                                                  OLD_GNU_FIRST_SPARSE + 12, -1),
    }
    return {name: tar + bytes(10 * BLOCK) for name, tar in cases.items()}


NEGATIVE_SIZES = _negative_size_cases()


@pytest.mark.parametrize("case", list(NEGATIVE_SIZES))
def test_negative_sizes_are_refused(inspect: Callable[..., object], case: str) -> None:
    """A tar number field may hold a negative number (base-256), which tarfile
    takes as it is: a negative size moves its next header backwards, onto the
    same header again (CVE-2025-8194: Python's own reading then never ends) or
    before the archive, or by less than a block. GNU tar refuses every such
    header ("out of off_t range") and goes looking for the next valid one, so
    the two list different members: refused, whichever header holds it."""
    tar = NEGATIVE_SIZES[case]
    assert gnu_tar_refuses(tar) in (None, True)
    for data in (tar, gzip.compress(tar)):
        refused(inspect, data, "negative")


def test_python_reads_a_header_that_leads_back_to_itself_again() -> None:
    """The premise of the first case above: Python's tarfile (until the fix of
    gh-130577) yields the same member from the same offset again and again."""
    with tarfile.open(fileobj=io.BytesIO(NEGATIVE_SIZES["file-back-to-its-own-header"]), mode="r:") as tar:
        try:
            read = [(member.name, member.offset) for member in itertools.islice(tar, 5)]
        except tarfile.TarError:  # a Python that has the fix refuses the header
            return
    assert read == [("z.txt", 0)] + [("a.txt", 2 * BLOCK)] * 4


@pytest.mark.parametrize("case", ["file-back-to-its-own-header", "file-minus-one"])
def test_negative_sizes_over_http(api: Api, code: str, registry: RegistryProcess, case: str) -> None:
    """Through a live registry, as a small upload (read in memory) and as one
    streamed to disk (inspected as it arrives): refused at once, nothing kept."""
    filler = tarfile.TarInfo("filler.bin")
    filler.size = 512 * 1024  # past the small-upload size: streamed
    streamed = filler.tobuf(tarfile.USTAR_FORMAT) + os.urandom(filler.size) + NEGATIVE_SIZES[case]
    for data, filename in ((gzip.compress(NEGATIVE_SIZES[case]), "pkg.tar.gz"), (streamed, "pkg.tar")):
        assert_refused(api.upload(code, data, version="1.0.0", filename=filename), "negative")
    assert_nothing_kept(api, code, registry)


@pytest.mark.parametrize("first", [
    extended_header(tarfile.XHDTYPE, pax_record(b"comment", b"x")) * 600,  # tarfile recurses once per header
    extended_header(tarfile.GNUTYPE_LONGNAME, b"n" * 10 + b"\0") * 600,
    extended_header(tarfile.XHDTYPE, pax_record(b"hdrcharset", b"\xff")),  # tarfile: UnicodeDecodeError
    extended_header(tarfile.XHDTYPE, pax_record(b"GNU.sparse.size", b"many")),  # tarfile: ValueError
], ids=["pax-header-chain", "long-name-chain", "hdrcharset-not-utf8", "sparse-size-not-a-number"])
def test_a_zip_starting_with_a_tar_header_is_refused_whatever_follows(inspect: Callable[..., object],
                                                                       first: bytes) -> None:
    """The zip check must not depend on tarfile getting through the headers
    that follow a valid first one: a chain of a few hundred extended headers
    took it past Python's recursion limit (a RecursionError, so a 500), and a
    header tarfile cannot decode made it say "not a tar" (the polyglot was
    accepted) where another tar reader skips the record and unpacks the rest."""
    polyglot = tar_in_a_zip(first + with_pax_header(pax_record(b"comment", b"c")))
    assert zipfile.ZipFile(io.BytesIO(polyglot)).namelist() == ["a"]
    refused(inspect, polyglot, "the zip archive is also a readable tar: ambiguous")


# -- a tar hidden inside a zip, where GNU tar finds it ---------------------------------------

HIDDEN = "hidden/evil.sh"


def hidden_tar() -> bytes:
    """A one-member tar (``hidden/evil.sh``) and its end marker."""
    return tar_bytes(lambda tar: add_file(tar, HIDDEN, b"echo evil\n"), "", tarfile.USTAR_FORMAT)[:4 * BLOCK]


def hidden_tar_with_a_zero_checksum_field() -> bytes:
    """:func:`hidden_tar` whose header's checksum field is all zero bytes: GNU
    tar reads that as 0, and takes the header when its bytes, counted as
    signed (Sun's checksum), sum to 0 (here: made so in the prefix field)."""
    header = bytearray(hidden_tar()[:BLOCK])
    header[148:156] = b" " * 8
    at = 345
    total = sum(b - 256 if b >= 128 else b for b in header)
    while total > 0:
        step = min(total, 128)
        header[at] = 256 - step
        total -= step
        at += 1
    header[148:156] = bytes(8)
    return bytes(header) + hidden_tar()[BLOCK:]


def at_a_block_boundary(build: Callable[[bytes], bytes], tar: bytes, *, off_by: int = 0) -> bytes:
    """The zip ``build(payload)`` makes (it keeps the payload's bytes as they
    are somewhere in the file), the payload being ``tar`` after as many bytes
    as bring its first header to a 512-byte boundary of the file (plus ``off_by``)."""
    lead = 0
    for _ in range(4):
        data = build(b"\1" * lead + tar)
        at = data.find(tar[:BLOCK])
        assert at >= 0
        if at % BLOCK == off_by:
            return data
        lead += (off_by - at) % BLOCK
    raise AssertionError("the payload moves with its length")


def _zip(*entries: tuple[zipfile.ZipInfo, bytes, int | None], comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data, level in entries:
            archive.writestr(info, data, compresslevel=level)
        archive.comment = comment
    return buffer.getvalue()


def _entry(name: str, method: int = zipfile.ZIP_STORED, extra: bytes = b"") -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = method
    if extra:
        info.extra = b"\xfe\xca" + len(extra).to_bytes(2, "little") + extra
    return info


_README = (_entry("readme.txt", zipfile.ZIP_DEFLATED), b"hello\n" * 100, None)
#: Places a zip keeps bytes as they are, each a ``build`` for :func:`at_a_block_boundary`.
HIDING_PLACES: dict[str, Callable[[bytes], bytes]] = {
    "stored-entry": lambda payload: _zip(_README, (_entry("data.bin"), payload, None)),
    "past-the-first-mib": lambda payload: _zip((_entry("big.bin"), bytes(range(256)) * 4500, None),
                                               (_entry("data.bin"), payload, None)),
    "deflate-stored-block": lambda payload: _zip(_README, (_entry("data.bin", zipfile.ZIP_DEFLATED), payload, 0)),
    "extra-field": lambda payload: _zip(_README, (_entry("data.bin", extra=payload), b"x", None)),
    "comment": lambda payload: _zip(_README, comment=payload),
}


def gnu_tar_finds(data: bytes) -> list[bytes] | None:
    """The member names GNU tar lists in ``data``, whatever its exit status
    (it reports the blocks it skipped and goes on), or None without GNU tar."""
    if not have_gnu_tar():
        return None
    return subprocess.run(["tar", "tf", "-"], input=data, capture_output=True, check=False).stdout.split()


@pytest.mark.parametrize("place", list(HIDING_PLACES))
def test_a_zip_hiding_a_tar_at_a_block_boundary_is_refused(inspect: Callable[..., object], place: str) -> None:
    """GNU tar reads a zip as a tar: its first block is no header ("This does
    not look like a tar archive"), so it skips to the next block, and the
    next, to the end, and unpacks every member whose header it meets at a
    512-byte boundary. A header needs no magic, only its checksum: any bytes a
    zip keeps as they are can hold one. Refused, as a zip starting with a tar
    header is; the same bytes off a boundary are only data (accepted)."""
    polyglot = at_a_block_boundary(HIDING_PLACES[place], hidden_tar())
    assert len(zipfile.ZipFile(io.BytesIO(polyglot)).namelist()) in (1, 2)
    assert gnu_tar_finds(polyglot) in (None, [HIDDEN.encode()])
    refused(inspect, polyglot, "the zip archive is also a readable tar")

    shifted = at_a_block_boundary(HIDING_PLACES[place], hidden_tar(), off_by=1)
    assert gnu_tar_finds(shifted) in (None, [])
    inspect(shifted)


def test_a_tar_header_gnu_tar_reads_with_a_zero_checksum_field_is_found(inspect: Callable[..., object]) -> None:
    """GNU tar reads an all-zero checksum field as 0 and compares it with the
    signed sum too: a header whose bytes sum to 0 that way passes."""
    tar = hidden_tar_with_a_zero_checksum_field()
    polyglot = at_a_block_boundary(HIDING_PLACES["stored-entry"], tar)
    found = gnu_tar_finds(polyglot)
    assert found is None or (len(found) == 1 and found[0].endswith(HIDDEN.encode()))
    refused(inspect, polyglot, "the zip archive is also a readable tar")


_FIELD_BYTES = st.sampled_from([*b"0123456789", *b" \t\n", 0, *b"a+-", 0x80, 0xFF])
#: Ways of writing a checksum, each as GNU tar or another tar might.
_CHECKSUM_FORMS = [b"%06o\0 ", b"%07o\0", b"%8o", b"\0%06o\0", b"\0 %05o ", b" %06o\t", b"%08o",
                   b"%06o\0x", b"%06ox ", b"+%05o\0", b"%06o8", b"0o%04o", b"%06d\0 "]


@settings(max_examples=300, deadline=None, database=None)
@given(signed=st.booleans(), form=st.sampled_from(_CHECKSUM_FORMS), link=st.booleans(),
       size_changes=st.lists(st.tuples(st.integers(0, 11), _FIELD_BYTES), max_size=3),
       checksum_changes=st.lists(st.tuples(st.integers(0, 7), _FIELD_BYTES), max_size=2))
def test_tar_headers_found_as_gnu_tar_finds_them(signed: bool, form: bytes, link: bool,
                                                 size_changes: list[tuple[int, int]],
                                                 checksum_changes: list[tuple[int, int]]) -> None:
    """Whether a block at a 512-byte boundary is a header, as GNU tar 1.34
    decides it after a block that is none: its checksum written in many
    ways (the signed sum too), then perhaps mangled, the size field too, a
    hard link (whose size GNU tar does not read). Only a size in GNU tar's
    base-64 or base-256 form may be taken for a header where GNU tar
    refuses it (erring towards refusing the zip)."""
    from registry.gnu_tar_scan import is_header
    if not have_gnu_tar():
        pytest.skip("GNU tar is not installed")
    block = bytearray(hidden_tar()[:BLOCK])
    if signed:
        block[345:350] = b"\xf0" * 5  # bytes that count negative in Sun's sum
    if link:
        block[156] = ord("1")
        block[157:161] = b"dest"
    for at, value in size_changes:
        block[124 + at] = value
    block[148:156] = b" " * 8
    total = sum(b - 256 if signed and b >= 128 else b for b in block)
    block[148:156] = (form % total)[:8].ljust(8, b"\0")
    for at, value in checksum_changes:
        block[148 + at] = value
    data = b"PK\3\4" + b"\1" * (BLOCK - 4) + bytes(block) + bytes(4 * BLOCK)
    listed = subprocess.run(["tar", "tf", "-"], input=data, capture_output=True, check=False).stdout != b""
    found = is_header(bytes(block))
    size = block[124 + (block[124] == 0):136].lstrip(b" \t\n\v\f\r")[:1]  # as GNU tar starts reading it
    other_form = not link and size in (b"+", b"-", b"\x80", b"\xff")
    assert found == listed or (found and other_form), (bytes(block[124:156]), found, listed)


def test_a_zip_hiding_a_tar_over_http(api: Api, code: str, registry: RegistryProcess) -> None:
    """Through a live registry, small (read in memory) and large (streamed to
    disk, checked once complete): refused, nothing kept."""
    for place in ("stored-entry", "past-the-first-mib"):
        response = api.upload(code, at_a_block_boundary(HIDING_PLACES[place], hidden_tar()),
                              version="1.0.0", filename="pkg.zip")
        assert_refused(response, "also a readable tar")
    assert_nothing_kept(api, code, registry)


def _mangling_seeds() -> list[bytes]:
    """Plain tars of every header kind tarfile reads: ustar, pax, GNU long
    names, GNU 1.0 and old-GNU sparse members (an extension block included)."""
    def headers(tar: tarfile.TarFile) -> None:
        add_file(tar, "app/app_desc.yaml", app_desc("1.0"))
        add_file(tar, "app/" + "long" * 40 + ".py", b"y" * 700)
        add_special(tar, "app/link", tarfile.SYMTYPE, "app_desc.yaml")
    mapped = b"1\n0\n3\n" + bytes(506)
    sparse = tarfile.TarInfo("GNUSparseFile.0/s.txt")
    sparse.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                          "GNU.sparse.name": "s.txt", "GNU.sparse.realsize": "3"}
    sparse.size = 512 + 3
    gnu_1_0 = sparse.tobuf(tarfile.PAX_FORMAT) + mapped + b"abc" + bytes(509)
    old_gnu = old_gnu_sparse("o.txt", 100, extended=True) + sparse_extension(2, more=False)
    return [tar_bytes(headers, "", fmt) for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)] + [
        gnu_1_0 + bytes(1024), old_gnu + bytes(1024)]


MANGLING_SEEDS = _mangling_seeds()


@settings(max_examples=400, deadline=None, database=None)
@given(seed=st.sampled_from(range(4)), cut=st.floats(0.05, 1.0),
       changes=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                  st.sampled_from([0, 1, 0x0A, 0x20, 0x30, 0x37, 0x39, 0x80, 0xFF])), max_size=6))
def test_mangled_tar_headers_are_read_or_refused(seed: int, cut: float,
                                                 changes: list[tuple[float, int]]) -> None:
    """Whatever bytes a header holds and wherever the archive ends, inspection
    answers with an archive or InvalidPackage, never another exception (a 500)."""
    data = bytearray(MANGLING_SEEDS[seed])
    for where, value in changes:
        data[int(where * len(data))] = value
    with contextlib.suppress(InvalidPackage):
        inspect_bytes(bytes(data[: max(1, int(cut * len(data)))]), LIMITS)


# -- broken files -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_tgz() -> bytes:
    return tar_bytes(lambda t: [add_file(t, "app/main.py", b"print('hello')\n" * 200),
                                add_file(t, "app/last.txt", b"the end\n")])


@pytest.mark.parametrize("keep", [0.98, 0.9, 0.5, 0.1])
def test_truncated_gzip(inspect: Callable[..., object], good_tgz: bytes, keep: float) -> None:
    refused(inspect, good_tgz[: int(len(good_tgz) * keep)], "tar.gz")


def test_gzip_trailer_cut_off(inspect: Callable[..., object], good_tgz: bytes) -> None:
    """Only the CRC and length trailer missing: every member still reads fine."""
    refused(inspect, good_tgz[:-8], "Compressed file ended", "after member 'app/last.txt'")


def test_gzip_crc_mismatch(inspect: Callable[..., object], good_tgz: bytes) -> None:
    data = bytearray(good_tgz)
    data[-8] ^= 0xFF
    refused(inspect, bytes(data), "CRC")


def test_garbage_after_gzip(inspect: Callable[..., object], good_tgz: bytes) -> None:
    refused(inspect, good_tgz + b"trailing garbage", "tar.gz")


@pytest.mark.parametrize("compress", [bz2.compress, lzma.compress], ids=["bz2", "xz"])
def test_truncated_bz2_and_xz(inspect: Callable[..., object], compress: Callable[[bytes], bytes]) -> None:
    data = compress(tar_of(("a.txt", tarfile.REGTYPE, ""), ("b.txt", tarfile.REGTYPE, ""), compression=""))
    refused(inspect, data[:-10])


def test_truncated_plain_tar(inspect: Callable[..., object]) -> None:
    raw = tar_of(("a.txt", tarfile.REGTYPE, ""), ("b.txt", tarfile.REGTYPE, ""), compression="")
    refused(inspect, raw[: 3 * 512], "'b.txt'")  # cut inside b.txt's data
    refused(inspect, raw[: 4 * 512], "truncated", "'b.txt'")  # cut before the end marker


def test_gzip_length_mismatch(inspect: Callable[..., object], good_tgz: bytes) -> None:
    data = bytearray(good_tgz)
    data[-4] ^= 0x01  # the trailer's length of the uncompressed data
    refused(inspect, bytes(data), "Incorrect length")


def test_gzip_members_in_a_row_with_zero_padding_read_as_one_stream(inspect: Callable[..., object]) -> None:
    """As gzip reads them: members one after another, zero bytes between and after them."""
    raw = tar_bytes(lambda t: [add_file(t, "app/big.bin", bytes(range(256)) * 12_000),
                               add_file(t, "app/app_desc.yaml", app_desc("3.1"))], compression="")
    cut = 700_000  # inside big.bin's data
    data = gzip.compress(raw[:cut], 1) + b"\0" * 1000 + gzip.compress(raw[cut:], 1) + b"\0" * 3000
    info = inspect(data)
    assert info.members == 2  # type: ignore[attr-defined]
    assert info.app_desc == app_desc("3.1")  # type: ignore[attr-defined]
    refused(inspect, data + b"\x01", "tar.gz")  # after the padding, only another member may follow


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_members_larger_than_a_read_are_skipped_to_the_next_header(inspect: Callable[..., object],
                                                                  compression: str) -> None:
    """Member data spanning several decompressed pieces (1 MiB) is skipped exactly:
    the members after it, and a member cut short, are seen where they are."""
    big = os.urandom(2 * MiB + 4321)

    def add(tar: tarfile.TarFile) -> None:
        add_file(tar, "app/first.bin", big)
        add_file(tar, "app/app_desc.yaml", app_desc("4.2"))
        add_file(tar, "app/second.bin", big[: MiB + 7])
        add_special(tar, "app/link", tarfile.SYMTYPE, "second.bin")
    data = tar_bytes(add, compression)
    info = inspect(data)
    assert info.members == 4  # type: ignore[attr-defined]
    assert info.member_paths == ["app/first.bin", "app/app_desc.yaml", "app/second.bin", "app/link"]  # type: ignore[attr-defined]
    assert info.app_desc == app_desc("4.2")  # type: ignore[attr-defined]
    raw = tar_bytes(add, "")
    cut = raw[: 5 * 512 + len(big) + MiB]  # inside second.bin's data
    refused(inspect, {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "": bytes}[compression](cut),
            "'app/second.bin'")


def test_second_archive_hidden_after_the_end_marker(inspect: Callable[..., object]) -> None:
    """``tar -i`` would unpack the second archive: it must not go unchecked."""
    first = tar_of(("a.txt", tarfile.REGTYPE, ""), compression="")
    second = tar_of(("/etc/evil", tarfile.REGTYPE, ""), compression="")
    refused(inspect, gzip.compress(first + second), "data after the end of the archive")


def test_garbage_header_between_members(inspect: Callable[..., object]) -> None:
    first = tar_of(("a.txt", tarfile.REGTYPE, ""), compression="")
    body = first[:1024]  # header + data block of a.txt, without the end marker
    refused(inspect, gzip.compress(body + b"\xff" * 512 + bytes(1024)), "unreadable header", "'a.txt'")


def test_zip_crc_mismatch_names_member(inspect: Callable[..., object]) -> None:
    data = bytearray(zip_of(("good.txt", b"fine"), ("bad.txt", b"hello world " * 100)))
    local = data.find(b"PK\x03\x04", 10)
    data[local + 14] ^= 0xFF  # the CRC of bad.txt in its local header
    central = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    data[central + 16] ^= 0xFF  # and in the central directory
    refused(inspect, bytes(data), "'bad.txt'")


def test_zip_encrypted_member(inspect: Callable[..., object]) -> None:
    data = bytearray(zip_of(("secret.txt", b"data")))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + offset] |= 0x01  # the "encrypted" flag
    refused(inspect, bytes(data), "secret.txt")


@pytest.mark.parametrize(
    "data",
    [b"\x00" * 1024, b"just some text\n", b"PK\x03\x04" + b"\x00" * 100, b"\x1f\x8b" + b"\x00" * 50,
     b"BZh9garbage", b"\xfd7zXZ\x00garbage", b"%PDF-1.7\n"],
    ids=["zeros", "text", "zip-header-only", "gzip-magic-only", "bz2-magic", "xz-magic", "pdf"],
)
def test_garbage(inspect: Callable[..., object], data: bytes) -> None:
    refused(inspect, data)


@pytest.mark.parametrize(("maker", "reason"), [
    (lambda: tar_bytes(lambda t: None, "gz"), "no files"),
    (lambda: tar_bytes(lambda t: None, "bz2"), "no files"),
    (lambda: tar_bytes(lambda t: None, ""), "not a tar.gz"),  # all zeros: nothing to recognise
    (lambda: zip_of(), "no files"),
], ids=["tar.gz", "tar.bz2", "tar", "zip"])
def test_empty_archive(inspect: Callable[..., object], maker: Callable[[], bytes], reason: str) -> None:
    refused(inspect, maker(), reason)


def test_zlib_error_is_invalid_package(inspect: Callable[..., object], good_tgz: bytes) -> None:
    data = bytearray(good_tgz)
    for i in range(30, 60):
        data[i] ^= 0x55
    with pytest.raises(InvalidPackage):
        inspect(bytes(data))


# -- through a live registry ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("data", "member"),
    [
        (tar_of(("/etc/cron.d/evil", tarfile.REGTYPE, "")), "/etc/cron.d/evil"),
        (tar_of(("../../evil", tarfile.REGTYPE, "")), "../../evil"),
        (tar_of(("x", tarfile.SYMTYPE, "."), ("x/y", tarfile.SYMTYPE, "..")), "x/y"),
        (tar_of(("dev/null", tarfile.CHRTYPE, "")), "dev/null"),
        (zip_symlink("evil", "/etc/shadow"), "evil"),
    ],
    ids=["absolute", "dotdot", "link-chain", "device", "zip-symlink"],
)
def test_unsafe_archives_over_http(api: Api, code: str, registry: RegistryProcess,
                                   data: bytes, member: str) -> None:
    response = api.upload(code, data, version="1.0.0")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_PACKAGE"
    assert member in response.json()["detail"]
    assert api.list(code, include_deleted="true").json()["count"] == 0
    root = registry.config.parent / "packages"
    assert list(blob_files(root / code)) == []
    assert staged_files(root / ".staging") == []


def test_truncated_gzip_over_http(api: Api, code: str, good_tgz: bytes) -> None:
    response = api.upload(code, good_tgz[:-8], version="1.0.0")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_PACKAGE"
    assert "app/last.txt" in response.json()["detail"]


def test_sparse_map_cut_short_over_http(api: Api, code: str) -> None:
    """No 500 for an archive that ends inside a sparse member's map."""
    response = api.upload(code, gzip.compress(old_gnu_sparse("a.txt", 10, extended=True)), version="1.0.0")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_PACKAGE"
    assert "'a.txt'" in response.json()["detail"]
    assert api.list(code, include_deleted="true").json()["count"] == 0
