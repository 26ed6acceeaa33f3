"""HTTP handlers of resumable uploads: a tus 1.0.0 server at ``P/uploads/``.

Extensions: ``creation``, ``termination``, ``checksum`` (sha256). Every tus
request but ``OPTIONS`` must carry ``Tus-Resumable: 1.0.0`` (else 412) and
every answer, errors included, carries it back. ``GET P/uploads/{id}`` is not
tus: it answers ``{"state", "package", "error"}`` like a job. The work below
HTTP is in :mod:`registry.resumable`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from registry.api.errors import preferred_language
from registry.api.routes import _module_path, _registry, _upload_request, authorize
from registry.errors import (
    InvalidPackage,
    JobNotFound,
    PackageTooLarge,
    RegistryError,
    UnsupportedMediaType,
    UploadOffsetMismatch,
    ValidationError,
)
from registry.jobs import error_json
from registry.records import COMPLETING, FAILED, RECEIVING, SUCCEEDED, Upload, utc_now
from registry.resumable import Resumable
from registry.storage import UPLOAD_ID
from registry.tus import (
    CHECKSUM_ALGORITHMS,
    METADATA_KEYS,
    OFFSET_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    parse_checksum,
    parse_metadata,
    parse_number,
    require_tus_version,
)

MAX_FILE_NAME = 255
Handler = Callable[[Request], Awaitable[Response]]


def _tus(handler: Handler) -> Handler:
    """Add ``Tus-Resumable`` to every answer of ``handler``, errors included."""

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            response = await handler(request)
        except RegistryError as exc:
            exc.headers.setdefault("Tus-Resumable", TUS_VERSION)
            raise
        response.headers["Tus-Resumable"] = TUS_VERSION
        return response

    return wrapped


def resumable(request: Request) -> Resumable:
    """This app's resumable uploads."""
    return request.app.state.resumable  # type: ignore[no-any-return]


def _upload_id(request: Request) -> str:
    """The upload id of the path. :raises JobNotFound: not 32 hex digits (404)."""
    raw = str(request.path_params["upload_id"])
    if not UPLOAD_ID.fullmatch(raw):
        raise JobNotFound()
    return raw


async def _find(request: Request, code: str, module: str) -> Upload:
    """The upload named by the path in this module; expired ones are gone.

    :raises JobNotFound: no such upload (404).
    """
    raw = _upload_id(request)
    upload = await resumable(request).registry.read(resumable(request).store.get_upload, code, module, raw)
    if upload is None or upload.expires < utc_now():
        raise JobNotFound(raw)
    return upload


def _file_name(meta: dict[str, str]) -> str:
    """``filename`` from the metadata: required, at most 255 characters, no
    control characters; only its last path segment is kept."""
    name = meta.get("filename", "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", ".."):
        raise ValidationError.single("Upload-Metadata", "须包含 filename", "must contain filename")
    if len(name) > MAX_FILE_NAME or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise ValidationError.single("Upload-Metadata", "filename 不合法",
                                     f"filename must be 1-{MAX_FILE_NAME} printable characters")
    return name


@_tus
async def options(request: Request) -> Response:
    """OPTIONS: what this tus server supports; no credential needed."""
    registry = _registry(request)
    return Response(status_code=204, headers={
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(registry.max_package_size),
        "Tus-Checksum-Algorithm": CHECKSUM_ALGORITHMS,
    })


@_tus
async def create_upload(request: Request) -> Response:
    """POST ``P/uploads/``: tus creation; 201 with the upload's ``Location``.

    The metadata is validated now as ``P/`` validates its fields; a
    ``Upload-Length`` above ``limits.max_package_size`` is 413.
    """
    require_tus_version(request.headers)
    code, module = _module_path(request)
    principal = await authorize(request, code, write=True)
    registry = _registry(request)
    if "upload-defer-length" in request.headers:
        raise ValidationError.single("Upload-Defer-Length", "不支持", "is not supported; send Upload-Length")
    length = parse_number(request.headers, "Upload-Length")
    if length > registry.max_package_size:
        raise PackageTooLarge(f"Upload-Length {length} is above {registry.max_package_size}")
    if length == 0:
        raise InvalidPackage("the package is empty")
    meta = parse_metadata(request.headers.get("upload-metadata"))
    file_name = _file_name(meta)
    fields = {key: meta[key] for key in METADATA_KEYS if key in meta and key != "filename"}
    upload = _upload_request(fields, code, module, principal.operator)
    created = await resumable(request).create(upload, length, file_name)
    location = str(request.url).split("?", 1)[0].rstrip("/") + f"/{created.id}"
    return Response(status_code=201, headers={"Location": location})


