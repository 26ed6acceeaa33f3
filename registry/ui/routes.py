"""The web interface's routes, mounted at ``/ui``, and the headers on every response there."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.ui import views

STATIC = Path(__file__).parent / "static"

#: Sent with every response below ``/ui``: no inline script, no framing,
#: no MIME sniffing, no referrer leaving the site.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """No page here: a 404 page (inside the headers middleware, unlike the app's own 404)."""
    response = await views.page(views.not_found_page, public=True)(Request(scope, receive))
    await response(scope, receive, send)


def ui_routes() -> list[BaseRoute]:
    """``GET /`` (to ``/ui/``) and everything below ``/ui``; only when ``[ui] enabled``."""
    pages = Router(routes=[
        Route("/", views.page(views.applications_page), methods=["GET"]),
        Route("/login", views.page(views.login_page, public=True), methods=["GET"]),
        Route("/login", views.page(views.login_submit, public=True), methods=["POST"]),
        Route("/logout", views.page(views.logout_page, public=True), methods=["GET"]),
        Route("/logout", views.page(views.logout_submit, public=True), methods=["POST"]),
        Route("/lang", views.page(views.switch_language, public=True), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="ui-static"),
        Route("/{code}/", views.page(views.modules_page), methods=["GET"]),
        Route("/{code}/{module}/", views.page(views.packages_page), methods=["GET"]),
        Route("/{code}/{module}/{package_id}/", views.page(views.package_page), methods=["GET"]),
    ], default=_not_found)
    return [
        Route("/", views.root_redirect, methods=["GET"]),
        Route("/ui", views.root_redirect, methods=["GET"]),
        Mount("/ui", app=SecurityHeaders(pages)),
    ]
