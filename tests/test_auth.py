"""Credentials: the three header forms, 401/403, revocation, hashing, anonymous reads."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from registry_plugins.store_sqlite import SQLiteStore

from registry.auth import CACHE_SECONDS, CredentialStore, Principal
from registry.records import utc_now
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    inprocess_registry,
    merge,
    package,
    start_registry,
)


def gateway(**values: str) -> dict[str, str]:
    return {"X-BKAPI-AUTHORIZATION": json.dumps(values)}


def app_secret(registry: RegistryProcess, app_code: str, *apps: str) -> str:
    args = ["app-secret", "create", "--app-code", app_code]
    for app in apps:
        args += ["--app", app]
    return registry.cli(*args).stdout.strip().splitlines()[-1]


def credential_id(registry: RegistryProcess, name: str) -> int:
    rows = json.loads(registry.cli("token", "list", "--json").stdout)
    [row] = [r for r in rows if r["name"] == name]
    return int(row["id"])


def upload(registry: RegistryProcess, code: str, headers: dict[str, str], version: str = "1",
           salt: str = "") -> httpx.Response:
    return httpx.post(f"{registry.url}{Api.path(code)}", headers=headers,
                      files={"package": ("p.tar.gz", package(salt=code + version + salt))},
                      data={"version": version})


def list_(registry: RegistryProcess, code: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{registry.url}{Api.path(code)}", headers=headers)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.headers["bkapi-error-code"] == code


# -- the accepted forms ----------------------------------------------------------------------


def test_gateway_header_with_access_token(registry: RegistryProcess, token: str, code: str) -> None:
    headers = gateway(access_token=token, bk_ticket="ignored", bk_username="someone")
    response = upload(registry, code, headers)
    assert response.status_code == 201, response.text
    assert response.json()["operator"] == "alice"
    assert list_(registry, code, headers).json()["count"] == 1


def test_gateway_header_with_app_code_and_secret(registry: RegistryProcess, code: str) -> None:
    app_code = f"{code}-ci"
    secret = app_secret(registry, app_code)
    assert len(secret) >= 32
    headers = gateway(bk_app_code=app_code, bk_app_secret=secret, bk_ticket="ignored", bk_token="ignored")
    response = upload(registry, code, headers)
    assert response.status_code == 201, response.text
    assert response.json()["operator"] == app_code
    assert list_(registry, code, headers).status_code == 200


def test_app_secret_limited_to_apps(registry: RegistryProcess, code: str) -> None:
    app_code = f"{code}-limited"
    secret = app_secret(registry, app_code, code)
    headers = gateway(bk_app_code=app_code, bk_app_secret=secret)
    assert upload(registry, code, headers).status_code == 201
    assert_error(upload(registry, f"{code}-other", headers), 403, "PERMISSION_DENIED")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_authorization_bearer(registry: RegistryProcess, token: str, code: str, scheme: str) -> None:
    headers = {"Authorization": f"{scheme} {token}"}
    response = upload(registry, code, headers)
    assert response.status_code == 201, response.text
    assert response.json()["operator"] == "alice"


def test_operator_is_the_credentials_name(registry: RegistryProcess, code: str) -> None:
    carol = registry.token("carol")
    response = upload(registry, code, {"Authorization": f"Bearer {carol}"})
    assert response.status_code == 201, response.text
    assert response.json()["operator"] == "carol"


# -- 401 ---------------------------------------------------------------------------------------


def test_no_credential(registry: RegistryProcess, token: str, code: str) -> None:
    record = upload(registry, code, {"Authorization": f"Bearer {token}"}).json()
    base = f"{registry.url}{Api.path(code)}"
    for response in (
        upload(registry, code, {}, version="2"),
        list_(registry, code, {}),
        httpx.get(f"{base}{record['id']}/"),
        httpx.get(f"{base}{record['id']}/download/"),
        httpx.delete(f"{base}{record['id']}/"),
        httpx.post(f"{base}{record['id']}/restore/"),
        httpx.post(f"{base}link/", json={"package_url": "http://127.0.0.1:9/p.tar.gz", "version": "3"}),
    ):
        assert_error(response, 401, "UNAUTHENTICATED")
    assert list_(registry, code, {"Authorization": f"Bearer {token}"}).json()["count"] == 1


@pytest.mark.parametrize("headers", [
    {"X-BKAPI-AUTHORIZATION": "{not json"},
    {"X-BKAPI-AUTHORIZATION": "access_token=abc"},
    {"X-BKAPI-AUTHORIZATION": '["access_token"]'},
    {"X-BKAPI-AUTHORIZATION": '"spr_token"'},
    {"X-BKAPI-AUTHORIZATION": json.dumps({"bk_ticket": "x", "bk_username": "alice"})},
    {"X-BKAPI-AUTHORIZATION": json.dumps({"access_token": ""})},
    {"X-BKAPI-AUTHORIZATION": json.dumps({"access_token": 12345})},
    {"X-BKAPI-AUTHORIZATION": json.dumps({"bk_app_code": "someapp"})},
    {"X-BKAPI-AUTHORIZATION": json.dumps({"bk_app_secret": "secret"})},
    {"X-BKAPI-AUTHORIZATION": "{}"},
    {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    {"Authorization": "Bearer"},
    {"Authorization": "Token abc"},
], ids=lambda h: next(iter(h.values())))
def test_malformed_or_unusable_header(registry: RegistryProcess, code: str, headers: dict[str, str]) -> None:
    assert_error(list_(registry, code, headers), 401, "UNAUTHENTICATED")
    assert_error(upload(registry, code, headers), 401, "UNAUTHENTICATED")


def test_unknown_token(registry: RegistryProcess, token: str, code: str) -> None:
    unknown = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    for headers in ({"Authorization": f"Bearer {unknown}"}, gateway(access_token=unknown),
                    {"Authorization": "Bearer spr_nope"}):
        assert_error(list_(registry, code, headers), 401, "UNAUTHENTICATED")
        assert_error(upload(registry, code, headers), 401, "UNAUTHENTICATED")


def test_app_secret_is_not_an_access_token(registry: RegistryProcess, code: str) -> None:
    secret = app_secret(registry, f"{code}-app")
    assert_error(list_(registry, code, {"Authorization": f"Bearer {secret}"}), 401, "UNAUTHENTICATED")
    assert_error(list_(registry, code, gateway(access_token=secret)), 401, "UNAUTHENTICATED")


def test_token_is_not_an_app_secret(registry: RegistryProcess, token: str, code: str) -> None:
    headers = gateway(bk_app_code="alice", bk_app_secret=token)
    assert_error(list_(registry, code, headers), 401, "UNAUTHENTICATED")


def test_wrong_app_secret(registry: RegistryProcess, code: str) -> None:
    app_code = f"{code}-app"
    secret = app_secret(registry, app_code)
    other_code = f"{code}-app2"
    other_secret = app_secret(registry, other_code)
    for headers in (
        gateway(bk_app_code=app_code, bk_app_secret=secret[:-1] + ("A" if secret[-1] != "A" else "B")),
        gateway(bk_app_code=app_code, bk_app_secret=other_secret),
        gateway(bk_app_code=other_code, bk_app_secret=secret),
        gateway(bk_app_code="no-such-app", bk_app_secret=secret),
    ):
        assert_error(list_(registry, code, headers), 401, "UNAUTHENTICATED")
        assert_error(upload(registry, code, headers), 401, "UNAUTHENTICATED")
    assert list_(registry, code, gateway(bk_app_code=app_code, bk_app_secret=secret)).status_code == 200


def refused_soon(request: Callable[[], httpx.Response]) -> httpx.Response:
    """The first answer that is not a 200/201: a revocation made by another process (the
    CLI) reaches a running server once its credential cache lets go (CACHE_SECONDS)."""
    deadline = time.monotonic() + CACHE_SECONDS + 10
    while True:
        response = request()
        if response.status_code not in (200, 201) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_revoked_token(registry: RegistryProcess, code: str) -> None:
    name = f"revoke-me-{code}"
    revoked = registry.token(name)
    headers = {"Authorization": f"Bearer {revoked}"}
    assert upload(registry, code, headers).status_code == 201
    result = registry.cli("token", "revoke", str(credential_id(registry, name)))
    assert result.returncode == 0
    assert_error(refused_soon(lambda: list_(registry, code, headers)), 401, "UNAUTHENTICATED")
    assert_error(upload(registry, code, headers, version="2"), 401, "UNAUTHENTICATED")
    assert_error(list_(registry, code, gateway(access_token=revoked)), 401, "UNAUTHENTICATED")
    again = registry.cli("token", "revoke", str(credential_id(registry, name)), check=False)
    assert again.returncode != 0


def test_revoked_app_secret(registry: RegistryProcess, code: str) -> None:
    app_code = f"{code}-revoked"
    secret = app_secret(registry, app_code)
    headers = gateway(bk_app_code=app_code, bk_app_secret=secret)
    assert list_(registry, code, headers).status_code == 200
    registry.cli("token", "revoke", str(credential_id(registry, app_code)))
    assert_error(refused_soon(lambda: list_(registry, code, headers)), 401, "UNAUTHENTICATED")


@pytest.mark.anyio
async def test_a_revoked_token_is_refused_at_once_by_the_instance_that_revoked_it(tmp_path: Path) -> None:
    async with inprocess_registry(tmp_path, base_config(tmp_path), "alice") as client:
        registry = client._transport.app.state.registry  # type: ignore[attr-defined]
        token = registry.credentials.create_token("bob", [], False)
        headers = {"Authorization": f"Bearer {token}"}
        path = Api.path("app")
        assert (await client.get(path, headers=headers)).status_code == 200
        # now remembered: the store is not asked again while the cache is fresh
        [bob] = [c for c in registry.credentials.list() if c.name == "bob"]
        assert registry.credentials.cached(("token", token)) is not None
        assert registry.credentials.revoke(bob.id)
        assert_error(await client.get(path, headers=headers), 401, "UNAUTHENTICATED")


def test_healthz_ignores_credentials(registry: RegistryProcess) -> None:
    assert httpx.get(f"{registry.url}/healthz", headers={"X-BKAPI-AUTHORIZATION": "{bad"}).status_code == 200


# -- 403 ---------------------------------------------------------------------------------------


def test_token_limited_to_another_app(registry: RegistryProcess, token: str, code: str) -> None:
    record = upload(registry, code, {"Authorization": f"Bearer {token}"}).json()
    limited = registry.token(f"limited-{code}", apps=(f"{code}-mine",))
    headers = {"Authorization": f"Bearer {limited}"}
    base = f"{registry.url}{Api.path(code)}"
    for response in (
        list_(registry, code, headers),
        httpx.get(f"{base}{record['id']}/", headers=headers),
        httpx.get(f"{base}{record['id']}/download/", headers=headers),
        upload(registry, code, headers, version="2"),
        httpx.delete(f"{base}{record['id']}/", headers=headers),
    ):
        assert_error(response, 403, "PERMISSION_DENIED")
    assert upload(registry, f"{code}-mine", headers).status_code == 201
    assert list_(registry, f"{code}-mine", headers).status_code == 200
    # untouched
    assert list_(registry, code, {"Authorization": f"Bearer {token}"}).json()["count"] == 1


def test_read_only_token(registry: RegistryProcess, token: str, code: str) -> None:
    data = package(salt=code)
    record = httpx.post(f"{registry.url}{Api.path(code)}", headers={"Authorization": f"Bearer {token}"},
                        files={"package": ("p.tar.gz", data)}, data={"version": "1"}).json()
    reader = registry.token(f"reader-{code}", read_only=True)
    headers = {"Authorization": f"Bearer {reader}"}
    base = f"{registry.url}{Api.path(code)}"
    assert list_(registry, code, headers).json()["count"] == 1
    assert httpx.get(f"{base}{record['id']}/", headers=headers).json() == record
    assert httpx.get(f"{base}{record['id']}/download/", headers=headers).content == data
    for response in (
        upload(registry, code, headers, version="2"),
        httpx.post(f"{base}link/", headers=headers,
                   json={"package_url": "http://127.0.0.1:9/p.tar.gz", "version": "3"}),
        httpx.delete(f"{base}{record['id']}/", headers=headers),
        httpx.post(f"{base}{record['id']}/restore/", headers=headers),
    ):
        assert_error(response, 403, "PERMISSION_DENIED")
    assert httpx.get(f"{base}{record['id']}/", headers=headers).json() == record


# -- secrets at rest -------------------------------------------------------------------------------


def test_token_list_never_shows_a_secret(registry: RegistryProcess, code: str) -> None:
    secrets = [registry.token(f"listed-{code}"), registry.token(f"listed-ro-{code}", read_only=True),
               app_secret(registry, f"{code}-listed")]
    for args in (("token", "list"), ("token", "list", "--json")):
        output = registry.cli(*args)
        text = output.stdout + output.stderr
        for secret in secrets:
            assert secret not in text
            # nor any long piece of it
            for start in range(len(secret) - 16):
                assert secret[start:start + 16] not in text
    rows = json.loads(registry.cli("token", "list", "--json").stdout)
    names = {r["name"] for r in rows}
    assert {f"listed-{code}", f"listed-ro-{code}", f"{code}-listed"} <= names


def database_values(path: Path) -> list[Any]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        values: list[Any] = []
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                values.extend(row)
        return values
    finally:
        conn.close()


def test_secrets_stored_only_as_hashes(registry: RegistryProcess, code: str) -> None:
    token = registry.token(f"hashed-{code}")
    secret = app_secret(registry, f"{code}-hashed")
    assert list_(registry, code, {"Authorization": f"Bearer {token}"}).status_code == 200
    db_path = registry.config.parent / "registry.db"
    values = database_values(db_path)
    assert values
    for plain in (token, secret):
        assert not any(isinstance(v, str) and plain in v for v in values)
        for file in db_path.parent.glob("registry.db*"):  # the database, its WAL and shm
            assert plain.encode() not in file.read_bytes(), file


# -- anonymous reads ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("anonymous")
    process = start_registry(root, merge(base_config(root), {"auth": {"anonymous_read": True}}))
    try:
        yield process
    finally:
        process.stop()


def test_anonymous_read(open_registry: RegistryProcess, code: str) -> None:
    writer = {"Authorization": f"Bearer {open_registry.token('writer')}"}
    data = package(salt=code)
    created = httpx.post(f"{open_registry.url}{Api.path(code)}", headers=writer,
                         files={"package": ("p.tar.gz", data)}, data={"version": "1"})
    assert created.status_code == 201, created.text
    record = created.json()
    base = f"{open_registry.url}{Api.path(code)}"

    listing = httpx.get(base)
    assert listing.status_code == 200, listing.text
    assert listing.json()["count"] == 1
    assert httpx.get(f"{base}{record['id']}/").json() == record
    assert httpx.get(f"{base}{record['id']}/download/").content == data

    for response in (
        upload(open_registry, code, {}, version="2"),
        httpx.delete(f"{base}{record['id']}/"),
        httpx.post(f"{base}{record['id']}/restore/"),
        httpx.post(f"{base}link/", json={"package_url": "http://127.0.0.1:9/p.tar.gz", "version": "3"}),
    ):
        assert_error(response, 401, "UNAUTHENTICATED")
    # a bad credential is refused, not treated as anonymous
    assert_error(httpx.get(base, headers={"Authorization": "Bearer spr_unknown"}), 401, "UNAUTHENTICATED")
    assert_error(httpx.get(base, headers={"X-BKAPI-AUTHORIZATION": "{oops"}), 401, "UNAUTHENTICATED")
    assert httpx.get(base, headers=writer).json()["count"] == 1


# -- expiry and last use ------------------------------------------------------------------------


def token_row(registry: RegistryProcess, name: str) -> dict[str, Any]:
    rows = json.loads(registry.cli("token", "list", "--json").stdout)
    [row] = [r for r in rows if r["name"] == name]
    return dict(row)


def test_token_expires(registry: RegistryProcess, code: str) -> None:
    name = f"expiring-{code}"
    created = registry.cli("token", "create", "--operator", name, "--expires-in", "90d")
    assert "expires in 90d" in created.stdout
    token = created.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    assert list_(registry, code, headers).status_code == 200
    row = token_row(registry, name)
    assert row["status"] == "active" and row["expires_at"] > row["created"]

    # ninety days later, as the database sees it
    database = Path(registry.config).parent / "registry.db"
    conn = sqlite3.connect(database, timeout=30)
    with conn:
        conn.execute("UPDATE credentials SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?", (row["id"],))
    conn.close()
    # changed behind the server's back, like a revocation by another process
    response = refused_soon(lambda: list_(registry, code, headers))
    assert_error(response, 401, "UNAUTHENTICATED")
    assert response.json()["detail"].endswith(": credential expired")
    assert_error(list_(registry, code, gateway(access_token=token)), 401, "UNAUTHENTICATED")
    assert token_row(registry, name)["status"] == "expired"
    [line] = [line for line in registry.cli("token", "list").stdout.splitlines() if f" {name} " in line]
    assert "2000-01-01 00:00:00" in line and line.rstrip().endswith("expired")


def test_expired_app_secret(registry: RegistryProcess, code: str) -> None:
    app_code = f"{code}-expiring"
    created = registry.cli("app-secret", "create", "--app-code", app_code, "--expires-in", "1h")
    headers = gateway(bk_app_code=app_code, bk_app_secret=created.stdout.strip().splitlines()[-1])
    assert list_(registry, code, headers).status_code == 200
    database = Path(registry.config).parent / "registry.db"
    conn = sqlite3.connect(database, timeout=30)
    with conn:
        conn.execute("UPDATE credentials SET expires_at = '2000-01-01 00:00:00.000000' WHERE name = ?", (app_code,))
    conn.close()
    assert_error(refused_soon(lambda: list_(registry, code, headers)), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize("duration", ["90", "d", "0d", "1w", "-1d", "1.5h"])
def test_a_bad_duration_is_a_usage_error(registry: RegistryProcess, duration: str) -> None:
    result = registry.cli("token", "create", "--operator", "x", "--expires-in", duration, check=False)
    assert result.returncode == 2
    assert "--expires-in" in result.stderr


def test_token_list_shows_when_a_credential_was_last_used(registry: RegistryProcess, code: str) -> None:
    name = f"used-{code}"
    token = registry.token(name)
    secret_name = f"{code}-used"
    secret = app_secret(registry, secret_name)
    assert token_row(registry, name)["last_used"] is None
    [line] = [line for line in registry.cli("token", "list").stdout.splitlines() if f" {secret_name} " in line]
    assert f" {secret[:4]}… " in line  # app secrets have a hint too
    assert " never " in line

    assert list_(registry, code, {"Authorization": f"Bearer {token}"}).status_code == 200
    assert list_(registry, code, gateway(bk_app_code=secret_name, bk_app_secret=secret)).status_code == 200
    first = token_row(registry, name)["last_used"]
    assert first is not None and token_row(registry, secret_name)["last_used"] is not None
    # a second request within the minute writes nothing
    assert list_(registry, code, {"Authorization": f"Bearer {token}"}).status_code == 200
    assert token_row(registry, name)["last_used"] == first


@pytest.mark.parametrize(("expires_in", "kept"), [(None, True), (3600.0, True), (0.5, True), (-1.0, False)])
def test_the_credential_cache_never_outlives_an_expiry(tmp_path: Path, expires_in: float | None, kept: bool) -> None:
    store = SQLiteStore(tmp_path / "registry.db")
    try:
        credentials = CredentialStore(store)
        expires_at = None if expires_in is None else utc_now() + timedelta(seconds=expires_in)
        principal = Principal("alice", frozenset(), False, 7, expires_at=expires_at)
        credentials.remember(("token", "secret"), principal)
        assert (credentials.cached(("token", "secret")) == principal) is kept
        if expires_in == 0.5:
            time.sleep(0.6)  # the entry lives no longer than the credential
            assert credentials.cached(("token", "secret")) is None
    finally:
        store.close()
