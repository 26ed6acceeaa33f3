"""The web interface's pages, served under ``/ui/`` (see ``ui.md``).

Pages are rendered on the server from Jinja2 templates with autoescaping,
so every client-supplied string (names, versions, operators, app_desc.yaml)
is text, never markup. The pages hold no rules of their own: what a viewer
may see or change is decided by the same :class:`registry.auth.Principal`
checks as the JSON routes, and the page scripts write through those routes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from registry.api import pages
from registry.api.paths import PACKAGES
from registry.auth import ANONYMOUS, Principal, authenticate
from registry.errors import (
    NotFound,
    PermissionDenied,
    RegistryError,
    Unauthenticated,
    ValidationError,
)
from registry.records import Order
from registry.service import Registry
from registry.ui import format as fmt
from registry.ui.auth import principal_for, session_codec
from registry.ui.i18n import LANG_COOKIE, LANGUAGES, language, translator
from registry.ui.session import CSRF_FIELD, Session, SessionCodec, csrf_matches
from registry.validation import parse_slug

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).parent
#: Rows per page of the applications, modules and packages tables.
PAGE_SIZE = 50
#: The packages table's order: newest first.
ORDER = Order.CREATED_DESC
#: Largest offset a page link may carry (a bigger one is not a page anyone reached).
MAX_OFFSET = 10**9
#: Largest sign-in form accepted, in bytes.
MAX_FORM = 16 * 1024
MAX_SEARCH = 128



@functools.cache
def templates() -> jinja2.Environment:
    """The pages' template environment, made by the first page served: Jinja2
    is imported then, not at start-up (about 15 ms), and not at all while
    nobody opens the web interface."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        human_size=fmt.human_size, iso_utc=fmt.iso_utc, utc_text=fmt.utc_text, short_sha=fmt.short_sha,
        q=quote_segment,
    )
    return env


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page: ``principal`` None when nobody is signed in and
    anonymous reading is off; :data:`ANONYMOUS` for an anonymous reader."""

    principal: Principal | None
    session: Session
    lang: str
    #: the session is new and must be sent back as a cookie
    new_session: bool

    @property
    def signed_in(self) -> bool:
        return self.principal is not None and self.principal is not ANONYMOUS

    def can_write(self, code: str) -> bool:
        """Whether write controls for ``code`` are shown; the JSON routes decide again."""
        principal = self.principal
        return (principal is not None and principal is not ANONYMOUS and not principal.read_only
                and (not principal.apps or code in principal.apps))


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _codec(request: Request) -> SessionCodec:
    codec = session_codec(request)
    assert codec is not None, "the UI routes are mounted only with a session codec"
    return codec


async def _viewer(request: Request) -> Viewer:
    """The request's viewer, with a fresh session when it brought none."""
    registry = _registry(request)
    session = _codec(request).read(request)
    new = session is None
    if session is None:
        session = Session.fresh()
    principal = await principal_for(registry, session)
    if principal is None and registry.settings["auth.anonymous_read"]:
        principal = ANONYMOUS
    return Viewer(principal, session, language(request), new)


def _here(request: Request) -> str:
    """This page's path and query, for ``next=`` links (always below ``/ui/``)."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _safe_next(value: str | None) -> str:
    """A ``next`` target that stays in the web interface (no open redirect)."""
    if value and value.startswith("/ui/") and "//" not in value and "\\" not in value:
        return value
    return "/ui/"


def render(request: Request, viewer: Viewer, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The page ``template`` with the common context, the session cookie when new."""
    principal = viewer.principal
    here = _here(request)
    html = templates().get_template(template).render(
        t=translator(viewer.lang), lang=viewer.lang, csrf=viewer.session.csrf, csrf_field=CSRF_FIELD,
        viewer=viewer, signed_in=viewer.signed_in, anonymous=principal is ANONYMOUS,
        operator=principal.operator if principal is not None else "",
        read_only=bool(principal and principal.read_only),
        lang_links={lang: "/ui/lang?" + urlencode({"to": lang, "next": here}) for lang in LANGUAGES},
        here=here, **context,
    )
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    if viewer.new_session:
        _codec(request).write(response, request, viewer.session)
    return response


def _error_page(request: Request, viewer: Viewer, exc: RegistryError) -> HTMLResponse:
    return render(request, viewer, "error.html", status=exc.status, code=exc.code, detail=exc.detail(viewer.lang))


Handler = Callable[[Request, Viewer], Awaitable[Response]]


