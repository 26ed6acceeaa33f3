"""Per-request observability: request ids, JSON access log lines, HTTP metrics.

A pure ASGI middleware (no response buffering, so downloads stay streamed).
Each request gets an ``X-Request-ID``: the client's, when it sent a sane one,
or a new one; it is echoed in the response and logged with the access line.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import uuid
from typing import Any

from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api.paths import PACKAGES, STAGE_PREFIXES
from registry.metrics import Metrics
from registry.printable import safe_json

access_logger = logging.getLogger("registry.access")
REQUEST_ID_HEADER = b"x-request-id"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
#: The methods HTTP defines; any other becomes the label ``other``.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


def route_template(scope: Scope) -> str:
    """The ``route`` label: the matched route's path without its stage prefix,
    package routes always with their trailing slash (both spellings are one
    route), other routes (``/healthz``, ``/metrics``, …) as they are; or
    ``unmatched`` when no route matched."""
    route = scope.get("route")
    if not isinstance(route, Route):
        return "unmatched"
    return _template(route.path)


#: the stage prefixes, longest first
_PREFIXES = sorted(STAGE_PREFIXES, key=len, reverse=True)


@functools.lru_cache(maxsize=256)  # one entry per route of the table: a closed set
def _template(path: str) -> str:
    for prefix in _PREFIXES:
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix):]
            break
    return path + "/" if path.startswith(PACKAGES) and not path.endswith("/") else path


class ObserveRequests:
    """ASGI middleware: gives each HTTP request an ``X-Request-ID`` (echoed in
    the response), counts it in ``metrics`` by method, route template and
    status (each from a closed set), and writes its JSON access line to
    ``registry.access``. Bodies
    pass through unbuffered; other scope types pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Built in the serving process (after any fork), on its first request.
        self._pid = os.getpid()
        # The labelled series of each (method, route, status) seen, and of
        # each (method, route): prometheus-client's labels() validates and
        # locks on every call, a tenth of this middleware's cost per request.
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        state = {"status": 500, "sent": 0, "received": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "http.response.body":
                state["sent"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            self._record(scope, request_id, state, time.perf_counter() - started)

    def _record(self, scope: Scope, request_id: str, state: dict[str, int], duration: float) -> None:
        route = route_template(scope)
        method = method_label(scope["method"])
        key = (method, route, status_label(state["status"]))
        counted = self._counted.get(key)
        if counted is None:
            counted = self._counted[key] = self.metrics.requests.labels(*key)
        counted.inc()
        timed = self._timed.get(key[:2])
        if timed is None:
            timed = self._timed[key[:2]] = self.metrics.latency.labels(method, route)
        timed.observe(duration)
        self.metrics.bytes_in.inc(state["received"])
        self.metrics.bytes_out.inc(state["sent"])
        if state["status"] == 503:
            self.metrics.storage_errors.inc()
        operator = scope.get("state", {}).get("operator")
        access_logger.info(safe_json({
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": state["status"],
            "bytes_in": state["received"],
            "bytes_out": state["sent"],
            "duration_ms": round(duration * 1000, 2),
            "operator": operator,
            "client": (scope.get("client") or ("", 0))[0],
            "pid": self._pid,  # which of `serve --workers N` answered
        }))


def method_label(method: str) -> str:
    """The ``method`` label: one of :data:`KNOWN_METHODS`, else ``other``.

    A method is any token a client cares to send; as a label each new one
    would be a new series kept forever, so labels come from a closed set.
    """
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    """The ``status`` label: the code the server chose, within 100-599 (else ``other``)."""
    return str(status) if 100 <= status <= 599 else "other"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER:
            candidate: str = value.decode("latin-1").strip()
            if SANE_REQUEST_ID.fullmatch(candidate):
                return str(candidate)
            break
    return uuid.uuid4().hex
