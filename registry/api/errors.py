"""Turn any failure into the contract's error shape.

``{"code", "detail"}`` (+ ``fields_detail`` / ``data``) with the header
``bkapi-error-code``; ``detail`` in Chinese unless ``Accept-Language``
prefers English. This module is the only place that builds error responses.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry.errors import MethodNotAllowed, NotFound, RegistryError

logger = logging.getLogger("registry.api")

ERROR_CODE_HEADER = "bkapi-error-code"


def preferred_language(accept_language: str | None) -> str:
    """``en`` when the header ranks English above Chinese, else ``zh``."""
    if not accept_language:
        return "zh"
    best: dict[str, float] = {}
    for position, item in enumerate(accept_language.split(",")):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        if primary not in ("en", "zh", "*"):
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        # Earlier entries win ties, as browsers list preferences in order.
        score = quality - position * 1e-6
        best[primary] = max(best.get(primary, -1.0), score)
    en, zh = best.get("en", -1.0), best.get("zh", best.get("*", -1.0))
    return "en" if en > 0 and en > zh else "zh"


def error_response(request: Request, exc: RegistryError) -> Response:
    """``exc`` as the contract's JSON body, status and ``bkapi-error-code``
    header, plus the error's own headers (and ``WWW-Authenticate`` on a 401);
    ``detail`` in the language :func:`preferred_language` picks."""
    language = preferred_language(request.headers.get("accept-language"))
    headers = {**exc.headers, ERROR_CODE_HEADER: exc.code}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="registry"'
    return JSONResponse(exc.body(language), status_code=exc.status, headers=headers)


async def handle_registry_error(request: Request, exc: Exception) -> Response:
    """The exception handler for :class:`RegistryError` (``exc`` must be one):
    its :func:`error_response`; a 5xx is also logged as a warning."""
    assert isinstance(exc, RegistryError)
    if exc.status >= 500:
        logger.warning("%s %s failed: %s %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(request, exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method) in the contract's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error = MethodNotAllowed()
        error.headers = dict(exc.headers or {})  # keep Allow (RFC 9110 requires it on a 405)
        return error_response(request, error)
    if exc.status_code == 404:
        return error_response(request, NotFound())
    generic = RegistryError(str(exc.detail))
    return JSONResponse(generic.body("en") | {"code": "HTTP_ERROR"}, status_code=exc.status_code,
                        headers={ERROR_CODE_HEADER: "HTTP_ERROR"})


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: log it with the traceback, answer the generic 500 shape."""
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, RegistryError())


EXCEPTION_HANDLERS = {
    RegistryError: handle_registry_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
