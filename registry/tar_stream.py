"""The tar stream inside a package, decompressed in large pieces for :mod:`tarfile`.

Inspection reads every byte of an archive (an upload is checked as it
arrives, often many at once), so the cost per byte counts: it should be spent
in C with the GIL released, not in Python calls. :mod:`gzip` inflates 8 KiB
per call and computes the CRC in a separate call for each piece, and
tarfile's stream mode (``r|``) skips a member's data 10 KiB at a time: some
3,500 Python-level reads per 16 MiB, each taking and dropping the GIL. Here:

- a gzip stream is inflated by :mod:`zlib` itself (``wbits=31``: zlib checks
  each member's header, CRC and length in C), :data:`INPUT_PIECE` bytes of
  input per call, into pieces of up to :data:`OUTPUT_PIECE` bytes;
- tarfile opens the stream in its random-access mode (``r:``), which reads
  headers and skips a member's data with ``seek``; :class:`TarStream` seeks
  forward only, inflating and dropping the skipped bytes a piece at a time.

bzip2 and xz go through :mod:`bz2` and :mod:`lzma` as before: their
decompression costs far more than the calls around it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable
from typing import IO, Protocol

#: Compressed bytes given to zlib per call (larger pieces only make zlib copy
#: the part it has not consumed yet into a new ``unconsumed_tail``).
INPUT_PIECE = 256 * 1024
#: Most decompressed bytes one call produces (and the stream holds at once).
OUTPUT_PIECE = 1024 * 1024
#: Decompressed bytes kept so the block where tarfile stopped can be looked at again.
TAIL_SIZE = 128 * 1024

#: zlib's words for a gzip trailer that does not match, as :mod:`gzip` puts them.
_GZIP_ERRORS = {
    "incorrect data check": "CRC check failed",
    "incorrect length check": "Incorrect length of data produced",
}


class Reader(Protocol):
    """Anything with a binary ``read``: a file, or a decompressor over one."""

    def read(self, size: int = -1, /) -> bytes: ...


class GzipReader:
    """The decompressed bytes of a gzip file, member after member.

    Like :class:`gzip.GzipFile`: members may follow one another, zero bytes
    between and after them are padding, anything else after a member must be
    another member; a missing trailer raises ``EOFError``, a wrong CRC or
    length :class:`gzip.BadGzipFile`.
    """

    def __init__(self, raw: Reader) -> None:
        self.raw = raw
        self._inflate = zlib.decompressobj(wbits=31)
        self._input = b""  # compressed bytes zlib has not consumed yet

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` (at most :data:`OUTPUT_PIECE`) decompressed bytes; ``b""`` at the end."""
        size = OUTPUT_PIECE if size < 0 else min(size, OUTPUT_PIECE)
        while True:
            if self._inflate.eof and not self._next_member():
                return b""
            if not self._input:
                self._input = self.raw.read(INPUT_PIECE)
                if not self._input:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            try:
                data = self._inflate.decompress(self._input, size)
            except zlib.error as exc:
                raise _gzip_error(exc) from exc
            self._input = self._inflate.unconsumed_tail
            if data:
                return data

    def _next_member(self) -> bool:
        """After a member's end: start the next one; False at the end of the file."""
        rest = self._inflate.unused_data.lstrip(b"\0")
        while not rest:
            more = self.raw.read(INPUT_PIECE)
            if not more:
                return False
            rest = more.lstrip(b"\0")
        self._inflate = zlib.decompressobj(wbits=31)
        self._input = rest
        return True


def _gzip_error(exc: zlib.error) -> Exception:
    """zlib's complaint about a gzip stream, in the words :mod:`gzip` uses where it has them."""
    text = str(exc)
    for words, meaning in _GZIP_ERRORS.items():
        if words in text:
            return gzip.BadGzipFile(meaning)
    return exc


def decompressing(raw: IO[bytes], fmt: str) -> Reader:
    """The tar stream of an archive of format ``fmt`` (a key of ``registry.archive.FORMATS``)."""
    if fmt == "tar.gz":
        return GzipReader(raw)
    if fmt == "tar.bz2":
        return bz2.BZ2File(raw, "rb")
    if fmt == "tar.xz":
        return lzma.LZMAFile(raw, "rb")
    return raw


class TarStream:
    """A forward-only, seekable view of a tar stream, for ``tarfile.open(fileobj=..., mode="r:")``.

    Reads are served from the last decompressed piece; ``seek`` moves
    forward by dropping bytes (it never goes back: tarfile reads an archive
    front to back when it only lists and reads members in order). Every
    decompressed byte, read or skipped, is reported to ``charge`` (the
    compression-ratio check). The last :data:`TAIL_SIZE` bytes read are kept
    for :meth:`since`.
    """

    def __init__(self, source: Reader, charge: Callable[[int], None]) -> None:
        self.source = source
        self.charge = charge
        #: offset in the stream of the next byte read
        self.position = 0
        self._piece = b""
        self._at = 0  # in ``_piece``, the next byte not handed out
        self._tail = bytearray()  # the bytes read last, ending at ``position``

    def _fill(self) -> bool:
        """Decompress the next piece; False at the end of the stream."""
        data = self.source.read(OUTPUT_PIECE)
        if not data:
            return False
        self.charge(len(data))
        self._piece, self._at = data, 0
        return True

    def read(self, size: int = -1, /) -> bytes:
        """``size`` bytes (fewer only at the end of the stream; a piece for ``size < 0``)."""
        if self._at >= len(self._piece) and not self._fill():
            return b""
        if size < 0:
            size = len(self._piece) - self._at
        parts = []
        while True:
            part = self._piece[self._at:self._at + size]
            self._at += len(part)
            size -= len(part)
            parts.append(part)
            if size <= 0 or not self._fill():
                break
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.position += len(data)
        self._tail += data
        if len(self._tail) > 2 * TAIL_SIZE:
            del self._tail[: len(self._tail) - TAIL_SIZE]
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        """Move forward to ``offset`` (or to the end, if the stream ends before it)."""
        if whence == io.SEEK_CUR:
            offset += self.position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a tar stream is only seekable forward from its start")
        if offset < self.position:
            raise io.UnsupportedOperation(f"a tar stream does not go back (from {self.position} to {offset})")
        if offset > self.position:
            self._tail.clear()
        while self.position < offset:
            if self._at >= len(self._piece) and not self._fill():
                break
            skipped = min(offset - self.position, len(self._piece) - self._at)
            self._at += skipped
            self.position += skipped
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def since(self, offset: int) -> bytes | None:
        """The bytes from stream ``offset`` up to :attr:`position`, if still kept."""
        start = self.position - len(self._tail)
        if offset < start:
            return None
        return bytes(self._tail[offset - start:])