@_tus
async def head_or_get_upload(request: Request) -> Response:
    """HEAD: the tus offset; GET: ``{"state", "package", "error"}`` (not part of tus)."""
    code, module = _module_path(request)
    if request.method == "HEAD":
        require_tus_version(request.headers)
    await authorize(request, code, write=False)
    upload = await _find(request, code, module)
    if upload.state in (RECEIVING, COMPLETING) and upload.offset == upload.length:
        resumable(request).finish_later(upload)  # all its bytes, no outcome: see finish_later
    if request.method == "HEAD":
        upload = await resumable(request).recover(upload, save=False)
        return Response(status_code=200, headers={
            "Upload-Offset": str(upload.offset),
            "Upload-Length": str(upload.length),
            "Cache-Control": "no-store",
        })
    state = upload.state if upload.state in (SUCCEEDED, FAILED) else "running"
    error = None
    if upload.state == FAILED and upload.result:
        error = error_json(upload.result, preferred_language(request.headers.get("accept-language")))
    package = dict(upload.result) if upload.state == SUCCEEDED and upload.result else None
    return JSONResponse({"state": state, "package": package, "error": error})


@_tus
async def patch_upload(request: Request) -> Response:
    """PATCH: append the body at ``Upload-Offset``; the PATCH reaching
    ``Upload-Length`` also runs the ``P/`` pipeline and answers its outcome:
    204 with ``Registry-Package-Id``, or the error ``P/`` would answer."""
    require_tus_version(request.headers)
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType(f"PATCH bodies must be {OFFSET_CONTENT_TYPE}")
    code, module = _module_path(request)
    await authorize(request, code, write=True)
    offset = parse_number(request.headers, "Upload-Offset")
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    declared = parse_number(request.headers, "Content-Length") if "content-length" in request.headers else None
    upload_id = _upload_id(request)
    service = resumable(request)
    await service.assemblies.drop_idle()
    if not service.claim(upload_id):
        raise UploadOffsetMismatch("another request is writing to this upload")
    try:
        return await _patch_claimed(request, service, (code, module, upload_id), offset, checksum, declared)
    finally:
        service.release(upload_id)


async def _patch_claimed(request: Request, service: Resumable, path: tuple[str, str, str], offset: int,
                         checksum: tuple[str, bytes] | None, declared: int | None) -> Response:
    """The PATCH once no other request of this process writes to the upload.

    The write lease is taken first, by the transaction that also reads the
    upload: a PATCH costs the record store two transactions, this one and
    the one that records the new offset (and releases the lease). Checks
    that fail after the lease was taken release it again.
    """
    code, module, upload_id = path
    async with service.leased(upload_id) as lease:
        if lease is None:
            await _find(request, code, module)  # 404 when there is no such upload in this module
            raise UploadOffsetMismatch("another request is writing to this upload")
        locked = lease.upload
        if locked.code != code or locked.module != module or locked.expires < utc_now():
            raise JobNotFound(upload_id)
        locked = await service.recover(locked, save=True)
        _check_offset(locked, offset)
        if declared is not None and declared > locked.length - locked.offset:
            raise PackageTooLarge(f"the chunk passes Upload-Length {locked.length}")
        if locked.offset < locked.length:
            received = await service.receive(locked, request.stream(), checksum, ClientDisconnect, declared)
            lease.held = not received.released
            if received.disconnected:
                return Response(status_code=204)  # nobody reads it; the bytes that came are kept
            locked = received.upload
        if locked.offset < locked.length:
            return Response(status_code=204, headers={"Upload-Offset": str(locked.offset)})
        try:
            result = await service.complete_leased(lease, locked)
        except RegistryError as exc:
            exc.headers["Upload-Offset"] = str(locked.length)
            raise
        return Response(status_code=204, headers={"Upload-Offset": str(locked.length),
                                                  "Registry-Package-Id": str(result.record.id)})


def _check_offset(upload: Upload, offset: int) -> None:
    """:raises UploadOffsetMismatch: the upload has its outcome or is not at ``offset`` (409)."""
    if upload.state in (SUCCEEDED, FAILED):
        error = UploadOffsetMismatch("the upload is already complete")
    elif offset != upload.offset:
        error = UploadOffsetMismatch(f"the upload is at offset {upload.offset}")
    else:
        # All bytes in but no outcome yet (the completing PATCH died, or the
        # storage failed): an empty PATCH at the end runs the pipeline again.
        return
    error.headers["Upload-Offset"] = str(upload.offset)
    raise error


@_tus
async def terminate_upload(request: Request) -> Response:
    """DELETE: tus termination; the bytes and the upload are gone, 204."""
    require_tus_version(request.headers)
    code, module = _module_path(request)
    await authorize(request, code, write=True)
    upload = await _find(request, code, module)
    service = resumable(request)
    if not service.claim(upload.id):
        raise UploadOffsetMismatch("another request is writing to this upload")
    try:
        async with service.leased(upload.id) as lease:
            if lease is None:
                raise UploadOffsetMismatch("another request is writing to this upload")
            lease.held = False  # terminating ends the upload and its lease, or leaves both to expire
            await service.terminate(lease.upload)
    finally:
        service.release(upload.id)
    return Response(status_code=204)

