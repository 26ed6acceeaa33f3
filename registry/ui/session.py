"""Web sessions: a signed cookie holding a credential's id and a CSRF token.

The cookie never holds a secret: only the credential's id, which is looked up
(and checked not revoked) on every request, and a random CSRF token that
state-changing requests must echo (form field or ``X-CSRF-Token`` header).
It is signed with HMAC-SHA256 under ``[ui] session_secret``; when that is
empty a key is generated once and kept beside the SQLite database (mode
0600), so every process sharing that database folder signs alike. With a
database server (``[database] url``) instances share no folder, so the key
must be configured (:func:`session_key`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from registry.settings import Settings, SettingsError
from registry.ui.cookies import cookie

COOKIE = "registry_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SECRET_FILE = "ui-session-secret"
#: A session older than this is ignored (the person signs in again).
MAX_AGE = 12 * 3600
#: Longest cookie value read; anything longer is not ours.
MAX_COOKIE = 1024


@dataclass(frozen=True)
class Session:
    """One browser's session: ``credential_id`` None means signed out."""

    credential_id: int | None
    csrf: str
    issued: int

    @classmethod
    def fresh(cls, credential_id: int | None = None) -> Session:
        """A new session with a new CSRF token."""
        return cls(credential_id, secrets.token_urlsafe(24), int(time.time()))


def load_secret(configured: str, database_path: str) -> bytes:
    """The signing key: ``configured`` when set, else the key file beside the
    database, created (0600, exclusively, so concurrent workers agree) when missing."""
    if configured:
        return configured.encode("utf-8")
    path = Path(database_path).parent / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
    for _ in range(50):  # another process may have created it a moment ago and not yet written it
        key = path.read_text().strip()
        if key:
            return key.encode("utf-8")
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty; remove it to generate a new session key")


def check_session_secret(settings: Settings) -> None:
    """Refuse a configuration whose instances could not agree on a session key;
    creates nothing (``check-config`` calls it).

    :raises SettingsError: ``[database] url`` is set and ``[ui] session_secret``
        is not: several instances on one database server would each generate a
        key of their own, and a session signed by one would fail on the others.
    """
    if not settings["ui.session_secret"] and settings["database.url"]:
        raise SettingsError(
            "configuration key 'ui.session_secret' must be set when 'database.url' is: instances sharing a"
            " database server share no folder to keep a generated key in (or set [ui] enabled = false)"
        )


def session_key(settings: Settings) -> bytes:
    """The signing key of this registry's web sessions (see :func:`load_secret`).

    :raises SettingsError: see :func:`check_session_secret`.
    """
    check_session_secret(settings)
    return load_secret(settings["ui.session_secret"], settings["database.path"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Signs sessions into cookie values and reads them back."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"registry-ui-session\0" + key).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def dumps(self, session: Session) -> str:
        """The cookie value for ``session``."""
        payload = _b64(json.dumps({"c": session.credential_id, "t": session.csrf, "i": session.issued},
                                  separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}"

    def loads(self, value: str | None) -> Session | None:
        """The session in a cookie value, or None: absent, forged, malformed or too old."""
        if not value or len(value) > MAX_COOKIE or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            credential_id, csrf, issued = data["c"], data["t"], data["i"]
        except (ValueError, KeyError, TypeError):
            return None
        if not (credential_id is None or (isinstance(credential_id, int) and not isinstance(credential_id, bool))):
            return None
        if not isinstance(csrf, str) or not isinstance(issued, int) or time.time() - issued > MAX_AGE:
            return None
        return Session(credential_id, csrf, issued)

    def read(self, request: Request) -> Session | None:
        """The request's session, or None."""
        return self.loads(cookie(request, COOKIE))

    def write(self, response: Response, request: Request, session: Session) -> None:
        """Set the session cookie: HttpOnly, SameSite=Strict, Secure over https."""
        response.set_cookie(COOKIE, self.dumps(session), path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")


def csrf_matches(session: Session, sent: str | None) -> bool:
    """True when ``sent`` is this session's CSRF token (compared in constant time)."""
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode("utf-8", "replace"))
