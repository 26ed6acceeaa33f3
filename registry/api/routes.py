"""HTTP handlers and the route table.

Handlers translate between HTTP and :class:`registry.service.Registry`:
authenticate, parse and validate fields, call the service, shape the answer.
Every route is served at the root, under ``/{stag,prod}`` and under
``/api/bkpaas3/{stag,prod}``, with or without the trailing slash. In the
handlers' docstrings ``P`` stands for a module's package path,
:data:`registry.api.paths.PACKAGES`. Download responses are built in
:mod:`registry.api.download`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from registry.api.docs import DOCS_HTML
from registry.api.download import package_response
from registry.api.forms import MULTIPART_OVERHEAD, parse_multipart, read_fields
from registry.api.openapi import build_openapi
from registry.api.paths import PACKAGES, STAGE_PREFIXES
from registry.api.serialize import record_json
from registry.auth import ANONYMOUS, Principal, authenticate, parse_credentials
from registry.errors import (
    DatabaseUnavailable,
    InsufficientStorage,
    MethodNotAllowed,
    ObjectStoreException,
    PackageTooLarge,
    RegistryError,
    Unauthenticated,
    ValidationError,
)
from registry.records import ORDERINGS, CommitResult, Order, Outcome
from registry.service import Registry, UploadRequest
from registry.storage import BlobMissing
from registry.validation import (
    parse_bool,
    parse_decimal,
    parse_package_url,
    parse_sha256,
    parse_slug,
    parse_version,
)

logger = logging.getLogger("registry.api")

MAX_SEARCH_TERM = 128
#: Times a download follows its record to a newer blob (each retry means an
#: overwrite committed meanwhile).
DOWNLOAD_ATTEMPTS = 5


def _registry(request: Request) -> Registry:
    """The service this app serves."""
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
    principal = await registry.read(authenticate, registry.credentials, credentials)
    assert principal is not None
    principal.require(code, write)
    request.state.operator = principal.operator
    return principal


def _module_path(request: Request) -> tuple[str, str]:
    """(code, module_name) from the path; :raises ValidationError: naming each bad slug."""
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
    """The ``package_id`` path segment as an int.

    :raises ValidationError: not a positive integer of at most 18 digits.
    :raises MethodNotAllowed: the segment is ``link`` (a non-POST ``P/link/``).
    """
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
    """The upload's common fields, validated; :raises ValidationError: naming every bad field."""
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


async def _counted(registry: Registry, origin: str, upload: Awaitable[CommitResult]) -> CommitResult:
    """Await an upload, counting its outcome or error code by origin."""
    try:
        result = await upload
    except RegistryError as exc:
        registry.metrics.uploads.labels(origin, exc.code).inc()
        raise
    registry.metrics.uploads.labels(origin, result.outcome.value).inc()
    return result


def _upload_response(result_outcome: Outcome, record_data: dict[str, Any]) -> Response:
    """201 for a new (or revived) version, 200 for an overwrite or an identical re-upload."""
    status = 201 if result_outcome in (Outcome.CREATED, Outcome.REVIVED) else 200
    return JSONResponse(record_data, status_code=status)


async def upload_link(request: Request) -> Response:
    """POST ``P/link/``: the registry fetches ``package_url`` and stores it; answers the record."""
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
    try:
        origin = registry.resolve_origin(package_url)
    except RegistryError as exc:
        registry.metrics.uploads.labels("none", exc.code).inc()  # no enabled origin takes the URL
        raise
    result = await _counted(registry, origin.name, registry.upload_link(upload, origin, package_url))
    return _upload_response(result.outcome, record_json(result.record, registry.time_zone))


