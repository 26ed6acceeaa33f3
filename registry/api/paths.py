"""Keep percent-encoded slashes inside one path segment.

ASGI servers decode ``%2F`` into ``/`` before routing, which would turn
``code=a%2Fb`` into two segments and a 404. Re-deriving the path from
``raw_path`` segment by segment keeps such a segment whole, so it reaches the
handler and fails validation (``VALIDATION_ERROR``) like any other bad slug.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send


class KeepEncodedSlashes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2f" in raw.lower():
            segments = raw.decode("latin-1").split("?", 1)[0].split("/")
            scope = dict(scope, path="/".join(s if "%2f" in s.lower() else unquote(s) for s in segments))
        await self.app(scope, receive, send)