def page(handler: Handler, *, public: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A route endpoint around ``handler``: resolves the viewer, sends people
    who must sign in to the sign-in page, and shows a registry error as a
    page with its code and detail in the viewer's language."""

    async def endpoint(request: Request) -> Response:
        viewer = await _viewer(request)
        if viewer.principal is None and not public:
            response: Response = RedirectResponse("/ui/login?" + urlencode({"next": _here(request)}), status_code=303)
            if viewer.new_session:
                _codec(request).write(response, request, viewer.session)
            return response
        try:
            return await handler(request, viewer)
        except RegistryError as exc:
            return _error_page(request, viewer, exc)

    return endpoint


def _slug(request: Request, name: str, field: str) -> str:
    return parse_slug(field, request.path_params[name])


def _offset(request: Request) -> int:
    raw = request.query_params.get("offset", "").strip()
    return min(int(raw), MAX_OFFSET) if raw.isascii() and raw.isdigit() and len(raw) <= 12 else 0


def _search(request: Request, name: str = "q") -> str:
    term = request.query_params.get(name, "").strip()
    if len(term) > MAX_SEARCH:
        raise ValidationError.single(name, f"长度不能超过 {MAX_SEARCH}", f"must be at most {MAX_SEARCH} characters")
    return term


def _cursor(request: Request) -> str:
    return request.query_params.get("cursor", "").strip()


def _pager(request: Request, next_cursor: str | None, previous_cursor: str | None) -> dict[str, str | None]:
    """Links to the previous and next page by keyset cursor (each page costs the
    same, the last one too), keeping the other query parameters."""
    def link(cursor: str | None) -> str | None:
        if cursor is None:
            return None
        params = {k: v for k, v in request.query_params.items() if k not in ("offset", "cursor")}
        params["cursor"] = cursor
        return request.url.path + "?" + urlencode(params)
    return {"previous": link(previous_cursor), "next": link(next_cursor)}


def _require_read(viewer: Viewer, code: str) -> None:
    assert viewer.principal is not None
    viewer.principal.require(code, False)


# -- pages ---------------------------------------------------------------------


async def applications_page(request: Request, viewer: Viewer) -> Response:
    """``/ui/``: the applications the viewer may read, filtered by ``q``."""
    assert viewer.principal is not None
    registry = _registry(request)
    term, offset, cursor = _search(request), _offset(request), _cursor(request)
    after, backward = pages.decode_code(cursor) if cursor else (None, False)
    keyed = bool(cursor)
    apps = viewer.principal.apps
    count, rows = await registry.read(
        lambda: registry.records.applications(
            apps=apps, search_term=term, limit=PAGE_SIZE + 1 if keyed else PAGE_SIZE,
            offset=0 if keyed else offset, after=after, backward=backward)
    )
    shown, next_cursor, previous_cursor = pages.code_window(
        [row.name for row in rows], after, backward, limit=PAGE_SIZE, keyed=keyed, offset=offset, count=count)
    return render(request, viewer, "applications.html", rows=rows[shown], count=count, q=term,
                  pager=_pager(request, next_cursor, previous_cursor))


async def modules_page(request: Request, viewer: Viewer) -> Response:
    """``/ui/{code}/``: the application's modules."""
    code = _slug(request, "code", "code")
    _require_read(viewer, code)
    registry = _registry(request)
    rows = await registry.read(registry.records.modules, code)
    return render(request, viewer, "modules.html", code=code, rows=rows)


#: Files larger than this are uploaded by the page over tus (``P/uploads/``) in
#: pieces, so a reload or a dropped connection resumes instead of starting again.
RESUMABLE_ABOVE = 64 * 1024 * 1024


def _api_path(code: str, module: str) -> str:
    return PACKAGES.format(code=code, module_name=module) + "/"


async def packages_page(request: Request, viewer: Viewer) -> Response:
    """``/ui/{code}/{module}/``: the module's packages, newest first, 50 a page."""
    code = _slug(request, "code", "code")
    module = _slug(request, "module", "module_name")
    _require_read(viewer, code)
    registry = _registry(request)
    term, offset, cursor = _search(request), _offset(request), _cursor(request)
    position = pages.decode(cursor, ORDER) if cursor else None
    show_deleted = request.query_params.get("deleted", "") in ("1", "true", "on")
    # the count is the module's counter row (or the search's index), the page
    # one index seek from the cursor: the last page costs what the first does;
    # a listing runs with the slow reads, like the list route's
    count, records = await registry.read_slow(
        lambda: registry.records.list(
            code, module, search_term=term, order_by=ORDER, include_deleted=show_deleted,
            limit=pages.read_limit(position, PAGE_SIZE), offset=0 if position else offset,
            after=position.key if position else None, backward=position.backward if position else False)
    )
    shown = pages.window(ORDER, position, records, limit=PAGE_SIZE, offset=offset, count=count)
    return render(request, viewer, "packages.html", code=code, module=module, records=shown.records, count=count,
                  q=term, show_deleted=show_deleted, pager=_pager(request, shown.next, shown.previous),
                  api=_api_path(code, module), can_write=viewer.can_write(code),
                  resumable_above=RESUMABLE_ABOVE, resumable_keep=registry.settings["uploads.expire_after"])


async def package_page(request: Request, viewer: Viewer) -> Response:
    """``/ui/{code}/{module}/{id}/``: one package, its content and its history."""
    code = _slug(request, "code", "code")
    module = _slug(request, "module", "module_name")
    raw_id = request.path_params["package_id"]
    if not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > 18:
        raise ValidationError.single("id", "须为正整数", "must be a positive integer")
    _require_read(viewer, code)
    registry = _registry(request)
    record = await registry.get(code, module, int(raw_id))
    details, history = await registry.read(
        lambda: (registry.records.package_details(record.id),
                 registry.records.package_events(code, module, record.id))
    )
    api = _api_path(code, module)
    download = f"{api}{record.id}/download/"
    base = str(request.base_url).rstrip("/")
    file_name = fmt.download_file_name(record.package_name, record.format)
    return render(
        request, viewer, "package.html", code=code, module=module, record=record, details=details,
        history=history, api=api, download=download,
        curl=fmt.curl_line(base, download, file_name),
        pull=fmt.pull_line(base, code, module, record.id, file_name),
        can_write=viewer.can_write(code),
    )


async def not_found_page(request: Request, viewer: Viewer) -> Response:
    """Any other path below ``/ui/``."""
    raise NotFound(request.url.path)


async def login_page(request: Request, viewer: Viewer) -> Response:
    """``GET /ui/login``: the sign-in forms."""
    return render(request, viewer, "login.html", next=_safe_next(request.query_params.get("next")), error=None)


async def _read_form(request: Request) -> dict[str, str]:
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > MAX_FORM:
        raise ValidationError.single("form", "表单过大或缺少长度", "the form is too large or has no length")
    form = await request.form(max_files=0, max_fields=16)
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def login_submit(request: Request, viewer: Viewer) -> Response:
    """``POST /ui/login``: check the token or app code and secret, start a session.

    The session keeps the credential's id only; a wrong credential shows the
    registry's ``UNAUTHENTICATED`` on the form.
    """
    fields = await _read_form(request)
    if not csrf_matches(viewer.session, fields.get(CSRF_FIELD)):
        raise PermissionDenied("missing or wrong CSRF token")
    target = _safe_next(fields.get("next"))
    token = fields.get("token", "").strip()
    app_code, app_secret = fields.get("app_code", "").strip(), fields.get("app_secret", "").strip()
    if token:
        credentials: tuple[str, ...] = ("token", token)
    elif app_code and app_secret:
        credentials = ("app", app_code, app_secret)
    else:
        credentials = ()
    try:
        if not credentials:
            raise Unauthenticated("no credential")
        registry = _registry(request)
        principal = await registry.read(authenticate, registry.credentials, credentials)
    except Unauthenticated as exc:
        return render(request, viewer, "login.html", status=401, next=target, error=(exc.code, exc.detail(viewer.lang)))
    assert principal is not None and principal.credential_id is not None
    response = RedirectResponse(target, status_code=303)
    _codec(request).write(response, request, Session.fresh(principal.credential_id))
    return response


async def logout_page(request: Request, viewer: Viewer) -> Response:
    """``GET /ui/logout``: a page with the Sign out button (signing out is a POST)."""
    return render(request, viewer, "logout.html")


async def logout_submit(request: Request, viewer: Viewer) -> Response:
    """``POST /ui/logout``: end the session (a new, signed-out one replaces it)."""
    fields = await _read_form(request)
    if not csrf_matches(viewer.session, fields.get(CSRF_FIELD)):
        raise PermissionDenied("missing or wrong CSRF token")
    response = RedirectResponse("/ui/login?signed_out=1", status_code=303)
    _codec(request).write(response, request, Session.fresh())
    return response


async def switch_language(request: Request, viewer: Viewer) -> Response:
    """``/ui/lang?to=en&next=…``: keep the chosen language in a cookie, go back."""
    chosen = request.query_params.get("to", "")
    response = RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    if chosen in LANGUAGES:
        response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 86400, path="/", samesite="strict",
                            secure=request.url.scheme == "https")
    return response


async def root_redirect(request: Request) -> Response:
    """``GET /``: the web interface."""
    return RedirectResponse("/ui/", status_code=307)


def quote_segment(value: str) -> str:
    """A path segment, percent-encoded (slugs never need it; kept for safety)."""
    return quote(value, safe="")

