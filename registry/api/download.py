"""Serving a package's bytes: ETag and ``If-None-Match``, one byte range
(with ``If-Range``), ``HEAD``, and a streamed body.

The body is read a chunk at a time as the connection drains: uvicorn waits
for a response's send buffer to empty before it accepts the next chunk, so
a download holds at most a chunk read and a chunk being sent, and a client
that stops reading stops the reads. Chunks shrink as more downloads run
(:func:`registry.transfers.download_chunk_size`).

The route handler (:func:`registry.api.routes.download_package`) authorizes
and finds the record; :func:`package_response` answers with its bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from registry.archive import FORMATS
from registry.errors import ObjectStoreException, PackageNotFound, RangeNotSatisfiable
from registry.records import Record
from registry.storage import BlobMissing, Storage
from registry.transfers import downloads_in_flight
from registry.validation import MAX_NUMBER_DIGITS, parse_decimal

#: Stands for any byte position of more than :data:`MAX_NUMBER_DIGITS` digits.
FAR_BEYOND: int = 10**MAX_NUMBER_DIGITS


async def package_response(storage: Storage, record: Record, request: Request) -> Response:
    """The answer to a GET or HEAD of ``record``'s bytes.

    304 (no body) when ``If-None-Match`` matches the ETag (the sha256); 206
    with ``Content-Range`` for one satisfiable ``bytes=`` range (unless
    ``If-Range`` names another ETag); else 200 with the whole blob. A HEAD
    gets the same status and headers, without reading the blob.

    :raises PackageNotFound: the record is soft-deleted.
    :raises ObjectStoreException: ``fsck --repair`` marked the blob broken.
    :raises BlobMissing: the record's blob is not in storage (an overwrite
        may have replaced it since the record was read: the caller decides).
    :raises RangeNotSatisfiable: the range starts past the end (416).
    """
    if record.is_deleted:
        raise PackageNotFound(f"id {record.id} is deleted")
    if record.broken:
        # fsck --repair found the stored bytes bad: refuse rather than serve them
        raise ObjectStoreException(f"id {record.id}: the stored blob failed its integrity check ({record.broken})")
    etag = f'"{record.sha256}"'
    headers = {
        "ETag": etag,
        "X-Checksum-Sha256": record.sha256,
        "Accept-Ranges": "bytes",
        "Content-Disposition": _content_disposition(
            _download_name(record.file_name, record.module, record.version, record.format)
        ),
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag, "X-Checksum-Sha256": record.sha256})
    size = record.package_size
    status = 200
    start, end = 0, size
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() == etag):
        selected = _parse_range(range_header, size)
        if selected is not None:
            start, end = selected
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    media_type = FORMATS[record.format][1]
    if request.method == "HEAD":
        # Headers only: streaming the blob would read it whole for nothing.
        if not await storage.exists(record.blob_key):
            raise BlobMissing(record.blob_key)
        return Response(status_code=status, headers=headers, media_type=media_type)
    body = await _open_blob(storage, record.blob_key, start, end)
    if isinstance(body, bytes):  # all of it came with the first read: no stream to run
        return Response(body, status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (start, end exclusive); None to send everything.

    Several ranges, or a header in another unit or malformed, are ignored (the
    whole body is sent), as RFC 9110 allows. A syntactically valid range that
    starts past the end raises ``RangeNotSatisfiable``.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first, last = _position(first_text), _position(last_text)
    if not dash or (first_text and first is None) or (last_text and last is None):
        return None
    if first is None:
        if last is None:
            return None
        if last == 0:
            raise _unsatisfiable(spec, size)
        return max(0, size - last), size
    end = min(size, last + 1) if last is not None else size
    if last is not None and last < first:
        return None
    if first >= size:
        raise _unsatisfiable(spec, size)
    return first, end


def _position(text: str) -> int | None:
    """A range's byte position, or None when blank or not ASCII digits.

    A number longer than any blob's size (past :data:`MAX_NUMBER_DIGITS`) is
    read as :data:`FAR_BEYOND` instead of being converted: a start there is
    past the end (416), an end or suffix length there means "to the end".
    """
    if not text.isascii() or not text.isdigit():
        return None
    value = parse_decimal(text.lstrip("0") or "0")  # leading zeros say nothing about size
    return FAR_BEYOND if value is None else value


def _unsatisfiable(spec: str, size: int) -> RangeNotSatisfiable:
    """The 416 error for range ``spec``, with the ``Content-Range: bytes */size`` RFC 9110 asks for."""
    error = RangeNotSatisfiable(f"bytes={spec}, size {size}")
    error.headers = {"Content-Range": f"bytes */{size}"}
    return error


def _content_disposition(file_name: str) -> str:
    """An ``attachment`` header value: an ASCII-safe ``filename`` plus the exact UTF-8 ``filename*``."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in file_name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def _download_name(file_name: str, module: str, version: str, fmt: str) -> str:
    """The uploaded file's base name when it ends in the format's extension,
    else ``{module}-{version}.{extension}``."""
    extension = FORMATS[fmt][0]
    file_name = file_name.replace("\\", "/").rsplit("/", 1)[-1]  # a client's folders are not part of the name
    if file_name.endswith("." + extension):
        return file_name
    return f"{module}-{version}.{extension}"


def _etag_matches(header: str, etag: str) -> bool:
    """True when an ``If-None-Match`` value lists ``etag`` (weak or strong) or ``*``."""
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


async def _open_blob(storage: Storage, key: str, start: int, end: int) -> AsyncIterator[bytes] | bytes:
    """Open the blob and read its first chunk now, so a missing blob is an
    error response rather than a cut-off body; the bytes themselves when that
    chunk is the whole range (a small package: a plain response is cheaper
    than a stream, which runs a task listening for the client's disconnect).

    :raises BlobMissing: no blob under ``key``.
    """
    stream = storage.open(key, start, end)
    downloads_in_flight.add(1)  # counted while opening too: a burst of downloads opens at once
    try:
        first = await anext(stream, b"")
    finally:
        downloads_in_flight.add(-1)
    if len(first) == end - start:
        await stream.aclose()  # type: ignore[attr-defined]
        return first

    async def body() -> AsyncIterator[bytes]:
        # Counted while streamed: the storage sizes its chunks by how many
        # downloads share the process's budget (registry.transfers).
        downloads_in_flight.add(1)
        try:
            if first:
                yield first
            async for chunk in stream:
                yield chunk
        finally:
            downloads_in_flight.add(-1)
            await stream.aclose()  # type: ignore[attr-defined]

    return body()
