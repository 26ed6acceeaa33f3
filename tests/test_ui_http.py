"""The web interface and the browse routes at the HTTP level: sessions, CSRF,
headers, escaping, ``[ui] enabled = false``, scopes, and what is captured at
ingest. The app runs in-process (Starlette's httpx.Client speaks HTTP to it)."""

from __future__ import annotations

import base64
import html as htmllib
import io
import json
import re
import stat
import tarfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from registry.app import create_app
from registry.auth import CredentialStore
from registry.bootstrap import build_registry, load_settings
from registry.cli_records import open_store
from registry.testing import new_package
from tests.helpers import (
    PACKAGES,
    RegistryProcess,
    app_desc,
    base_config,
    blob_files,
    make_tar,
    merge,
    package,
    run_python,
    start_registry,
    to_toml,
)
from tests.pg import PgServer

CSP = "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"

class Site:
    """A live ``registry serve``, with its record store opened directly (to
    make credentials and read captured details)."""

    def __init__(self, root: Path, process: RegistryProcess) -> None:
        self.root = root
        self.process = process
        self.store = open_store(*load_settings(process.config))
        self.credentials = CredentialStore(self.store)
        self.clients: list[httpx.Client] = []

    def client(self) -> httpx.Client:
        """A new client with its own cookie jar (closed with the site)."""
        client = httpx.Client(base_url=self.process.url, follow_redirects=False, timeout=30)
        self.clients.append(client)
        return client

    def token(self, operator: str = "alice", apps: tuple[str, ...] = (), read_only: bool = False) -> str:
        return self.credentials.create_token(operator, list(apps), read_only)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.process.stop()
        self.store.close()


