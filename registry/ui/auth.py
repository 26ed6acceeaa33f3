"""Who a browser is: the credential behind its session cookie.

The JSON routes accept the session cookie as well as the gateway headers, so
the web interface's scripts upload, delete and restore through exactly the
same handlers and rules as any other client. A cookie-authenticated request
that changes state must echo the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

from starlette.requests import Request

from registry.auth import Principal
from registry.errors import PermissionDenied
from registry.service import Registry
from registry.ui.session import CSRF_HEADER, Session, SessionCodec, csrf_matches

#: Methods that change nothing; every other one needs the CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_codec(request: Request) -> SessionCodec | None:
    """The app's session codec, or None when the web interface is off."""
    return getattr(request.app.state, "ui_sessions", None)


async def principal_for(registry: Registry, session: Session | None) -> Principal | None:
    """The live credential a session names, or None (signed out, revoked, unknown)."""
    if session is None or session.credential_id is None:
        return None
    return await registry.read(registry.credentials.by_id, session.credential_id)


async def session_principal(request: Request, registry: Registry) -> Principal | None:
    """The principal of the request's session cookie, or None when it has no
    signed-in session.

    :raises PermissionDenied: a signed-in session sends a state-changing
        request without its CSRF token.
    """
    codec = session_codec(request)
    if codec is None:
        return None
    session = codec.read(request)
    principal = await principal_for(registry, session)
    if principal is None or session is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
        raise PermissionDenied("missing or wrong CSRF token")
    return principal
