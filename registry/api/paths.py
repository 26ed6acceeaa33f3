"""The URL layout of the API, and keeping percent-encoded slashes inside one path segment.

Every package route lives below :data:`PACKAGES`, served under each of
:data:`STAGE_PREFIXES`; the route table (:mod:`registry.api.routes`), the
OpenAPI document and the metrics' route labels are all derived from these two.

ASGI servers decode ``%2F`` into ``/`` before routing, which would turn
``code=a%2Fb`` into two segments and a 404. Re-deriving the path from
``raw_path`` segment by segment keeps such a segment whole, so it reaches the
handler and fails validation (``VALIDATION_ERROR``) like any other bad slug.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

#: where the package routes are served: the root, and the platform's stage prefixes
STAGE_PREFIXES = ("", "/stag", "/prod", "/api/bkpaas3/stag", "/api/bkpaas3/prod")
#: a module's packages, below a stage prefix
PACKAGES = "/bkapps/applications/{code}/modules/{module_name}/source_package"


class KeepEncodedSlashes:
    """ASGI middleware: rewrites ``scope["path"]`` so that a segment holding
    ``%2F`` stays one (still encoded) segment; other segments are decoded as
    usual. Requests without ``%2F`` pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2f" in raw.lower():
            segments = raw.decode("latin-1").split("?", 1)[0].split("/")
            scope = dict(scope, path="/".join(s if "%2f" in s.lower() else unquote(s) for s in segments))
        await self.app(scope, receive, send)
