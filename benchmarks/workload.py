"""The benchmark's payload and the local-copy limit.

The payload is a valid ``tar.gz`` source package (the registry inspects every
upload, so random bytes alone would be refused): an ``app_desc.yaml`` and one
member of random bytes, sized so the archive is about the requested size.
Random data does not compress, so the gzip stream is written at level 0
(stored blocks): the bytes are the same kind a level-6 gzip of random data
would produce, and inflating them costs the registry the same, but the file is
made in about a second instead of a minute.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

MIB = 1024 * 1024
CHUNK = MIB
APP_DESC = b"specVersion: 3\nappVersion: 1.0.0\nmodules:\n  - name: default\n"
# Tar headers, padding, end blocks and gzip framing (5 bytes per 64 KiB stored
# block) take a little room; the random member is shrunk by about that much.
_GZIP_STORED_OVERHEAD = 5 / 65535


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 1_700_000_000
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def make_package(path: Path, size: int) -> tuple[int, str]:
    """Write a ``tar.gz`` of about ``size`` bytes to ``path``.

    :returns: the file's exact size and lower-case hex sha256.
    """
    fixed = 4 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE + len(APP_DESC) + 64
    member_size = max(MIB, int((size - fixed) / (1 + _GZIP_STORED_OVERHEAD)))
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=0, mtime=0) as gz:
        tar = io.BytesIO()
        tar.write(_tar_header("bench/app_desc.yaml", len(APP_DESC)))
        tar.write(APP_DESC + _padding(len(APP_DESC)))
        tar.write(_tar_header("bench/data.bin", member_size))
        gz.write(tar.getvalue())
        left = member_size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            gz.write(chunk)
            left -= len(chunk)
        # Two zero blocks end the archive; pad to a whole record like tar(1).
        written = len(tar.getvalue()) + member_size
        end = _padding(member_size) + b"\0" * (2 * tarfile.BLOCKSIZE)
        written += len(end)
        gz.write(end + b"\0" * (-written % tarfile.RECORDSIZE))
    return path.stat().st_size, sha256_file(path)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_and_hash(source: Path, target: Path) -> float:
    """Copy ``source`` to ``target`` hashing it on the way, then fsync.

    This is the least work a durable registry does with an upload: read each
    byte once, hash it, write it, and make it durable. The file is read from
    the page cache (it was just written), as the registry's client reads it.

    :returns: the seconds it took.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    with source.open("rb", buffering=0) as src, target.open("wb", buffering=0) as dst:
        while n := src.readinto(buffer):
            digest.update(view[:n])
            done = 0
            while done < n:
                done += dst.write(view[done:n]) or 0
        os.fsync(dst.fileno())
    elapsed = time.perf_counter() - started
    digest.hexdigest()
    return elapsed
