"""A zip's local entries must be exactly what its central directory lists.

A zip names its members twice: a local header before each member's data,
and the central directory at the end. :mod:`zipfile`, ``unzip`` and most
extractors read the directory; stream readers (Java's ``ZipInputStream``,
many upload scanners and extractors fed from a pipe) walk the local headers
from the start of the file. An archive where the two disagree shows each
reader a different set of files: an entry ``../../../x`` present only as a
local header is unpacked by a stream reader and never seen by a check that
reads the directory.

:func:`check_zip_layout` walks the file the way a stream reader does and
requires the local entries to tile it exactly, in directory order by offset:
the first at byte 0, each next one right after the previous one's data (and
data descriptor), the last one ending where the central directory begins,
each local header naming the same file, method, flags, checksum and sizes as
its directory entry, and the directory followed at once by an end record
that counts exactly its entries. Nothing is left where a stream reader could
find an entry the directory does not list.
"""

from __future__ import annotations

import struct
import zipfile
from typing import IO

from registry.errors import InvalidPackage

LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the same layout zipfile reads
LOCAL_SIGNATURE = b"PK\x03\x04"
DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
#: general purpose flag: sizes and CRC follow the data in a data descriptor
FLAG_DATA_DESCRIPTOR = 0x08
#: general purpose flag: the name is UTF-8 (else code page 437)
FLAG_UTF8 = 0x800
#: a 32-bit field holding this means "see the zip64 extra field"
ZIP64_MARKER = 0xFFFFFFFF
#: fixed part of a central directory entry, before its name, extra field and comment
CENTRAL_HEADER_SIZE = 46
END_SIGNATURE = b"PK\x05\x06"
ZIP64_END_SIGNATURE = b"PK\x06\x06"
#: where the end records keep the total number of entries
END_TOTAL_OFFSET = 10
ZIP64_END_TOTAL_OFFSET = 32
#: data descriptor lengths: crc + 32- or 64-bit sizes, with or without a signature
DESCRIPTOR_LENGTHS = (12, 16, 20, 24)


