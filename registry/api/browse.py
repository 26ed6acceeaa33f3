"""GET ``/bkapps/applications/`` and ``/bkapps/applications/{code}/modules/``.

The applications and modules a credential may read, with their live package
counts and last upload, for clients and the web interface alike. A
credential limited to some application codes sees only those. Counts are
read from the record store's per-module counters; the applications list's
``next``/``previous`` carry an opaque ``cursor`` (``offset`` keeps working).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from registry.api import pages
from registry.api.routes import (
    MAX_SEARCH_TERM,
    Endpoint,
    _int_param,
    _registry,
    authorize,
    identify,
)
from registry.api.serialize import format_time
from registry.errors import ValidationError
from registry.validation import parse_slug

APPLICATIONS = "/bkapps/applications/"
MODULES = "/bkapps/applications/{code}/modules/"


def _search_term(request: Request) -> str:
    term = request.query_params.get("search_term", "").strip()
    if len(term) > MAX_SEARCH_TERM:
        raise ValidationError.single("search_term", f"长度不能超过 {MAX_SEARCH_TERM}",
                                     f"must be at most {MAX_SEARCH_TERM} characters")
    return term


async def list_applications(request: Request) -> Response:
    """GET ``/bkapps/applications/``: one page of the applications the caller may read, by code."""
    principal = await identify(request, write=False)
    registry = _registry(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, 2**62)
    search_term = _search_term(request)
    cursor = request.query_params.get("cursor", "").strip()
    after, backward = pages.decode_code(cursor) if cursor else (None, False)
    keyed = bool(cursor)
    # counts come from the per-module counters; the links carry keyset
    # cursors (by code), so the last page costs what the first does
    count, apps = await registry.read(
        lambda: registry.records.applications(apps=principal.apps, search_term=search_term,
                                              limit=limit + 1 if keyed else limit, offset=0 if keyed else offset,
                                              after=after, backward=backward)
    )
    shown, next_cursor, previous_cursor = pages.code_window(
        [a.name for a in apps], after, backward, limit=limit, keyed=keyed, offset=offset, count=count)
    apps = apps[shown]
    base = request.url.remove_query_params(["offset", "cursor"])
    next_url = str(base.include_query_params(limit=limit, cursor=next_cursor)) if next_cursor else None
    previous_url = str(base.include_query_params(limit=limit, cursor=previous_cursor)) if previous_cursor else None
    zone = registry.time_zone
    return JSONResponse({
        "count": count,
        "next": next_url,
        "previous": previous_url,
        "results": [{"code": a.name, "modules": a.modules, "packages": a.packages,
                     "last_uploaded": format_time(a.last_uploaded, zone) if a.last_uploaded else None}
                    for a in apps],
    })


async def list_modules(request: Request) -> Response:
    """GET ``/bkapps/applications/{code}/modules/``: the application's modules, by name
    (an application with no package has none)."""
    code = parse_slug("code", request.path_params["code"])
    await authorize(request, code, write=False)
    registry = _registry(request)
    modules = await registry.read(registry.records.modules, code)
    zone = registry.time_zone
    results = [{"name": m.name, "packages": m.packages,
                "last_uploaded": format_time(m.last_uploaded, zone) if m.last_uploaded else None}
               for m in modules]
    return JSONResponse({"count": len(results), "next": None, "previous": None, "results": results})


def browse_routes() -> list[BaseRoute]:
    """Both routes, relative to a stage prefix (:func:`registry.api.routes.build_routes` mounts them)."""
    return [Endpoint(APPLICATIONS, GET=list_applications), Endpoint(MODULES, GET=list_modules)]
