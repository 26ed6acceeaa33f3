"""Request bodies: JSON, urlencoded and streamed multipart.

Small bodies (the link route's fields) are read whole up to
:data:`MAX_FIELDS_BODY`. Multipart is parsed as a stream with
python-multipart's push parser: the ``package`` part is written straight into
the staging file as it arrives (hashed on the way), never spooled or buffered
whole; text parts are capped at :data:`MAX_FIELD_SIZE`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from registry.errors import PackageTooLarge, ValidationError

MAX_FIELDS_BODY = 64 * 1024
MAX_FIELD_SIZE = 16 * 1024
MAX_PARTS = 64
#: room for the fields and part headers around the package in a file upload
MULTIPART_OVERHEAD = 64 * 1024
#: all header lines of one part together (recent python-multipart releases
#: limit them too; older ones hand over whatever arrives)
MAX_PART_HEADERS = 16 * 1024
#: a multipart body that carries fields only (the link route): the fields'
#: own limits plus room for parts that are discarded
MAX_FIELDS_ONLY_MULTIPART = 1024 * 1024


class PackageSink(Protocol):
    """Where the ``package`` part's bytes go: a staging file, or a small
    upload's memory buffer (:class:`registry.small_uploads.BodyBuffer`).
    ``write`` raises ``PackageTooLarge`` once past ``max_size``."""

    max_size: int

    async def write(self, chunk: bytes) -> None: ...


def _body_error(zh: str, en: str) -> ValidationError:
    return ValidationError.single("body", zh, en)


def _media_type(request: Request) -> tuple[str, dict[bytes, bytes]]:
    media, params = parse_options_header(request.headers.get("content-type", ""))
    return media.decode("latin-1").lower(), params


async def _read_small_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FIELDS_BODY:
                raise _body_error(f"请求体不能超过 {MAX_FIELDS_BODY} 字节", f"request body exceeds {MAX_FIELDS_BODY} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _body_error("请求体不完整", "request body was cut short") from None
    return b"".join(chunks)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError.single(name, "须为 UTF-8 文本", "must be UTF-8 text") from None


async def read_fields(request: Request) -> dict[str, Any]:
    """The fields of a JSON, urlencoded or multipart body (files ignored).

    A body that starts with ``{`` is read as JSON whatever its declared type:
    ``curl -d '{...}'`` without a JSON content type is common in scripts
    written against the platform's examples.
    """
    media, _ = _media_type(request)
    if media == "multipart/form-data":
        return (await parse_multipart(request, None)).fields
    body = await _read_small_body(request)
    text = _decode(body, "body").strip()
    if media == "application/json" or text.startswith("{"):
        if not text:
            return {}
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
            raise _body_error("请求体不是合法的 JSON", "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _body_error("请求体须为 JSON 对象", "request body must be a JSON object")
        return data
    try:
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_PARTS))
    except ValueError:
        raise _body_error("请求体字段过多", "too many fields in the request body") from None


@dataclass
class MultipartResult:
    """Text fields, and what was seen of the file part."""

    fields: dict[str, str] = field(default_factory=dict)
    file_seen: bool = False
    file_name: str = ""


class _Part:
    def __init__(self) -> None:
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.header_size = 0
        self.headers: dict[str, bytes] = {}
        self.name = ""
        self.file_name: str | None = None
        self.data = bytearray()
        self.is_file_field = False


async def parse_multipart(request: Request, file_field: str | None, sink: PackageSink | None = None) -> MultipartResult:
    """Parse a multipart body as it streams in.

    :param file_field: the name of the part whose bytes go to ``sink``
        (``package``), or None to discard every part with a file name.
    :raises ValidationError: malformed body, oversized text field, a second
        file part, or too many parts.
    :raises PackageTooLarge: with a ``sink``, the whole body (discarded parts
        included) passes the sink's size limit plus :data:`MULTIPART_OVERHEAD`.
    """
    _, params = _media_type(request)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _body_error("multipart 请求缺少 boundary", "multipart body without a boundary")
    result = MultipartResult()
    events: list[tuple[str, bytes]] = []
    try:
        parser = _parser(boundary, events)
    except FormParserError:  # e.g. a boundary longer than the parser allows (RFC 2046: 70)
        raise _body_error("multipart boundary 无效", "invalid multipart boundary") from None
    part = _Part()
    parts = 0
    received = 0
    finished = False
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if sink is None and received > MAX_FIELDS_ONLY_MULTIPART:
                # No package goes anywhere on this route: do not read on and on.
                raise _body_error(f"请求体不能超过 {MAX_FIELDS_ONLY_MULTIPART} 字节",
                                  f"request body exceeds {MAX_FIELDS_ONLY_MULTIPART} bytes")
            if sink is not None and received > sink.max_size + MULTIPART_OVERHEAD:
                # Parts other than the package are discarded, but still
                # received: a chunked body must not keep the connection forever.
                raise PackageTooLarge(f"the request body exceeds {sink.max_size + MULTIPART_OVERHEAD} bytes")
            try:
                parser.write(chunk)
            except FormParserError:  # MultipartParseError and every other complaint of the parser
                raise _body_error("multipart 请求体格式错误", "malformed multipart body") from None
            for kind, data in events:
                if kind == "begin":
                    part = _Part()
                    parts += 1
                    if parts > MAX_PARTS:
                        raise _body_error("multipart 分段过多", "too many multipart parts")
                elif kind in ("hfield", "hvalue"):
                    part.header_size += len(data)
                    if part.header_size > MAX_PART_HEADERS:
                        raise _body_error("multipart 分段头过长", "multipart part headers too long")
                    (part.header_field if kind == "hfield" else part.header_value).extend(data)
                elif kind == "hend":
                    part.headers[part.header_field.decode("latin-1").lower()] = bytes(part.header_value)
                    part.header_field.clear()
                    part.header_value.clear()
                elif kind == "hdone":
                    _start_part(part, file_field, result)
                elif kind == "data":
                    if part.is_file_field:
                        if sink is not None:
                            await sink.write(data)
                    elif part.file_name is None:
                        part.data += data
                        if len(part.data) > MAX_FIELD_SIZE:
                            raise ValidationError.single(
                                part.name or "body", f"字段不能超过 {MAX_FIELD_SIZE} 字节",
                                f"field exceeds {MAX_FIELD_SIZE} bytes",
                            )
                elif kind == "end":
                    if not part.is_file_field and part.file_name is None and part.name:
                        result.fields[part.name] = _decode(bytes(part.data), part.name)
                elif kind == "done":
                    finished = True
            events.clear()
    except ClientDisconnect:
        raise _body_error("请求体不完整", "request body was cut short") from None
    if not finished:
        raise _body_error("multipart 请求体不完整", "incomplete multipart body")
    return result


def _parser(boundary: bytes, events: list[tuple[str, bytes]]) -> MultipartParser:
    """A push parser for ``boundary`` that appends each callback to ``events``
    as ``(kind, bytes)``, for the caller to act on after each ``write``.

    :raises FormParserError: python-multipart refuses the boundary.
    """
    return MultipartParser(
        boundary,
        {
            "on_part_begin": lambda: events.append(("begin", b"")),
            "on_part_data": lambda data, start, end: events.append(("data", bytes(data[start:end]))),
            "on_part_end": lambda: events.append(("end", b"")),
            "on_header_field": lambda data, start, end: events.append(("hfield", bytes(data[start:end]))),
            "on_header_value": lambda data, start, end: events.append(("hvalue", bytes(data[start:end]))),
            "on_header_end": lambda: events.append(("hend", b"")),
            "on_headers_finished": lambda: events.append(("hdone", b"")),
            "on_end": lambda: events.append(("done", b"")),
        },
    )


def _start_part(part: _Part, file_field: str | None, result: MultipartResult) -> None:
    disposition = part.headers.get("content-disposition", b"")
    _, options = parse_options_header(disposition)
    part.name = options.get(b"name", b"").decode("utf-8", "replace")
    raw_file_name = options.get(b"filename")
    part.file_name = raw_file_name.decode("utf-8", "replace") if raw_file_name is not None else None
    if file_field is not None and part.name == file_field:
        if result.file_seen:
            raise ValidationError.single(file_field, "只能上传一个文件", "only one file may be uploaded")
        part.is_file_field = True
        result.file_seen = True
        result.file_name = part.file_name or ""