def _show(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 300 else text[:296] + "...'"


def check_zip_layout(f: IO[bytes], archive: zipfile.ZipFile) -> None:
    """Refuse ``archive`` (read from ``f``) unless its local entries and its
    central directory describe the same members (see the module docstring).

    :raises InvalidPackage: naming the first disagreement found.
    """
    infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
    directory_start: int = archive.start_dir  # where zipfile found the directory (prepended bytes included)
    expected = 0
    for info in infos:
        if info.header_offset != expected:
            problem = "bytes the central directory does not list" if info.header_offset > expected else "entries that overlap"
            raise InvalidPackage(
                f"the zip's local entries and central directory disagree: {problem} at offset {expected}"
                f" (before {_show(info.filename)})"
            )
        expected = _local_entry_end(f, info)
    if expected != directory_start:
        raise InvalidPackage(
            "the zip's local entries and central directory disagree: "
            f"bytes the central directory does not list at offset {expected}"
        )
    _check_end_record(f, directory_start + sum(_directory_entry_size(info) for info in infos), len(infos))


def _directory_entry_size(info: zipfile.ZipInfo) -> int:
    """The bytes ``info`` takes in the central directory."""
    encoding = "utf-8" if info.flag_bits & FLAG_UTF8 else "cp437"
    try:
        name_length = len(info.orig_filename.encode(encoding))
    except UnicodeEncodeError:  # zipfile decoded it, so it encodes back; never here
        name_length = len(info.orig_filename.encode("utf-8"))
    return CENTRAL_HEADER_SIZE + name_length + len(info.extra) + len(info.comment)


def _check_end_record(f: IO[bytes], offset: int, listed: int) -> None:
    """The end record right after the directory must count ``listed`` entries.

    zipfile reads directory entries until the directory's size is used up;
    other readers (Java's ``ZipFile``, Go) trust the end record's count: a
    count that differs, or bytes between the two, shows them other entries.
    """
    f.seek(offset)
    head = f.read(ZIP64_END_TOTAL_OFFSET + 8)
    if head.startswith(ZIP64_END_SIGNATURE) and len(head) >= ZIP64_END_TOTAL_OFFSET + 8:
        (counted,) = struct.unpack_from("<Q", head, ZIP64_END_TOTAL_OFFSET)
    elif head.startswith(END_SIGNATURE) and len(head) >= END_TOTAL_OFFSET + 2:
        (counted,) = struct.unpack_from("<H", head, END_TOTAL_OFFSET)
        if counted == 0xFFFF:  # the zip64 record holds the count; it sits before this one
            return
    else:
        raise InvalidPackage(f"the zip's central directory is not followed by its end record (offset {offset})")
    if counted != listed:
        raise InvalidPackage(f"the zip's end record counts {counted} entries, its central directory lists {listed}")


def _local_entry_end(f: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Check the local header of ``info`` against its directory entry; the
    offset just past its data and data descriptor."""
    f.seek(info.header_offset)
    raw = f.read(LOCAL_HEADER.size)
    if len(raw) != LOCAL_HEADER.size:
        raise InvalidPackage(f"the zip's local header of {_show(info.filename)} is truncated")
    (signature, _version, _system, flags, method, _time, _date, crc, compressed, size,
     name_length, extra_length) = LOCAL_HEADER.unpack(raw)
    if signature != LOCAL_SIGNATURE:
        raise InvalidPackage(f"the zip's directory entry {_show(info.filename)} points at no local header")
    name = f.read(name_length)
    encoding = "utf-8" if info.flag_bits & FLAG_UTF8 else "cp437"
    try:
        directory_name = info.orig_filename.encode(encoding)
    except UnicodeEncodeError:
        directory_name = b""
    if name != directory_name:
        raise InvalidPackage(
            f"the zip's local header names {_show(name.decode('utf-8', 'replace'))}, "
            f"its central directory {_show(info.filename)}"
        )
    if method != info.compress_type or (flags & FLAG_DATA_DESCRIPTOR) != (info.flag_bits & FLAG_DATA_DESCRIPTOR):
        raise InvalidPackage(f"the zip's local header and central directory disagree on {_show(info.filename)}")
    if not flags & FLAG_DATA_DESCRIPTOR:
        declared = (crc, compressed, size)
        actual = (info.CRC, info.compress_size, info.file_size)
        if any(d != a and d != ZIP64_MARKER for d, a in zip(declared, actual, strict=True)):
            raise InvalidPackage(
                f"the zip's local header and central directory disagree on the size of {_show(info.filename)}"
            )
    end: int = info.header_offset + LOCAL_HEADER.size + name_length + extra_length + info.compress_size
    if flags & FLAG_DATA_DESCRIPTOR:
        end += _descriptor_length(f, end, info)
    return end


def _descriptor_length(f: IO[bytes], offset: int, info: zipfile.ZipInfo) -> int:
    """The length of the data descriptor at ``offset`` that repeats ``info``'s
    CRC and sizes (any of the four layouts writers use).

    :raises InvalidPackage: none of them does.
    """
    f.seek(offset)
    raw = f.read(max(DESCRIPTOR_LENGTHS))
    for length in DESCRIPTOR_LENGTHS:
        has_signature = length in (16, 24)
        body = raw[4:length] if has_signature else raw[:length]
        if len(raw) < length or (has_signature and not raw.startswith(DESCRIPTOR_SIGNATURE)):
            continue
        wide = len(body) == 20
        crc, compressed, size = struct.unpack("<LQQ" if wide else "<LLL", body)
        if (crc, compressed, size) == (info.CRC, info.compress_size, info.file_size):
            return length
    raise InvalidPackage(f"the zip's data descriptor of {_show(info.filename)} does not match its directory entry")