@contextmanager
def site(root: Path, extra: Mapping[str, Mapping[str, Any]] | None = None) -> Iterator[Site]:
    root.mkdir(parents=True, exist_ok=True)
    s = Site(root, start_registry(root, merge(base_config(root), extra or {})))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def web(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One registry shared by this module's tests, on each record store; each
    test uses its own application codes."""
    extra: dict[str, dict[str, Any]] = {}
    if request.param == "postgres":
        server: PgServer = request.getfixturevalue("pg_server")  # skips without PostgreSQL
        extra = {"database": {"url": server.new_database(), "pool_size": 4},
                 "ui": {"session_secret": "a-key-every-instance-shares"}}
    with site(tmp_path_factory.mktemp(f"ui-http-{request.param}"), extra) as s:
        yield s


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def sign_in(client: httpx.Client, token: str) -> str:
    """Sign ``client`` in with ``token``; returns the session's CSRF token."""
    page = client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf_token": csrf_of(page.text), "token": token, "next": "/ui/"})
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/ui/").text)


def upload(client: httpx.Client, code: str, data: bytes, token: str, filename: str = "demo.tar.gz",
           **fields: str) -> dict[str, Any]:
    answer = client.post(PACKAGES.format(code=code, module="default") + "/", files={"package": (filename, data)},
                         data=fields, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code in (200, 201), answer.text
    result: dict[str, Any] = answer.json()
    return result


# -- routing, headers, cookies -------------------------------------------------------


def test_root_redirects_to_the_interface(web: Site) -> None:
    answer = web.client().get("/")
    assert answer.status_code in (302, 303, 307)
    assert answer.headers["location"] == "/ui/"


@pytest.mark.parametrize("path", ["/ui/login", "/ui/static/ui.js", "/ui/static/ui.css", "/ui/", "/ui/no-such/x/y/z"])
def test_security_headers_on_every_ui_response(web: Site, path: str) -> None:
    answer = web.client().get(path)
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"


def test_pages_load_no_inline_script(web: Site) -> None:
    token = web.token()
    upload(web.client(), "app1", package("1.0.0"), token)
    client = web.client()
    sign_in(client, token)
    for path in ("/ui/", "/ui/app1/", "/ui/app1/default/", "/ui/app1/default/1/", "/ui/login"):
        html = client.get(path).text
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert 'src="/ui/static/' in tag, (path, tag)
        assert re.search(r"<script\b[^>]*>[^<]+</script>", html) is None, path  # no script body
        assert " on" not in re.sub(r'"[^"]*"', "", " ".join(re.findall(r"<[a-z]+\s[^>]*>", html))), path


def test_session_cookie_flags_and_content(web: Site) -> None:
    token = web.token("alice")
    client = web.client()
    page = client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf_token": csrf_of(page.text), "token": token})
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Secure" not in cookie  # plain http
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    assert set(payload) == {"c", "t", "i"}
    assert isinstance(payload["c"], int)
    assert token not in value and token[4:20] not in json.dumps(payload)
    # Signed in: the header names the operator and offers Sign out.
    home = client.get("/ui/").text
    assert "alice" in home and "退出登录" in home


def test_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    """Served over https (here: the app in-process, addressed as https), the cookie is Secure."""
    config = tmp_path / "registry.toml"
    config.write_text(to_toml(base_config(tmp_path)))

    async def main() -> None:
        settings, pm = load_settings(config)
        service = build_registry(settings, pm)
        token = service.credentials.create_token("alice", [], False)
        await service.startup()
        try:
            transport = httpx.ASGITransport(app=create_app(service))
            async with httpx.AsyncClient(transport=transport, base_url="https://registry") as client:
                page = await client.get("/ui/login")
                assert "Secure" in page.headers["set-cookie"]
                answer = await client.post("/ui/login", data={"csrf_token": csrf_of(page.text), "token": token})
                assert answer.status_code == 303
                assert "Secure" in answer.headers["set-cookie"]
                assert "HttpOnly" in answer.headers["set-cookie"]
        finally:
            await service.shutdown()

    anyio.run(main)


def test_a_tampered_or_foreign_cookie_is_no_session(web: Site, tmp_path: Path) -> None:
    client = web.client()
    sign_in(client, web.token())
    value = client.cookies["registry_session"]
    payload, mac = value.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    data["c"] = data["c"] + 1
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode() + "." + mac
    client.cookies.set("registry_session", forged)
    assert client.get("/ui/").status_code == 303  # to the sign-in page


def test_cookies_are_read_as_browsers_send_them(web: Site) -> None:
    """The session among other cookies, in double quotes or not, in one
    ``Cookie`` header or two; the last of two with its name wins; a value that
    only unquoting would make valid is not the session."""
    client = web.client()
    sign_in(client, web.token("carol"))
    value = client.cookies["registry_session"]
    for headers in ([("Cookie", f"a=1; registry_session={value}; b=2")],
                    [("Cookie", f'registry_session="{value}"')],
                    [("Cookie", f"registry_session=stale; registry_session={value}")],
                    [("Cookie", "a=1"), ("Cookie", f"registry_session = {value}")]):
        page = httpx.get(f"{web.process.url}/ui/", headers=headers)
        assert page.status_code == 200 and "carol" in page.text, headers
    escaped = value.replace(".", "\\.")  # "\." unquotes to "."
    assert httpx.get(f"{web.process.url}/ui/", headers={"Cookie": f'registry_session="{escaped}"'}).status_code == 303
    english = httpx.get(f"{web.process.url}/ui/login", headers={"Cookie": 'a=1; registry_lang="en"'})
    assert "Sign in" in english.text


def test_a_cookie_of_backslashes_is_read_at_once() -> None:
    """Python 3.11.7 unquotes a quoted cookie value in time quadratic in its
    backslashes (CVE-2024-7592); the interface's reading unquotes nothing.
    A MB of them is read in one pass. Run in a child process, so a regression
    ends in a timeout instead of a stuck test run."""
    script = ("from starlette.requests import Request\n"
              "from registry.ui.cookies import cookie\n"
              "hostile = b'a=\"' + b'\\\\' * 1_000_000 + b'\"; registry_lang=en'\n"
              "request = Request({'type': 'http', 'headers': [(b'cookie', hostile)]})\n"
              "print(cookie(request, 'registry_lang'), len(cookie(request, 'a')))")
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["en", "1000000"]


def test_wrong_credentials_show_the_registry_error(web: Site) -> None:
    client = web.client()
    page = client.get("/ui/login", headers={"Accept-Language": "en"})
    answer = client.post("/ui/login", data={"csrf_token": csrf_of(page.text), "token": "spr_wrong"},
                         headers={"Accept-Language": "en"})
    assert answer.status_code == 401
    assert "UNAUTHENTICATED" in answer.text
    assert 'role="alert"' in answer.text
    assert client.get("/ui/").status_code == 303


def test_app_code_and_secret_sign_in(web: Site) -> None:
    secret = web.credentials.create_app_secret("bkapp", [])
    client = web.client()
    page = client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf_token": csrf_of(page.text), "app_code": "bkapp", "app_secret": secret})
    assert answer.status_code == 303
    assert "bkapp" in client.get("/ui/").text
    assert secret not in client.cookies["registry_session"]


def test_revoking_the_credential_ends_the_session(web: Site) -> None:
    token = web.token("carol")
    client = web.client()
    sign_in(client, token)
    assert client.get("/ui/").status_code == 200
    credential_id = web.credentials.by_token(token).credential_id  # type: ignore[union-attr]
    assert web.credentials.revoke(credential_id)
    answer = client.get("/ui/")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")
    api = client.get(PACKAGES.format(code="x", module="default") + "/")
    assert api.status_code == 401


def test_sign_out_needs_the_csrf_token_and_ends_the_session(web: Site) -> None:
    client = web.client()
    csrf = sign_in(client, web.token())
    assert client.post("/ui/logout", data={}).status_code == 403
    assert client.get("/ui/").status_code == 200  # still signed in
    answer = client.post("/ui/logout", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert client.get("/ui/").status_code == 303


# -- CSRF on writes ---------------------------------------------------------------


def test_sign_in_without_the_csrf_token_is_refused(web: Site) -> None:
    client = web.client()
    client.get("/ui/login")
    answer = client.post("/ui/login", data={"token": web.token()})
    assert answer.status_code == 403
    assert "PERMISSION_DENIED" in answer.text
    assert client.get("/ui/").status_code == 303


def test_session_writes_need_the_csrf_token(web: Site) -> None:
    client = web.client()
    csrf = sign_in(client, web.token("alice"))
    path = PACKAGES.format(code="csrf", module="default") + "/"
    files = {"package": ("demo.tar.gz", package("1.0.0"))}
    refused = client.post(path, files=files)
    assert refused.status_code == 403
    assert refused.json()["code"] == "PERMISSION_DENIED"
    assert refused.headers["bkapi-error-code"] == "PERMISSION_DENIED"
    wrong = client.post(path, files=files, headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    link = client.post(path + "link/", data={"package_url": "http://127.0.0.1:9/x.tar.gz"})
    assert link.status_code == 403
    assert not (web.root / "packages" / "csrf").exists()
    assert client.get(path).json()["count"] == 0  # reads need no token
    stored = client.post(path, files=files, headers={"X-CSRF-Token": csrf})
    assert stored.status_code == 201, stored.text
    assert stored.json()["operator"] == "alice"
    package_id = stored.json()["id"]
    assert client.delete(f"{path}{package_id}/").status_code == 403
    assert client.delete(f"{path}{package_id}/", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.post(f"{path}{package_id}/restore/").status_code == 403
    assert client.post(f"{path}{package_id}/restore/", headers={"X-CSRF-Token": csrf}).status_code == 200


def test_a_read_only_session_cannot_write(web: Site) -> None:
    client = web.client()
    csrf = sign_in(client, web.token("reader", read_only=True))
    path = PACKAGES.format(code="ro", module="default") + "/"
    answer = client.post(path, files={"package": ("demo.tar.gz", package("1.0.0"))}, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 403
    page = client.get("/ui/ro/default/").text
    assert 'id="upload-file"' not in page and 'class="act"' not in page


# -- escaping ------------------------------------------------------------------------


def test_client_strings_are_escaped(web: Site) -> None:
    token = web.token('<b>op"</b>')
    evil = "<img src=x onerror=alert(1)>"
    desc = app_desc("1.0.0") + b"# <script>alert('desc')</script>\n"
    data = make_tar({"app_desc.yaml": desc, "<svg onload=alert(2)>.py": b"x"})
    record = upload(web.client(), "esc", data, token, filename=f"{evil}.tar.gz")
    assert record["package_name"] == f"{evil}:1.0.0"
    client = web.client()
    sign_in(client, token)
    for path in ("/ui/esc/default/", f"/ui/esc/default/{record['id']}/", "/ui/esc/default/?q=%3Cscript%3E"):
        html = client.get(path).text
        assert "<img src=x" not in html
        assert "<script>alert" not in html
        assert "<svg onload" not in html
        assert "<b>op" not in html
    detail = client.get(f"/ui/esc/default/{record['id']}/").text
    assert "&lt;img src=x onerror=alert(1)&gt;:1.0.0" in detail
    assert "&lt;script&gt;alert(&#39;desc&#39;)&lt;/script&gt;" in detail


# -- [ui] enabled = false ----------------------------------------------------------------


def test_disabled_interface_is_a_404_everywhere(tmp_path: Path) -> None:
    with site(tmp_path, {"ui": {"enabled": False}}) as s:
        token = s.token()
        client = s.client()
        for path in ("/", "/ui", "/ui/", "/ui/login", "/ui/static/ui.js", "/ui/app/default/", "/ui/lang?to=en"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["code"] == "NOT_FOUND"
        assert client.post("/ui/login", data={"token": token}).status_code in (404, 405)
        assert not (tmp_path / "ui-session-secret").exists()
        # the JSON routes stay
        answer = client.get("/bkapps/applications/", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200


def test_generated_session_secret_is_private_and_kept(tmp_path: Path) -> None:
    with site(tmp_path) as first:
        token = first.token()
        client = first.client()
        sign_in(client, token)
        cookie = client.cookies["registry_session"]
    secret_file = tmp_path / "ui-session-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    with site(tmp_path) as second:
        again = second.client()
        again.cookies.set("registry_session", cookie)
        assert again.get("/ui/").status_code == 200  # the same key after a restart
    assert secret_file.read_text().strip() not in (tmp_path / "registry.toml").read_text()


def test_configured_session_secret_is_used(tmp_path: Path) -> None:
    with site(tmp_path, {"ui": {"session_secret": "a-configured-key-of-some-length"}}) as s:
        client = s.client()
        sign_in(client, s.token())
        assert client.get("/ui/").status_code == 200
    assert not (tmp_path / "ui-session-secret").exists()


# -- language -----------------------------------------------------------------------------


def test_chinese_by_default_english_when_preferred_and_switch(web: Site) -> None:
    client = web.client()
    assert "登录" in client.get("/ui/login").text
    assert ">Sign in<" in client.get("/ui/login", headers={"Accept-Language": "en-US,en;q=0.9"}).text
    switched = client.get("/ui/lang", params={"to": "en", "next": "/ui/login"})
    assert switched.status_code == 303 and switched.headers["location"] == "/ui/login"
    assert ">Sign in<" in client.get("/ui/login", headers={"Accept-Language": "zh-CN"}).text
    # no open redirect
    away = client.get("/ui/lang", params={"to": "zh", "next": "//evil.example/"})
    assert away.headers["location"] == "/ui/"


# -- the JSON browse routes ------------------------------------------------------------------


def test_applications_and_modules_routes(web: Site) -> None:
    token = web.token()
    client = web.client()
    for code, module, version in [("br-alpha", "default", "1"), ("br-alpha", "web", "1"), ("br-alpha", "web", "2"),
                                  ("br-beta", "default", "1")]:
        answer = client.post(PACKAGES.format(code=code, module=module) + "/",
                             files={"package": ("demo.tar.gz", package(salt=code + module + version))},
                             data={"version": version}, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 201, answer.text
    auth = {"Authorization": f"Bearer {token}"}
    apps = client.get("/bkapps/applications/", params={"search_term": "br-"}, headers=auth).json()
    assert apps["count"] == 2 and apps["next"] is None and apps["previous"] is None
    assert [(a["code"], a["modules"], a["packages"]) for a in apps["results"]] == [("br-alpha", 2, 3), ("br-beta", 1, 1)]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", apps["results"][0]["last_uploaded"])
    page = client.get("/api/bkpaas3/prod/bkapps/applications/", params={"limit": 1, "search_term": "br-"}, headers=auth).json()
    assert page["count"] == 2 and [a["code"] for a in page["results"]] == ["br-alpha"]
    assert "cursor=" in page["next"] and "offset" not in page["next"]
    second = client.get(page["next"], headers=auth).json()
    assert [a["code"] for a in second["results"]] == ["br-beta"] and second["previous"] is not None
    found = client.get("/bkapps/applications", params={"search_term": "r-bet"}, headers=auth).json()
    assert [a["code"] for a in found["results"]] == ["br-beta"]
    modules = client.get("/stag/bkapps/applications/br-alpha/modules/", headers=auth).json()
    assert [(m["name"], m["packages"]) for m in modules["results"]] == [("default", 1), ("web", 2)]
    assert client.get("/bkapps/applications/nobody/modules/", headers=auth).json()["results"] == []
    assert client.get("/bkapps/applications/BAD/modules/", headers=auth).status_code == 400
    assert client.get("/bkapps/applications/", params={"limit": "0"}, headers=auth).status_code == 400
    assert client.get("/bkapps/applications/", params={"limit": "9" * 40}, headers=auth).status_code == 400
    # A deleted package no longer counts; its application is still listed.
    listed = client.get(PACKAGES.format(code="br-beta", module="default") + "/", headers=auth).json()
    client.delete(PACKAGES.format(code="br-beta", module="default") + f"/{listed['results'][0]['id']}/", headers=auth)
    beta = client.get("/bkapps/applications/", params={"search_term": "br-beta"}, headers=auth).json()["results"][0]
    assert beta["packages"] == 0 and beta["last_uploaded"] is None


def test_browse_routes_apply_the_credential_scope(web: Site) -> None:
    writer = web.token()
    client = web.client()
    for code in ("one", "two", "three"):
        upload(client, code, package("1.0.0", salt=code), writer)
    scoped = {"Authorization": f"Bearer {web.token('scoped', apps=('one', 'three'))}"}
    apps = client.get("/bkapps/applications/", headers=scoped).json()  # a scope limits the listing
    assert [a["code"] for a in apps["results"]] == ["one", "three"] and apps["count"] == 2
    assert client.get("/bkapps/applications/one/modules/", headers=scoped).status_code == 200
    denied = client.get("/bkapps/applications/two/modules/", headers=scoped)
    assert denied.status_code == 403 and denied.json()["code"] == "PERMISSION_DENIED"
    assert client.get("/bkapps/applications/").status_code == 401
    assert client.get("/bkapps/applications/one/modules/").status_code == 401
    # the same scope in the web interface
    browser = web.client()
    sign_in(browser, scoped["Authorization"].split()[1])
    home = browser.get("/ui/").text
    assert "/ui/one/" in home and "/ui/three/" in home and "/ui/two/" not in home
    assert browser.get("/ui/two/").status_code == 403
    assert browser.get("/ui/two/default/").status_code == 403


def test_anonymous_readers_browse_when_allowed(tmp_path: Path) -> None:
    with site(tmp_path, {"auth": {"anonymous_read": True}}) as s:
        client = s.client()
        record = upload(client, "open", package("1.0.0"), s.token())
        assert client.get("/bkapps/applications/").json()["count"] == 1
        assert client.get("/bkapps/applications/open/modules/").status_code == 200
        assert client.get("/ui/").status_code == 200
        page = client.get("/ui/open/default/").text
        assert "/download/" in page
        assert 'id="upload-file"' not in page and 'class="act"' not in page
        assert client.get(PACKAGES.format(code="open", module="default") + f"/{record['id']}/download/").status_code == 200


# -- captured at ingest ------------------------------------------------------------------------


def test_details_are_captured_at_ingest_and_shown_without_the_blob(web: Site) -> None:
    token = web.token()
    members = {f"src/file{i:03}.py": b"x" for i in range(250)}
    long_desc = app_desc("2.0.0") + b"# " + b"y" * (70 * 1024) + b"\n"
    record = upload(web.client(), "details", make_tar({"app_desc.yaml": long_desc, **members}), token, version="2.0.0")
    details = web.store.package_details(record["id"])
    assert details is not None
    assert len(details.member_paths) == 200 and details.members == 251
    assert details.member_paths[:2] == ["app_desc.yaml", "src/file000.py"]
    assert details.app_desc is not None and details.app_desc_truncated
    assert len(details.app_desc.encode()) == 64 * 1024
    blobs = list(blob_files(web.root / "packages" / "details"))
    assert len(blobs) == 1
    blobs[0].unlink()  # the page must not need it
    client = web.client()
    sign_in(client, token)
    page = client.get(f"/ui/details/default/{record['id']}/")
    assert page.status_code == 200
    assert "src/file198.py" in page.text and "src/file199.py" not in page.text
    assert "appVersion: 2.0.0" in page.text
    assert "前 200 个，共 251 个" in page.text


def test_overwrite_replaces_the_details_and_history_lists_every_change(web: Site) -> None:
    token = web.token("dave")
    client = web.client()
    first = upload(client, "hist", make_tar({"app_desc.yaml": app_desc("1.0.0"), "old.py": b"1"}), token)
    upload(client, "hist", make_tar({"app_desc.yaml": app_desc("1.0.0"), "new.py": b"2"}), token,
           allow_overwrite="true")
    path = PACKAGES.format(code="hist", module="default") + f"/{first['id']}/"
    auth = {"Authorization": f"Bearer {token}"}
    assert client.delete(path, headers=auth).status_code == 204
    assert client.post(path + "restore/", headers=auth).status_code == 200
    details = web.store.package_details(first["id"])
    assert details is not None and "new.py" in details.member_paths and "old.py" not in details.member_paths
    browser = web.client()
    sign_in(browser, token)
    page = browser.get(f"/ui/hist/default/{first['id']}/", headers={"Accept-Language": "en"}).text
    history = page[page.index('class="history"'):]
    kinds = re.findall(r"<tr><td>(stored|overwritten|deleted|restored)</td><td>dave</td>", history)
    assert kinds == ["stored", "overwritten", "deleted", "restored"]


def test_bad_paths_on_pages_are_errors_not_crashes(web: Site) -> None:
    client = web.client()
    sign_in(client, web.token())
    assert client.get("/ui/BAD/").status_code == 400
    assert client.get("/ui/ok/default/99/").status_code == 404
    assert "PACKAGE_NOT_FOUND" in client.get("/ui/ok/default/99/").text
    assert client.get("/ui/ok/default/abc/").status_code == 400
    assert client.get("/ui/ok/default/?offset=" + "9" * 50).status_code == 200
    assert client.get("/ui/ok/default/?q=" + "x" * 500).status_code == 400


def test_templates_and_static_files_are_package_data() -> None:
    """Every file the interface serves is declared package data, so an installed wheel carries it."""
    import configparser
    import fnmatch

    repo = Path(__file__).resolve().parent.parent
    config = configparser.ConfigParser()
    config.read(repo / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["registry.ui"].split(",")]
    ui = repo / "registry" / "ui"
    shipped = [p.relative_to(ui).as_posix() for p in ui.rglob("*")
               if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    assert shipped, "no templates or static files found"
    assert [f for f in shipped if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)] == []


def test_names_that_are_not_utf8_and_nul_in_app_desc_are_kept_replaced(web: Site) -> None:
    """A tar member named in Latin-1 and an app_desc.yaml holding NUL are stored
    (PostgreSQL text holds no NUL, no store encodes a lone surrogate) as U+FFFD."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT, encoding="latin-1") as archive:
        for name, data in [("app_desc.yaml", app_desc("1.0.0") + b"# \x00\n"), ("caf\xe9.py", b"x")]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    token = web.token()
    record = upload(web.client(), "odd-names", buffer.getvalue(), token, version="1.0.0")
    details = web.store.package_details(record["id"])
    assert details is not None and details.member_paths == ["app_desc.yaml", "caf\ufffd.py"]
    assert details.app_desc is not None and details.app_desc.endswith("# \ufffd\n")
    client = web.client()
    sign_in(client, token)
    page = client.get(f"/ui/odd-names/default/{record['id']}/")
    assert page.status_code == 200 and "caf\ufffd.py" in page.text


def _links(html: str) -> dict[str, str]:
    """The pager's links by ``rel`` (prev, next), unescaped."""
    pager = html[html.index('class="pager"'):]
    return {rel: htmllib.unescape(href) for href, rel in re.findall(r'<a href="([^"]+)" rel="(prev|next)"', pager)}


def test_the_packages_page_walks_by_cursor_both_ways(web: Site) -> None:
    """Next and Previous carry keyset cursors: every package once going forward,
    the same pages coming back, the total read from the module's counter."""
    total = 123
    for n in range(total):
        web.store.commit(new_package(f"1.{n}.0", code="kp-walk"), allow_overwrite=False)
    gone = web.store.find_version("kp-walk", "default", "1.7.0")
    assert gone is not None
    web.store.soft_delete("kp-walk", "default", gone.id)
    client = web.client()
    sign_in(client, web.token())
    path = "/ui/kp-walk/default/"
    pages: list[list[int]] = []
    while True:
        page = client.get(path)
        assert page.status_code == 200
        pages.append([int(i) for i in re.findall(r'<tr data-id="(\d+)"', page.text)])
        assert f"{total - 1}" in page.text[page.text.index('class="pager"'):]
        links = _links(page.text)
        assert ("prev" in links) == (len(pages) > 1)
        if "next" not in links:
            break
        assert "cursor=" in links["next"] and "offset" not in links["next"]
        path = links["next"]
    seen = [i for ids in pages for i in ids]
    assert [len(ids) for ids in pages] == [50, 50, 22]
    assert len(seen) == len(set(seen)) == total - 1 and gone.id not in seen
    assert seen == sorted(seen, reverse=True)  # newest first
    back: list[list[int]] = []
    while "prev" in (links := _links(page.text)):
        page = client.get(links["prev"])
        back.append([int(i) for i in re.findall(r'<tr data-id="(\d+)"', page.text)])
    assert back == pages[-2::-1]
    # the deleted one shows with "Show deleted", the count with it; a bad cursor is a 400 page
    deleted = client.get("/ui/kp-walk/default/", params={"deleted": "1"})
    assert f"{total}" in deleted.text[deleted.text.index('class="pager"'):]
    assert "deleted=1" in _links(deleted.text)["next"]
    refused = client.get("/ui/kp-walk/default/", params={"cursor": "nonsense"})
    assert refused.status_code == 400 and "VALIDATION_ERROR" in refused.text


def test_applications_page_and_route_walk_by_cursor(web: Site) -> None:
    codes = [f"kp-apps-{n:02d}" for n in range(57)]
    for code in codes:
        web.store.commit(new_package("1.0.0", code=code), allow_overwrite=False)
    client = web.client()
    sign_in(client, web.token())
    first = client.get("/ui/", params={"q": "kp-apps-"})
    listed = re.findall(r'<a href="/ui/(kp-apps-\d+)/">', first.text)
    assert listed == codes[:50]
    second = client.get(_links(first.text)["next"])
    assert re.findall(r'<a href="/ui/(kp-apps-\d+)/">', second.text) == codes[50:]
    assert "next" not in _links(second.text)
    back = client.get(_links(second.text)["prev"])
    assert re.findall(r'<a href="/ui/(kp-apps-\d+)/">', back.text) == codes[:50]
    # the JSON route's links carry cursors too, forward and back
    auth = {"Authorization": f"Bearer {web.token()}"}
    walked: list[str] = []
    url: str | None = "/bkapps/applications/?search_term=kp-apps-&limit=20"
    while url:
        answer = client.get(url, headers=auth).json()
        assert answer["count"] == 57
        walked += [a["code"] for a in answer["results"]]
        last, url = answer, answer["next"]
    assert walked == codes
    assert [a["code"] for a in client.get(last["previous"], headers=auth).json()["results"]] == codes[20:40]
    assert client.get("/bkapps/applications/", params={"cursor": "x"}, headers=auth).status_code == 400
