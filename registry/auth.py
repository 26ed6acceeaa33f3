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
cost a database write, and never waiting for a busy database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from registry.errors import DatabaseUnavailable, PermissionDenied, Unauthenticated
from registry.records import Credential, NewCredential, utc_now
from registry.store import RecordStore

logger = logging.getLogger("registry.auth")

TOKEN_PREFIX = "spr_"
HINT_LENGTH = 8
APP_SECRET_HINT_LENGTH = 4
#: How stale ``last_used`` may get: at most one write per credential in this time.
LAST_USED_EVERY = timedelta(minutes=1)
MAX_HEADER_LENGTH = 4096
LIST_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may touch.

    :param apps: application codes this credential may use; empty means all.
    """

    operator: str
    apps: frozenset[str]
    read_only: bool
    credential_id: int | None
    #: when the credential stops answering (401), or None
    expires_at: datetime | None = None

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

    @classmethod
    def of(cls, credential: Credential) -> CredentialInfo:
        """The listing of ``credential``, times as UTC ``YYYY-MM-DD HH:MM:SS.ffffff``."""
        return cls(
            id=credential.id, kind=credential.kind, name=credential.name, hint=credential.hint,
            apps=credential.apps, read_only=credential.read_only,
            created=_list_time(credential.created), revoked_at=_optional_list_time(credential.revoked_at),
            expires_at=_optional_list_time(credential.expires_at),
            last_used=_optional_list_time(credential.last_used),
        )

    def status(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now``."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= _list_time(now):  # fixed width: text order is time order
            return "expired"
        return "active"


def _list_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(LIST_TIME_FORMAT)


def _optional_list_time(moment: datetime | None) -> str | None:
    return _list_time(moment) if moment is not None else None


def _hint(kind: str, secret: str) -> str:
    """What ``token list`` shows to tell credentials apart: for tokens the
    ``spr_`` prefix and four random characters, for app secrets their first
    four (24 of 256 bits either way)."""
    return secret[:HINT_LENGTH] if kind == "token" else secret[:APP_SECRET_HINT_LENGTH]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


#: How long a checked credential is trusted without asking the store again:
#: a revocation made by another instance (or ``registry token revoke``) takes
#: effect here within this many seconds; on the revoking instance, at once.
CACHE_SECONDS = 5.0
#: Checked credentials remembered at most; the oldest are forgotten first.
CACHE_ENTRIES = 4096


class CredentialStore:
    """Making and checking credentials; the rows live in the record store.

    Every method blocks; call from a worker thread, except :meth:`cached`,
    which only reads memory. Credentials that checked out are remembered for
    ``cache_seconds`` (never unknown ones: random secrets cannot fill the
    cache), so most requests skip the store; :meth:`revoke` forgets the
    revoked credential at once.
    """

    def __init__(self, store: RecordStore, cache_seconds: float = CACHE_SECONDS) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple[str, ...], tuple[float, Principal]] = {}
        self._cache_lock = threading.Lock()
        #: ids revoked through this instance: never remembered again, even by
        #: a check that read the store just before the revocation committed
        self._revoked: set[int] = set()
        # credential id -> time.monotonic() of this process's last ``last_used`` write
        self._touched: dict[int, float] = {}
        self._touched_lock = threading.Lock()

    @staticmethod
    def _cache_key(credentials: tuple[str, ...]) -> tuple[str, ...]:
        # the secret's hash, never the secret, is what stays in memory
        return (*credentials[:-1], _digest(credentials[-1]))

    def cached(self, credentials: tuple[str, ...]) -> Principal | None:
        """The principal remembered for parsed ``credentials``, if still fresh; never blocks."""
        key = self._cache_key(credentials)
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._cache[key]
                return None
            return entry[1]

    def remember(self, credentials: tuple[str, ...], principal: Principal) -> None:
        """Remember that ``credentials`` checked out as ``principal``, never
        past the credential's own expiry."""
        lifetime = self.cache_seconds
        if principal.expires_at is not None:
            lifetime = min(lifetime, (principal.expires_at - utc_now()).total_seconds())
        if lifetime <= 0:
            return
        with self._cache_lock:
            if principal.credential_id in self._revoked:
                return
            while len(self._cache) >= CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
            self._cache[self._cache_key(credentials)] = (time.monotonic() + lifetime, principal)

    def _create(self, kind: str, name: str, secret: str, apps: list[str], read_only: bool,
                expires_in: timedelta | None) -> None:
        self.store.add_credential(NewCredential(
            kind=kind, name=name, secret_hash=_digest(secret), hint=_hint(kind, secret),
            apps=sorted(set(apps)), read_only=read_only,
            expires_at=utc_now() + expires_in if expires_in is not None else None,
        ))

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

    def _usable(self, credential: Credential) -> Principal:
        """The principal of a live credential, its use noted.

        :raises Unauthenticated: the credential has expired.
        """
        now = utc_now()
        if credential.expires_at is not None and credential.expires_at <= now:
            raise Unauthenticated("credential expired")
        self._note_use(credential, now)
        return self._principal(credential)

    def _note_use(self, credential: Credential, now: datetime) -> None:
        """Record that the credential was used, unless that was already noted
        less than :data:`LAST_USED_EVERY` ago (by this process, or as the store says)."""
        every = LAST_USED_EVERY.total_seconds()
        with self._touched_lock:
            previous = self._touched.get(credential.id)
            if previous is not None and time.monotonic() - previous < every:
                return
            self._touched[credential.id] = time.monotonic()
        stale_before = now - LAST_USED_EVERY
        if credential.last_used is not None and credential.last_used > stale_before:
            return  # another process noted it recently
        # Best effort: a request must not queue behind another writer, nor
        # fail, for a bookkeeping write. A skipped note is tried again by the
        # next request.
        try:
            self.store.note_credential_use(credential.id, now, stale_before)
        except DatabaseUnavailable as exc:  # busy or down: the next request tries again
            logger.debug("last_used of credential %d not noted: %s", credential.id, exc)
            with self._touched_lock:
                self._touched.pop(credential.id, None)

    @staticmethod
    def _principal(credential: Credential) -> Principal:
        return Principal(
            operator=credential.name,
            apps=frozenset(credential.apps),
            read_only=credential.read_only,
            credential_id=credential.id,
            expires_at=credential.expires_at,
        )

    def by_token(self, token: str) -> Principal | None:
        """The live token's principal, found by the token's hash.

        An index lookup on the hash is safe here: timing can at most reveal
        something about a hash the caller chose the preimage of, never about
        a stored token.

        :raises Unauthenticated: the token has expired.
        """
        credential = self.store.credential_by_hash("token", _digest(token))
        return self._usable(credential) if credential is not None else None

    def by_app_secret(self, app_code: str, secret: str) -> Principal | None:
        """The principal of ``app_code``'s live app secret equal to ``secret``,
        or None. Every live secret of the app is compared in constant time, with
        no early exit, so timing does not tell which (or whether one) matched."""
        digest = _digest(secret)
        match = None
        for credential in self.store.credentials_named("app_secret", app_code):  # no early exit to time
            if hmac.compare_digest(credential.secret_hash, digest):
                match = credential
        return self._usable(match) if match is not None else None

    def by_id(self, credential_id: int) -> Principal | None:
        """The principal of the live credential with this id (a web session
        holds the id, never the secret), or None when unknown or revoked."""
        credential = self.store.credential_by_id(credential_id)
        return self._principal(credential) if credential is not None else None

    def list(self) -> list[CredentialInfo]:
        """Every credential, revoked ones included, by id: hints, never secrets or hashes."""
        return [CredentialInfo.of(credential) for credential in self.store.list_credentials()]

    def revoke(self, credential_id: int) -> bool:
        """Revoke a credential; False when no live credential has that id.

        This instance refuses it from now on: it is forgotten before the
        store is asked and never remembered again (a check racing the revocation
        would otherwise remember it again).
        """
        with self._cache_lock:
            self._revoked.add(credential_id)
            for key in [k for k, (_, p) in self._cache.items() if p.credential_id == credential_id]:
                del self._cache[key]
        return self.store.revoke_credential(credential_id)


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

    Blocks (the record store). :raises Unauthenticated: unknown, revoked or expired credential.
    """
    if credentials is None:
        return None
    if credentials[0] == "token":
        principal = store.by_token(credentials[1])
    else:
        principal = store.by_app_secret(credentials[1], credentials[2])
    if principal is None:
        raise Unauthenticated("unknown or revoked credential")
    store.remember(credentials, principal)
    return principal
