"""Credentials: made by the operator's CLI, stored as hashes, checked per request.

Two kinds exist, matching the platform's gateway headers:

- access tokens, sent as ``X-BKAPI-AUTHORIZATION: {"access_token": "…"}`` or
  ``Authorization: Bearer …``; the record's ``operator`` is the token's name;
- app secrets, sent as ``{"bk_app_code": "…", "bk_app_secret": "…"}``; the
  operator is the app code.

Secrets are random 256-bit strings, so a plain SHA-256 is the right hash: it
cannot be brute-forced and lets a token be found by its hash alone. Only the
hash is stored, plus a hint of the first characters (``spr_`` and four random
ones for tokens, four for app secrets) that ``token list`` shows; app secrets
are compared against every live hash of their app code with
:func:`hmac.compare_digest`.

A credential may expire (``expires_at``): from then on it answers 401 like a
revoked one. When it was last used is kept for ``token list``, written at most
once per :data:`LAST_USED_EVERY` per credential so that reads do not each
cost a database write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC

from registry.db import BUSY_TIMEOUT_MS, Database
from registry.errors import PermissionDenied, Unauthenticated
from registry.records import utc_now

TOKEN_PREFIX = "spr_"
HINT_LENGTH = 8
APP_SECRET_HINT_LENGTH = 4
#: How stale ``last_used`` may get: at most one write per credential in this time.
LAST_USED_EVERY = timedelta(minutes=1)
STORED_TIME = "%Y-%m-%d %H:%M:%S.%f"
MAX_HEADER_LENGTH = 4096


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may touch.

    :param apps: application codes this credential may use; empty means all.
    """

    operator: str
    apps: frozenset[str]
    read_only: bool
    credential_id: int | None

    def require(self, code: str, write: bool) -> None:
        """Raise ``PermissionDenied`` unless this principal may read/write ``code``."""
        if self.apps and code not in self.apps:
            raise PermissionDenied(f"credential is not allowed for application {code!r}")
        if write and self.read_only:
            raise PermissionDenied("credential is read-only")


ANONYMOUS = Principal(operator="anonymous", apps=frozenset(), read_only=True, credential_id=None)


@dataclass(frozen=True)
class CredentialInfo:
    """A credential as ``token list`` shows it: never the secret."""

    id: int
    kind: str
    name: str
    hint: str
    apps: list[str]
    read_only: bool
    created: str
    revoked_at: str | None
    expires_at: str | None = None
    last_used: str | None = None

    def status(self, now: str) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now`` (a stored UTC time)."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= now:
            return "expired"
        return "active"


def _hint(kind: str, secret: str) -> str:
    """What ``token list`` shows to tell credentials apart: for tokens the
    ``spr_`` prefix and four random characters, for app secrets their first
    four (24 of 256 bits either way)."""
    return secret[:HINT_LENGTH] if kind == "token" else secret[:APP_SECRET_HINT_LENGTH]