async def upload_file(request: Request) -> Response:
    """POST ``P/``: stores the multipart field ``package``; answers the record."""
    code, module = _module_path(request)
    principal = await authorize(request, code, write=True)
    registry = _registry(request)
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise ValidationError.single(
            "package", "须以 multipart/form-data 上传文件", "must be uploaded as multipart/form-data"
        )
    declared = request.headers.get("content-length", "").strip()
    declared_size = parse_decimal(declared)
    if declared_size is None and declared.isascii() and declared.isdigit():
        declared_size = registry.max_package_size + MULTIPART_OVERHEAD + 1  # more digits than any real size
    if declared_size is not None and declared_size > registry.max_package_size + MULTIPART_OVERHEAD:
        raise PackageTooLarge(f"the request announces {declared[:40]} bytes")
    async def receive_and_ingest() -> CommitResult:
        async with registry.staging() as staged:
            form = await parse_multipart(request, "package", staged)
            if not form.file_seen:
                raise ValidationError.single("package", "该字段是必填项", "this field is required")
            upload = _upload_request(form.fields, code, module, principal.operator)
            return await registry.ingest(upload, staged, file_name=form.file_name, origin="upload")

    result = await _counted(registry, "upload", receive_and_ingest())
    return _upload_response(result.outcome, record_json(result.record, registry.time_zone))


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as an int in [low, high], ``default`` when absent or blank.

    :raises ValidationError: anything else.
    """
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    value = parse_decimal(raw)
    if value is None or not low <= value <= high:
        raise ValidationError.single(name, f"须为 {low} 到 {high} 之间的整数", f"must be an integer from {low} to {high}")
    return value


async def list_packages(request: Request) -> Response:
    """GET ``P/``: one page of the module's records, with ``count`` and next/previous links."""
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
    count, records = await registry.read(
        lambda: registry.records.list(
            code, module, search_term=search_term, order_by=Order(order_by), limit=limit,
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
    """GET ``P/{id}/``: the record, deleted or not."""
    code, module = _module_path(request)
    package_id = _package_id(request)
    await authorize(request, code, write=False)
    registry = _registry(request)
    record = await registry.get(code, module, package_id)
    return JSONResponse(record_json(record, registry.time_zone))


async def delete_package(request: Request) -> Response:
    """DELETE ``P/{id}/``: soft-deletes the record; 204, also when it already was."""
    code, module = _module_path(request)
    package_id = _package_id(request)
    principal = await authorize(request, code, write=True)
    await _registry(request).delete(code, module, package_id, principal.operator)
    return Response(status_code=204)


async def restore_package(request: Request) -> Response:
    """POST ``P/{id}/restore/``: undoes a soft delete; answers the record."""
    code, module = _module_path(request)
    package_id = _package_id(request)
    principal = await authorize(request, code, write=True)
    registry = _registry(request)
    record = await registry.restore(code, module, package_id, principal.operator)
    return JSONResponse(record_json(record, registry.time_zone))


async def download_package(request: Request) -> Response:
    """GET or HEAD ``P/{id}/download/``: the package's bytes (see :mod:`registry.api.download`)."""
    code, module = _module_path(request)
    package_id = _package_id(request)
    await authorize(request, code, write=False)
    registry = _registry(request)
    record = await registry.get(code, module, package_id)
    for _ in range(DOWNLOAD_ATTEMPTS):
        try:
            return await package_response(registry.storage, record, request)
        except BlobMissing:
            # An overwrite commits its record, then deletes the old blob: a
            # reader holding the old record finds it gone. The record read
            # again names the new blob (headers and bytes both come from it,
            # so they always agree); the same blob missing twice is a fault.
            fresh = await registry.get(code, module, package_id)
            if fresh.blob_key == record.blob_key:
                break
            record = fresh
    raise ObjectStoreException("the package's blob is missing from storage")


async def metrics(request: Request) -> Response:
    """GET ``/metrics``: this instance's Prometheus metrics, in the text format."""
    registry = _registry(request)
    # Rendering walks every series: off the event loop, like any other blocking work.
    body = await anyio.to_thread.run_sync(registry.metrics.render)
    return Response(body, media_type=registry.metrics.content_type)


async def openapi(request: Request) -> Response:
    """GET ``/openapi.json``: the OpenAPI 3.1 description of every route."""
    return JSONResponse(build_openapi())


async def docs(request: Request) -> Response:
    """GET ``/docs``: an HTML page rendering ``/openapi.json``."""
    return HTMLResponse(DOCS_HTML)


async def healthz(request: Request) -> Response:
    """GET ``/healthz``: liveness, always ``{"status": "ok"}`` while the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """GET ``/readyz``: ``{"status": "ready"}`` when the database and the storage answer, else 503
    (507 ``INSUFFICIENT_STORAGE`` when the storage or staging disk is full).

    The route needs no credential, so the answer names no bucket, endpoint or
    path; the reason goes to the log for the operator.
    """
    try:
        await _registry(request).check_ready()
    except Exception as exc:  # any failure means "not ready"
        reason = exc.detail("en") if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
        logger.warning("not ready: %s", reason)
        if isinstance(exc, DatabaseUnavailable):
            raise DatabaseUnavailable("not ready") from exc
        if isinstance(exc, InsufficientStorage):
            raise InsufficientStorage("not ready") from exc  # a full disk is worth naming: 507
        raise ObjectStoreException("not ready") from exc
    return JSONResponse({"status": "ready"})


def package_routes() -> list[tuple[str, str, Any]]:
    """(method, path below a stage prefix, handler) for every package route."""
    # Imported here: those modules reuse this one's helpers. Listed first, so
    # ``P/jobs/`` and ``P/uploads/`` win over ``P/{package_id}/``.
    from registry.api import jobs, tus

    return [
        ("POST", f"{PACKAGES}/jobs/", jobs.create_job),
        ("GET", f"{PACKAGES}/jobs/{{job_id}}/", jobs.get_job),
        ("DELETE", f"{PACKAGES}/jobs/{{job_id}}/", jobs.cancel_job),
        ("OPTIONS", f"{PACKAGES}/uploads/", tus.options),
        ("POST", f"{PACKAGES}/uploads/", tus.create_upload),
        ("OPTIONS", f"{PACKAGES}/uploads/{{upload_id}}", tus.options),
        ("GET", f"{PACKAGES}/uploads/{{upload_id}}", tus.head_or_get_upload),
        ("PATCH", f"{PACKAGES}/uploads/{{upload_id}}", tus.patch_upload),
        ("DELETE", f"{PACKAGES}/uploads/{{upload_id}}", tus.terminate_upload),
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
