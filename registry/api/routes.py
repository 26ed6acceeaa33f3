"""HTTP handlers and the route table.

Handlers translate between HTTP and :class:`registry.service.Registry`:
authenticate, parse and validate fields, call the service, shape the answer.
The API's routes (:func:`api_routes`) are one list, mounted once per prefix:
at the root, under ``/{stage}`` and under ``/api/bkpaas3/{stage}`` (``stage``
being ``stag`` or ``prod``), each with or without the trailing slash. Adding a
route is one line in that list. In the handlers' docstrings ``P`` stands for
a module's package path, :data:`registry.api.paths.PACKAGES`. Download
responses are built in :mod:`registry.api.download`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio.to_thread
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from registry.api import pages
from registry.api.docs import DOCS_HTML
from registry.api.download import package_response
from registry.api.forms import (
    MULTIPART_OVERHEAD,
    PackageSink,
    parse_multipart,
    read_fields,
)
from registry.api.openapi import STAGES, build_openapi
from registry.api.paths import PACKAGES
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
from registry.records import ORDERINGS, Order, Outcome
from registry.service import Registry, UploadRequest
from registry.small_uploads import SMALL_BODY
from registry.storage import BlobMissing
from registry.ui.auth import session_principal
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


async def identify(request: Request, *, write: bool) -> Principal:
    """The caller: a gateway credential, else the web session, else the
    anonymous reader when ``auth.anonymous_read`` allows a read.

    :raises Unauthenticated: no usable credential (401).
    :raises PermissionDenied: a web session's write without its CSRF token (403).
    """
    registry = _registry(request)
    credentials = parse_credentials(request.headers)
    if credentials is None:
        # The web interface's session cookie (CSRF-checked for writes).
        session = await session_principal(request, registry)
        if session is not None:
            request.state.operator = session.operator
            return session
        if not write and registry.settings["auth.anonymous_read"]:
            return ANONYMOUS
        raise Unauthenticated("no credential")
    # a credential checked moments ago is answered from memory, with no
    # thread hand-off: cheap requests do not queue behind slow store work
    principal = registry.credentials.cached(credentials)
    if principal is None:
        principal = await registry.read(authenticate, registry.credentials, credentials)
    assert principal is not None
    request.state.operator = principal.operator
    return principal


async def authorize(request: Request, code: str, *, write: bool) -> Principal:
    """The caller, checked for access to application ``code``.

    :raises Unauthenticated: no usable credential (401).
    :raises PermissionDenied: a valid credential without this right (403).
    """
    principal = await identify(request, write=write)
    principal.require(code, write)
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


#: The response header that says what an upload did, for clients that tell the user.
OUTCOME_HEADER = "Registry-Upload-Outcome"


def _upload_response(result_outcome: Outcome, record_data: dict[str, Any]) -> Response:
    """201 for a new (or revived) version, 200 for an overwrite or an identical re-upload;
    ``Registry-Upload-Outcome`` names which (``created``, ``revived``, ``overwritten``, ``identical``)."""
    status = 201 if result_outcome in (Outcome.CREATED, Outcome.REVIVED) else 200
    return JSONResponse(record_data, status_code=status, headers={OUTCOME_HEADER: result_outcome.value})


async def link_request(request: Request) -> tuple[UploadRequest, str]:
    """The validated upload and ``package_url`` of a ``P/link/`` body (also ``P/jobs/``'s),
    for a writer of the module.

    :raises ValidationError: every malformed field at once.
    """
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
    return upload, package_url


async def upload_link(request: Request) -> Response:
    """POST ``P/link/``: the registry fetches ``package_url`` and stores it; answers the record."""
    upload, package_url = await link_request(request)
    registry = _registry(request)
    result = await registry.upload_link(upload, package_url)
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

    async def receive(sink: PackageSink) -> tuple[UploadRequest, str]:
        form = await parse_multipart(request, "package", sink)
        if not form.file_seen:
            raise ValidationError.single("package", "该字段是必填项", "this field is required")
        return _upload_request(form.fields, code, module, principal.operator), form.file_name

    # A body framed by its Content-Length alone cannot pass it. The HTTP
    # parser refuses a request that also says Transfer-Encoding; were one to
    # arrive, its chunks would frame it, its length unknown: it would stream.
    if declared_size is not None and declared_size <= SMALL_BODY and "transfer-encoding" not in request.headers:
        # received whole into memory, then stored in one worker-thread hand-off
        result = await registry.upload_small(receive)
    else:
        result = await registry.upload_file(receive)
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
    order = Order(order_by)
    cursor = query.get("cursor", "").strip()
    position = pages.decode(cursor, order) if cursor else None
    # one record more than the page, read in the direction of travel, tells
    # whether a page follows that way; the links carry keyset cursors, so
    # walking a whole module by them costs each page the same
    count, records = await registry.read_slow(
        lambda: registry.records.list(
            code, module, search_term=search_term, order_by=order, include_deleted=include_deleted,
            limit=pages.read_limit(position, limit),
            offset=offset if position is None else 0,
            after=position.key if position else None,
            backward=position.backward if position else False,
        )
    )
    base = request.url.remove_query_params("offset")
    shown = pages.window(order, position, records, limit=limit, offset=offset, count=count)
    records, next_cursor, previous_cursor = shown.records, shown.next, shown.previous
    next_url = str(base.include_query_params(limit=limit, cursor=next_cursor)) if next_cursor else None
    previous_url = (str(base.include_query_params(limit=limit, cursor=previous_cursor))
                    if previous_cursor else None)
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


class _StageConvertor(Convertor[str]):
    """``{stage:stage}``: one of the platform's stages, nothing else."""

    regex = "|".join(STAGES)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("stage", _StageConvertor())

#: The stage prefixes :func:`api_routes` are mounted under; they are served at the root too.
API_PREFIXES = ("/api/bkpaas3/{stage:stage}", "/{stage:stage}")


class Endpoint(Route):
    """One path with a handler per method; the trailing slash is optional.

    One route per path (not per method) so that a wrong method answers 405
    with every allowed method in ``Allow``; ``HEAD`` is served wherever
    ``GET`` is.
    """

    def __init__(self, path: str, **handlers: Callable[[Request], Awaitable[Response]]) -> None:
        self.handlers = handlers

        async def dispatch(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await self.handlers[method](request)

        super().__init__(path, dispatch, methods=list(handlers))

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.NONE and self.path.endswith("/") and scope.get("type") == "http" \
                and not scope["path"].endswith("/"):
            match, child = super().matches({**scope, "path": scope["path"] + "/"})
        return match, child


def api_routes() -> list[BaseRoute]:
    """The API's routes, relative to a stage prefix: add a route here, in one line."""
    # Imported here: those modules reuse this one's helpers. Listed first, so
    # ``P/jobs/`` and ``P/uploads/`` win over ``P/{package_id}/``.
    from registry.api import jobs, tus

    return [
        Endpoint(f"{PACKAGES}/jobs/", POST=jobs.create_job),
        Endpoint(f"{PACKAGES}/jobs/{{job_id}}/", GET=jobs.get_job, DELETE=jobs.cancel_job),
        Endpoint(f"{PACKAGES}/uploads/", OPTIONS=tus.options, POST=tus.create_upload),
        Endpoint(f"{PACKAGES}/uploads/{{upload_id}}", OPTIONS=tus.options, GET=tus.head_or_get_upload,
                 PATCH=tus.patch_upload, DELETE=tus.terminate_upload),
        Endpoint(f"{PACKAGES}/", GET=list_packages, POST=upload_file),
        Endpoint(f"{PACKAGES}/link/", POST=upload_link),
        Endpoint(f"{PACKAGES}/{{package_id}}/", GET=get_package, DELETE=delete_package),
        Endpoint(f"{PACKAGES}/{{package_id}}/download/", GET=download_package),
        Endpoint(f"{PACKAGES}/{{package_id}}/restore/", POST=restore_package),
    ]


def service_routes() -> list[BaseRoute]:
    """Routes served at the root only."""
    return [
        Endpoint("/healthz", GET=healthz),
        Endpoint("/readyz", GET=readyz),
        Endpoint("/metrics", GET=metrics),
        Endpoint("/openapi.json", GET=openapi),
        Endpoint("/docs", GET=docs),
    ]


def build_routes(extra: Sequence[BaseRoute] = ()) -> list[BaseRoute]:
    """The route table: the service routes and :func:`api_routes` at the root, and
    :func:`api_routes` mounted under each of :data:`API_PREFIXES`; ``extra`` routes
    (relative to a stage prefix, like :func:`api_routes`) are served the same way.

    The root's routes are listed themselves rather than mounted at ``""``: a
    mount takes every path below it, so a wrong method on ``/healthz`` would
    answer 404 from inside the mount instead of 405.
    """
    api = [*api_routes(), *extra]
    return [*service_routes(), *api, *(Mount(prefix, routes=api) for prefix in API_PREFIXES)]
