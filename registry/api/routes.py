"""HTTP handlers and the route table.

Handlers translate between HTTP and :class:`registry.service.Registry`:
authenticate, parse and validate fields, call the service, shape the answer.
Every route is served at the root, under ``/{stag,prod}`` and under
``/api/bkpaas3/{stag,prod}``, with or without the trailing slash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from registry.api.docs import DOCS_HTML
from registry.api.forms import parse_multipart, read_fields
from registry.api.openapi import build_openapi
from registry.api.serialize import record_json
from registry.archive import FORMATS
from registry.auth import ANONYMOUS, Principal, authenticate, parse_credentials
from registry.errors import (
    MethodNotAllowed,
    ObjectStoreException,
    PackageNotFound,
    PackageTooLarge,
    RangeNotSatisfiable,
    RegistryError,
    Unauthenticated,
    ValidationError,
)
from registry.records import ORDERINGS, CommitResult, Outcome
from registry.service import Registry, UploadRequest
from registry.storage import BlobMissing
from registry.validation import parse_bool, parse_package_url, parse_sha256, parse_slug, parse_version

STAGE_PREFIXES = ("", "/stag", "/prod", "/api/bkpaas3/stag", "/api/bkpaas3/prod")
PACKAGES = "/bkapps/applications/{code}/modules/{module_name}/source_package"
MULTIPART_OVERHEAD = 64 * 1024
MAX_SEARCH_TERM = 128


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def authorize(request: Request, code: str, *, write: bool) -> Principal:
    """The caller, checked for access to application ``code``.

    :raises Unauthenticated: no usable credential (401).
    :raises PermissionDenied: a valid credential without this right (403).
    """
    registry = _registry(request)
    credentials = parse_credentials(request.headers)
    if credentials is None:
        if not write and registry.settings["auth.anonymous_read"]:
            return ANONYMOUS
        raise Unauthenticated("no credential")
    principal = await anyio.to_thread.run_sync(authenticate, registry.credentials, credentials)
    assert principal is not None
    principal.require(code, write)
    request.state.operator = principal.operator
    return principal


def _module_path(request: Request) -> tuple[str, str]:
    code = request.path_params["code"]
    module = request.path_params["module_name"]
    errors: dict[str, list[tuple[str, str]]] = {}
    for field_name, value in (("code", code), ("module_name", module)):
        try:
            parse_slug(field_name, value)
        except ValidationError as exc:
            errors.update(exc.fields)
    if errors:
        raise ValidationError(errors)
    return code, module


def _package_id(request: Request) -> int:
    raw = request.path_params["package_id"]
    if raw == "link" and request.url.path.rstrip("/").endswith("/source_package/link"):
        # ``P/link/`` with a method other than POST lands on ``P/{id}/``: a wrong method, not a bad id.
        error = MethodNotAllowed()
        error.headers = {"Allow": "POST"}
        raise error
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ValidationError.single("id", "须为正整数", "must be a positive integer")
    return int(raw)


def _upload_request(fields: dict[str, Any], code: str, module: str, operator: str) -> UploadRequest:
    errors: dict[str, list[tuple[str, str]]] = {}
    values: dict[str, Any] = {}
    parsers = {
        "version": parse_version,
        "allow_overwrite": lambda v: parse_bool("allow_overwrite", v),
        "sha256": parse_sha256,
    }
    for name, parse in parsers.items():
        try:
            values[name] = parse(fields.get(name))
        except ValidationError as exc:
            errors.update(exc.fields)
    if errors:
        raise ValidationError(errors)
    return UploadRequest(code=code, module=module, operator=operator, **values)


def _origin_label(registry: Registry, package_url: str) -> str:
    try:
        return registry.resolve_origin(package_url).name
    except RegistryError:
        return "none"


async def _counted(registry: Registry, origin: str, upload: Awaitable[CommitResult]) -> CommitResult:
    """Await an upload, counting its outcome or error code by origin."""
    try:
        result = await upload
    except RegistryError as exc:
        registry.metrics.uploads.labels(origin, exc.code).inc()
        raise
    registry.metrics.uploads.labels(origin, result.outcome.value).inc()
    return result


def _upload_response(request: Request, result_outcome: Outcome, record_data: dict[str, Any]) -> Response:
    status = 201 if result_outcome in (Outcome.CREATED, Outcome.REVIVED) else 200
    return JSONResponse(record_data, status_code=status)


async def upload_link(request: Request) -> Response:
    code, module = _module_path(request)
    principal = await authorize(request, code, write=True)
    fields = await read_fields(request)
    errors: dict[str, list[tuple[str, str]]] = {}
    package_url = ""
    try:
        package_url = parse_package_url(fields.get("package_url"))
    except ValidationError as exc:
        errors.update(exc.fields)
    try:
        upload = _upload_request(fields, code, module, principal.operator)
    except ValidationError as exc:
        errors.update(exc.fields)
    if errors:
        raise ValidationError(errors)
    registry = _registry(request)
    result = await _counted(registry, _origin_label(registry, package_url), registry.upload_link(upload, package_url))
    return _upload_response(request, result.outcome, record_json(result.record, registry.time_zone))


async def upload_file(request: Request) -> Response:
    code, module = _module_path(request)
    principal = await authorize(request, code, write=True)
    registry = _registry(request)
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise ValidationError.single(
            "package", "须以 multipart/form-data 上传文件", "must be uploaded as multipart/form-data"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > registry.max_package_size + MULTIPART_OVERHEAD:
        raise PackageTooLarge(f"the request announces {declared} bytes")
    async def receive_and_ingest() -> CommitResult:
        async with registry.staging() as staged:
            form = await parse_multipart(request, "package", staged)
            if not form.file_seen:
                raise ValidationError.single("package", "该字段是必填项", "this field is required")
            upload = _upload_request(form.fields, code, module, principal.operator)
            return await registry.ingest(upload, staged, file_name=form.file_name, origin="upload")

    result = await _counted(registry, "upload", receive_and_ingest())
    return _upload_response(request, result.outcome, record_json(result.record, registry.time_zone))


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ValidationError.single(name, f"须为 {low} 到 {high} 之间的整数", f"must be an integer from {low} to {high}")
    return int(raw)


async def list_packages(request: Request) -> Response:
    code, module = _module_path(request)
    await authorize(request, code, write=False)
    registry = _registry(request)
    query = request.query_params
    limit = _int_param(request, "limit", 100, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, 2**62)
    order_by = query.get("order_by", "-created").strip() or "-created"
    if order_by not in ORDERINGS:
        raise ValidationError.single(
            "order_by", f"须为 {', '.join(ORDERINGS)} 之一", f"must be one of {', '.join(ORDERINGS)}"
        )
    search_term = query.get("search_term", "").strip()
    if len(search_term) > MAX_SEARCH_TERM:
        raise ValidationError.single("search_term", f"长度不能超过 {MAX_SEARCH_TERM}", f"must be at most {MAX_SEARCH_TERM} characters")
    include_deleted = parse_bool("include_deleted", query.get("include_deleted"))
    count, records = await anyio.to_thread.run_sync(
        lambda: registry.records.list(
            code, module, search_term=search_term, order_by=order_by, limit=limit,
            offset=offset, include_deleted=include_deleted,
        )
    )
    next_url = (
        str(request.url.include_query_params(limit=limit, offset=offset + limit))
        if offset + limit < count else None
    )
    previous_url = (
        str(request.url.include_query_params(limit=limit, offset=max(0, offset - limit)))
        if offset > 0 else None
    )
    return JSONResponse({
        "count": count,
        "next": next_url,
        "previous": previous_url,
        "results": [record_json(r, registry.time_zone) for r in records],
    })


async def get_package(request: Request) -> Response:
    code, module = _module_path(request)
    package_id = _package_id(request)
    await authorize(request, code, write=False)
    registry = _registry(request)
    record = await registry.get(code, module, package_id)
    return JSONResponse(record_json(record, registry.time_zone))


async def delete_package(request: Request) -> Response:
    code, module = _module_path(request)
    package_id = _package_id(request)
    principal = await authorize(request, code, write=True)
    await _registry(request).delete(code, module, package_id, principal.operator)
    return Response(status_code=204)


async def restore_package(request: Request) -> Response:
    code, module = _module_path(request)
    package_id = _package_id(request)
    principal = await authorize(request, code, write=True)
    registry = _registry(request)
    record = await registry.restore(code, module, package_id, principal.operator)
    return JSONResponse(record_json(record, registry.time_zone))


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (start, end exclusive); None to send everything.

    Several ranges, or a header in another unit or malformed, are ignored (the
    whole body is sent), as RFC 9110 allows. A syntactically valid range that
    starts past the end raises ``RangeNotSatisfiable``.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "" or int(last) == 0:
            if last == "":
                return None
            raise _unsatisfiable(spec, size)
        return max(0, size - int(last)), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(spec, size)
    return start, end


def _unsatisfiable(spec: str, size: int) -> RangeNotSatisfiable:
    error = RangeNotSatisfiable(f"bytes={spec}, size {size}")
    error.headers = {"Content-Range": f"bytes */{size}"}
    return error


def _content_disposition(file_name: str) -> str:
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in file_name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def _download_name(file_name: str, module: str, version: str, fmt: str) -> str:
    extension = FORMATS[fmt][0]
    file_name = file_name.replace("\\", "/").rsplit("/", 1)[-1]  # a client's folders are not part of the name
    if file_name.endswith("." + extension):
        return file_name
    return f"{module}-{version}.{extension}"


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


async def download_package(request: Request) -> Response:
    code, module = _module_path(request)
    package_id = _package_id(request)
    await authorize(request, code, write=False)
    registry = _registry(request)
    record = await registry.get(code, module, package_id)
    if record.is_deleted:
        raise PackageNotFound(f"id {package_id} is deleted")
    if record.broken:
        # fsck --repair found the stored bytes bad: refuse rather than serve them
        raise ObjectStoreException(f"id {package_id}: the stored blob failed its integrity check ({record.broken})")
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
    if request.method == "HEAD":
        # Headers only: streaming the blob would read it whole for nothing.
        if not await registry.storage.exists(record.blob_key):
            raise ObjectStoreException("the package's blob is missing from storage")
        return Response(status_code=status, headers=headers, media_type=FORMATS[record.format][1])
    body = await _open_blob(registry, record.blob_key, start, end)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=FORMATS[record.format][1])


async def _open_blob(registry: Registry, key: str, start: int, end: int) -> AsyncIterator[bytes]:
    """Open the blob and read its first chunk now, so a missing blob is an
    error response rather than a cut-off body."""
    stream = registry.storage.open(key, start, end)
    try:
        first = await anext(stream, b"")
    except BlobMissing:
        raise ObjectStoreException("the package's blob is missing from storage") from None

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return body()


async def metrics(request: Request) -> Response:
    registry = _registry(request)
    return Response(registry.metrics.render(), media_type=registry.metrics.content_type)


async def openapi(request: Request) -> Response:
    return JSONResponse(build_openapi())


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await _registry(request).check_ready()
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        raise ObjectStoreException(f"not ready: {type(exc).__name__}") from exc
    return JSONResponse({"status": "ready"})


def package_routes() -> list[tuple[str, str, Any]]:
    """(method, path below a stage prefix, handler) for every package route."""
    return [
        ("POST", f"{PACKAGES}/link/", upload_link),
        ("POST", f"{PACKAGES}/", upload_file),
        ("GET", f"{PACKAGES}/", list_packages),
        ("GET", f"{PACKAGES}/{{package_id}}/", get_package),
        ("DELETE", f"{PACKAGES}/{{package_id}}/", delete_package),
        ("GET", f"{PACKAGES}/{{package_id}}/download/", download_package),
        ("POST", f"{PACKAGES}/{{package_id}}/restore/", restore_package),
    ]


def build_routes() -> list[BaseRoute]:
    """The route table: package routes under every prefix, slash optional."""
    by_path: dict[str, dict[str, Any]] = {}
    for prefix in STAGE_PREFIXES:
        for method, path, handler in package_routes():
            for variant in (prefix + path, prefix + path.rstrip("/")):
                by_path.setdefault(variant, {})[method] = handler
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    for path, handlers in by_path.items():
        routes.append(Route(path, _dispatch(handlers), methods=list(handlers), name=None))
    return routes


def _dispatch(handlers: dict[str, Any]) -> Any:
    """One endpoint for several methods on one path (Starlette routes match
    on path first, so methods sharing a path must share an endpoint)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)  # type: ignore[no-any-return]

    return endpoint