def stored_time(moment: datetime) -> str:
    """``moment`` in the stored UTC form (see :func:`registry.records.utc_now`)."""
    return moment.astimezone(UTC).strftime(STORED_TIME)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class CredentialStore:
    """The ``credentials`` table. Every method blocks; call from a worker thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # credential id -> time.monotonic() of this process's last ``last_used`` write
        self._touched: dict[int, float] = {}
        self._touched_lock = threading.Lock()

    def _create(self, kind: str, name: str, secret: str, apps: list[str], read_only: bool,
                expires_in: timedelta | None) -> None:
        expires_at = stored_time(datetime.now(UTC) + expires_in) if expires_in is not None else None
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO credentials (kind, name, secret_hash, hint, apps, read_only, created, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, name, _digest(secret), _hint(kind, secret), json.dumps(sorted(set(apps))),
                 int(read_only), utc_now(), expires_at),
            )

    def create_token(self, operator: str, apps: list[str], read_only: bool,
                     expires_in: timedelta | None = None) -> str:
        """Make an access token, valid for ``expires_in`` (None: until revoked);
        the returned string is its only copy."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._create("token", operator, token, apps, read_only, expires_in)
        return token

    def create_app_secret(self, app_code: str, apps: list[str], read_only: bool = False,
                          expires_in: timedelta | None = None) -> str:
        """Make an app secret for ``app_code``; the returned string is its only copy."""
        secret = secrets.token_urlsafe(32)
        self._create("app_secret", app_code, secret, apps, read_only, expires_in)
        return secret

    def _usable(self, row: Mapping[str, object]) -> Principal:
        """The principal of a live credential's row, its use noted.

        :raises Unauthenticated: the credential has expired.
        """
        now = utc_now()
        expires_at = row["expires_at"]
        if isinstance(expires_at, str) and expires_at <= now:
            raise Unauthenticated("credential expired")
        self._note_use(int(row["id"]), row["last_used"], now)  # type: ignore[call-overload]
        return self._principal(row)

    def _note_use(self, credential_id: int, last_used: object, now: str) -> None:
        """Record that the credential was used, unless it was already less
        than :data:`LAST_USED_EVERY` ago (by this process, or as the row says)."""
        every = LAST_USED_EVERY.total_seconds()
        with self._touched_lock:
            previous = self._touched.get(credential_id)
            if previous is not None and time.monotonic() - previous < every:
                return
            self._touched[credential_id] = time.monotonic()
        threshold = stored_time(datetime.now(UTC) - LAST_USED_EVERY)
        if isinstance(last_used, str) and last_used > threshold:
            return  # another process noted it recently
        # Best effort, never waiting: a request must not queue behind another
        # writer for a bookkeeping write. When the database is busy the note
        # is skipped and the next request tries again.
        conn = self.db.connection()
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            with self.db.transaction(conn):
                conn.execute("UPDATE credentials SET last_used = ? WHERE id = ?", (now, credential_id))
        except sqlite3.OperationalError:
            with self._touched_lock:
                self._touched.pop(credential_id, None)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _principal(self, row: Mapping[str, object]) -> Principal:
        return Principal(
            operator=str(row["name"]),
            apps=frozenset(json.loads(str(row["apps"]))),
            read_only=bool(row["read_only"]),
            credential_id=int(row["id"]),  # type: ignore[call-overload]
        )

    def by_token(self, token: str) -> Principal | None:
        """The live token's principal, found by the token's hash.

        An index lookup on the hash is safe here: timing can at most reveal
        something about a hash the caller chose the preimage of, never about
        a stored token.

        :raises Unauthenticated: the token has expired.
        """
        row = self.db.connection().execute(
            "SELECT * FROM credentials WHERE secret_hash = ? AND kind = 'token' AND revoked_at IS NULL",
            (_digest(token),),
        ).fetchone()
        return self._usable(row) if row is not None else None

    def by_app_secret(self, app_code: str, secret: str) -> Principal | None:
        """The principal of ``app_code``'s live app secret equal to ``secret``,
        or None. Every live secret of the app is compared in constant time, with
        no early exit, so timing does not tell which (or whether one) matched."""
        digest = _digest(secret)
        rows = self.db.connection().execute(
            "SELECT * FROM credentials WHERE name = ? AND kind = 'app_secret' AND revoked_at IS NULL",
            (app_code,),
        ).fetchall()
        match = None
        for row in rows:  # compare against every candidate: no early exit to time
            if hmac.compare_digest(row["secret_hash"], digest):
                match = row
        return self._usable(match) if match is not None else None

    def list(self) -> list[CredentialInfo]:
        """Every credential, revoked ones included, by id: hints, never secrets or hashes."""
        rows = self.db.connection().execute("SELECT * FROM credentials ORDER BY id").fetchall()
        return [
            CredentialInfo(
                id=row["id"], kind=row["kind"], name=row["name"], hint=row["hint"],
                apps=json.loads(row["apps"]), read_only=bool(row["read_only"]),
                created=row["created"], revoked_at=row["revoked_at"],
                expires_at=row["expires_at"], last_used=row["last_used"],
            )
            for row in rows
        ]

    def revoke(self, credential_id: int) -> bool:
        """Revoke a credential; False when no live credential has that id."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (utc_now(), credential_id),
            )
            return cursor.rowcount == 1


def parse_credentials(headers: Mapping[str, str]) -> tuple[str, ...] | None:
    """The credential a request carries, without checking it.

    Returns ``("token", token)``, ``("app", code, secret)`` or None when the
    request carries none.

    :raises Unauthenticated: a header is present but malformed.
    """
    gateway = headers.get("x-bkapi-authorization")
    if gateway is not None and gateway.strip():
        if len(gateway) > MAX_HEADER_LENGTH:
            raise Unauthenticated("X-BKAPI-AUTHORIZATION is too long")
        try:
            data = json.loads(gateway)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
            raise Unauthenticated("X-BKAPI-AUTHORIZATION is not JSON") from None
        if not isinstance(data, dict):
            raise Unauthenticated("X-BKAPI-AUTHORIZATION is not a JSON object")
        token = data.get("access_token")
        if isinstance(token, str) and token:
            return ("token", token)
        code, secret = data.get("bk_app_code"), data.get("bk_app_secret")
        if isinstance(code, str) and code and isinstance(secret, str) and secret:
            return ("app", code, secret)
        raise Unauthenticated("X-BKAPI-AUTHORIZATION holds no access_token or bk_app_code/bk_app_secret")
    authorization = headers.get("authorization")
    if authorization is not None and authorization.strip():
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip() or len(value) > MAX_HEADER_LENGTH:
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        return ("token", value.strip())
    return None


def authenticate(store: CredentialStore, credentials: tuple[str, ...] | None) -> Principal | None:
    """The principal for parsed ``credentials``; None when there are none.

    Blocks (SQLite). :raises Unauthenticated: unknown, revoked or expired credential.
    """
    if credentials is None:
        return None
    if credentials[0] == "token":
        principal = store.by_token(credentials[1])
    else:
        principal = store.by_app_secret(credentials[1], credentials[2])
    if principal is None:
        raise Unauthenticated("unknown or revoked credential")
    return principal
