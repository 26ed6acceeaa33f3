"""The web interface in a real browser: Debian's Chromium driven by Playwright
against a live ``registry serve``. Screenshots of the main pages go to
``tests/artifacts/`` (not kept in git)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FileServer
from tests.helpers import (
    Api,
    RegistryProcess,
    app_desc,
    base_config,
    make_tar,
    merge,
    package,
    start_registry,
)

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need a Chromium binary; none at {CHROMIUM}", allow_module_level=True)

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"

Page = Any  # playwright.sync_api.Page


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def contexts(browser: Any) -> Iterator[Any]:
    """Opens browser contexts (own cookies each) and closes them after the test."""
    opened: list[Any] = []

    def open_context(locale: str = "en-US", width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(locale=locale, viewport={"width": width, "height": height},
                                      accept_downloads=True)
        context.set_default_timeout(20_000)
        opened.append(context)
        return context

    yield open_context
    for context in opened:
        context.close()


@pytest.fixture
def page(contexts: Any) -> Page:
    """A page in English (the contract's control names)."""
    return contexts().new_page()


@pytest.fixture(scope="module")
def writer_token(registry: RegistryProcess) -> str:
    return registry.token("ui-writer")


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/ui/login")
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{base_url}/ui/")


def rows(page: Page) -> Any:
    return page.locator("#package-list tbody tr[data-id]")


def status(page: Page) -> Any:
    return page.get_by_role("status")


def alert(page: Page) -> Any:
    return page.get_by_role("alert")


def file_form(page: Page) -> Any:
    return page.get_by_role("form", name="Upload a file")


def link_form(page: Page) -> Any:
    return page.get_by_role("form", name="Upload from a link")


def upload_in_page(page: Page, path: Path, version: str = "", overwrite: bool = False) -> None:
    form = file_form(page)
    form.get_by_label("Package", exact=True).set_input_files(str(path))
    form.get_by_label("Version", exact=True).fill(version)
    if overwrite:
        form.get_by_label("Allow overwrite").check()
    form.get_by_role("button", name="Upload", exact=True).click()


# -- sign in and out, every page -------------------------------------------------------------


def test_sign_in_every_page_and_sign_out(page: Page, registry: RegistryProcess, writer_token: str) -> None:
    api = Api(registry.url, writer_token)
    try:
        record = api.upload("ui-pages", make_tar({"app_desc.yaml": app_desc("1.2.0"), "src/app.py": b"print(1)\n"}),
                            filename="shop.tar.gz").json()
        api.upload("ui-pages", package("0.9.0"), module="worker")
    finally:
        api.close()
    page.goto(f"{registry.url}/")
    page.wait_for_url(f"{registry.url}/ui/login?next=%2Fui%2F")
    shot(page, "login")
    sign_in(page, registry.url, writer_token)
    header = page.locator("header")
    assert header.get_by_text("ui-writer").is_visible()
    assert header.get_by_role("button", name="Sign out").is_visible()
    page.get_by_label("Filter").fill("ui-pages")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="ui-pages", exact=True).click()
    page.wait_for_url(f"{registry.url}/ui/ui-pages/")
    assert page.get_by_role("link", name="worker").is_visible()
    shot(page, "modules")
    page.get_by_role("link", name="default", exact=True).click()
    headers = page.locator("table.packages thead th").all_inner_texts()
    assert headers[:7] == ["Version", "Package", "Size", "SHA-256", "Operator", "Created", "Status"]
    assert page.get_by_role("cell", name="shop:1.2.0").is_visible()
    size = page.locator("#package-list .size").first
    assert size.get_attribute("title") == f"{record['package_size']} bytes"
    created = page.locator("#package-list time").first
    assert created.get_attribute("title", timeout=1000).endswith("UTC")
    shot(page, "packages")
    page.get_by_role("link", name="1.2.0").click()
    page.wait_for_url(f"{registry.url}/ui/ui-pages/default/{record['id']}/")
    assert page.get_by_role("heading", name="shop:1.2.0").is_visible()
    assert "appVersion: 1.2.0" in page.locator("pre.yaml").inner_text()
    assert page.locator("ul.members li").all_inner_texts() == ["app_desc.yaml", "src/app.py"]
    assert "registry pull" in page.locator("pre.cmd").nth(1).inner_text()
    assert page.locator("table.history tbody tr").first.inner_text().startswith("stored")
    assert page.get_by_role("link", name="Download").is_visible()
    shot(page, "package")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{registry.url}/ui/login?signed_out=1")
    page.goto(f"{registry.url}/ui/ui-pages/")
    assert "/ui/login" in page.url


def test_sign_in_with_app_code_and_secret(page: Page, registry: RegistryProcess) -> None:
    secret = registry.cli("app-secret", "create", "--app-code", "ui-bkapp").stdout.strip().splitlines()[-1]
    page.goto(f"{registry.url}/ui/login")
    page.get_by_label("App code").fill("ui-bkapp")
    page.get_by_label("App secret").fill(secret)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{registry.url}/ui/")
    assert page.locator("header").get_by_text("ui-bkapp").is_visible()


def test_a_wrong_token_shows_the_registry_error(page: Page, registry: RegistryProcess) -> None:
    page.goto(f"{registry.url}/ui/login")
    page.get_by_label("Token", exact=True).fill("spr_not-a-token")
    page.get_by_role("button", name="Sign in", exact=True).click()
    assert "UNAUTHENTICATED" in alert(page).inner_text()


# -- uploads, download, overwrite, delete and restore --------------------------------------------


def test_upload_with_progress_then_download_by_sha256(page: Page, registry: RegistryProcess, writer_token: str,
                                                      tmp_path: Path) -> None:
    data = make_tar({"app_desc.yaml": app_desc("3.0.0"), "blob.bin": os.urandom(6 * 1024 * 1024)})
    path = tmp_path / "big-app.tar.gz"
    path.write_bytes(data)
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-upload/default/")
    bar = page.get_by_role("progressbar")
    page.evaluate("""() => {
        window.seen = [];
        const bar = document.querySelector('[role=progressbar]');
        new MutationObserver(() => window.seen.push(Number(bar.getAttribute('aria-valuenow'))))
            .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
    }""")
    upload_in_page(page, path)
    playwright_api.expect(status(page)).to_contain_text("Stored: big-app:3.0.0")
    seen = page.evaluate("window.seen")
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen), seen
    assert bar.get_attribute("aria-valuenow") == "100"
    assert "/s" in page.locator(".progress-text").inner_text()
    row = rows(page).filter(has_text="big-app:3.0.0")
    playwright_api.expect(row).to_have_count(1)
    with page.expect_download() as download:
        row.get_by_role("link", name="Download").click()
    fetched = Path(download.value.path()).read_bytes()
    assert hashlib.sha256(fetched).hexdigest() == hashlib.sha256(data).hexdigest()
    assert row.locator("code").get_attribute("title") == hashlib.sha256(data).hexdigest()


def test_upload_by_drag_and_drop(page: Page, registry: RegistryProcess, writer_token: str) -> None:
    data = package("7.0.0", salt="dropped")
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-drop/default/")
    transfer = page.evaluate_handle("""(bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "dropped.tar.gz"));
        return transfer;
    }""", list(data))
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    file_form(page).get_by_role("button", name="Upload", exact=True).click()
    playwright_api.expect(status(page)).to_contain_text("Stored: dropped:7.0.0")
    playwright_api.expect(rows(page).filter(has_text="dropped:7.0.0")).to_have_count(1)


def test_conflict_then_overwrite_in_one_click(page: Page, registry: RegistryProcess, writer_token: str,
                                              tmp_path: Path) -> None:
    first, second = tmp_path / "first" / "svc.tar.gz", tmp_path / "second" / "svc.tar.gz"
    for path, salt in ((first, "a"), (second, "b")):
        path.parent.mkdir()
        path.write_bytes(package("1.0.0", salt=salt))
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-conflict/default/")
    upload_in_page(page, first)
    playwright_api.expect(status(page)).to_contain_text("Stored")
    upload_in_page(page, second)
    playwright_api.expect(alert(page)).to_contain_text("PACKAGE_ALREADY_EXISTS")
    assert "already exists" in alert(page).inner_text().lower()
    alert(page).get_by_role("button", name="Overwrite").click()
    playwright_api.expect(status(page)).to_contain_text("Stored: svc:1.0.0")
    api = Api(registry.url, writer_token)
    try:
        listed = api.list("ui-conflict").json()
    finally:
        api.close()
    assert listed["count"] == 1
    assert listed["results"][0]["sha256_signature"] == hashlib.sha256(second.read_bytes()).hexdigest()


def test_upload_from_link(page: Page, registry: RegistryProcess, writer_token: str, file_server: FileServer) -> None:
    url = file_server.add("ui/linked-app.tar.gz", package("4.1.0", salt="link"))
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-link/default/")
    form = link_form(page)
    form.get_by_label("Package URL").fill(url)
    form.get_by_role("button", name="Upload from link").click()
    playwright_api.expect(status(page)).to_contain_text("Stored: linked-app:4.1.0")
    playwright_api.expect(rows(page).filter(has_text="linked-app:4.1.0")).to_have_count(1)
    # a failure shows the registry's code
    form.get_by_label("Package URL").fill("ftp://example.invalid/x.tar.gz")
    form.get_by_role("button", name="Upload from link").click()
    playwright_api.expect(alert(page)).to_contain_text("UNSUPPORTED_SOURCE_ORIGIN")


def test_delete_show_deleted_and_restore(page: Page, registry: RegistryProcess, writer_token: str) -> None:
    api = Api(registry.url, writer_token)
    try:
        api.upload("ui-delete", package("5.0.0"), filename="gone.tar.gz")
    finally:
        api.close()
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-delete/default/")
    row = rows(page).filter(has_text="gone:5.0.0")
    row.get_by_role("button", name="Delete").click()
    cancel = row.get_by_role("button", name="Cancel")
    cancel.click()  # the confirm step can be left
    row.get_by_role("button", name="Delete").click()
    row.get_by_role("button", name="Confirm Delete").click()
    playwright_api.expect(status(page)).to_have_text("Deleted")
    playwright_api.expect(rows(page)).to_have_count(0)
    page.get_by_label("Show deleted").check()
    page.wait_for_url("**deleted=1**")
    row = rows(page).filter(has_text="gone:5.0.0")
    playwright_api.expect(row).to_contain_text("Deleted")
    assert row.get_by_role("link", name="Download").count() == 0
    row.get_by_role("button", name="Restore").click()
    row.get_by_role("button", name="Confirm Restore").click()
    playwright_api.expect(status(page)).to_have_text("Restored")
    playwright_api.expect(rows(page).filter(has_text="gone:5.0.0")).to_contain_text("Live")


# -- who sees write controls --------------------------------------------------------------------


def assert_no_write_controls(page: Page) -> None:
    assert page.get_by_role("form", name="Upload a file").count() == 0
    assert page.get_by_role("form", name="Upload from a link").count() == 0
    assert page.locator("input[type=file]").count() == 0
    assert page.get_by_role("button", name="Delete").count() == 0
    assert page.get_by_role("button", name="Restore").count() == 0


def test_read_only_reader_sees_no_write_controls(page: Page, registry: RegistryProcess, writer_token: str) -> None:
    api = Api(registry.url, writer_token)
    try:
        record = api.upload("ui-readonly", package("1.0.0")).json()
        api.upload("ui-readonly", package("2.0.0"))
        api.delete("ui-readonly", record["id"])
    finally:
        api.close()
    sign_in(page, registry.url, registry.token("ui-reader", read_only=True))
    page.goto(f"{registry.url}/ui/ui-readonly/default/?deleted=1")
    playwright_api.expect(rows(page)).to_have_count(2)
    assert page.locator("header").get_by_text("read-only").is_visible()
    assert_no_write_controls(page)
    assert page.get_by_role("link", name="Download").count() == 1
    page.goto(f"{registry.url}/ui/ui-readonly/default/{record['id']}/")
    assert_no_write_controls(page)


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("ui-anonymous")
    process = start_registry(root, merge(base_config(root), {"auth": {"anonymous_read": True}}))
    yield process
    process.stop()


def test_anonymous_reader_browses_without_write_controls(page: Page, open_registry: RegistryProcess) -> None:
    api = Api(open_registry.url, open_registry.token("uploader"))
    try:
        api.upload("public", package("1.0.0"))
    finally:
        api.close()
    page.goto(f"{open_registry.url}/ui/")
    assert page.locator("header").get_by_text("Anonymous reader").is_visible()
    page.get_by_role("link", name="public", exact=True).click()
    page.get_by_role("link", name="default", exact=True).click()
    playwright_api.expect(rows(page)).to_have_count(1)
    assert_no_write_controls(page)
    assert page.get_by_role("link", name="Download").count() == 1


# -- security --------------------------------------------------------------------------------------


def test_a_hostile_package_name_renders_as_text(page: Page, registry: RegistryProcess, writer_token: str) -> None:
    evil = "<img src=x onerror=alert(1)>"
    api = Api(registry.url, writer_token)
    try:
        record = api.upload("ui-xss", make_tar({"app_desc.yaml": app_desc("1.0.0") + b"# <script>alert(2)</script>\n",
                                                "<svg onload=alert(3)>": b"x"}),
                            filename=f"{evil}.tar.gz").json()
    finally:
        api.close()
    assert record["package_name"] == f"{evil}:1.0.0"
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-xss/default/")
    assert rows(page).first.locator("td.name").inner_text() == f"{evil}:1.0.0"
    assert page.locator("main img, main svg, main script").count() == 0
    page.goto(f"{registry.url}/ui/ui-xss/default/{record['id']}/")
    assert page.get_by_role("heading", name=f"{evil}:1.0.0").is_visible()
    assert "<script>alert(2)</script>" in page.locator("pre.yaml").inner_text()
    assert page.locator("main img, main svg, main script").count() == 0
    page.wait_for_timeout(300)  # give a handler that slipped through a chance to fire
    assert dialogs == []


def test_a_forged_cross_site_form_post_changes_nothing(page: Page, registry: RegistryProcess, writer_token: str,
                                                       file_server: FileServer) -> None:
    target = file_server.add("ui/forged-payload.tar.gz", package("6.6.6", salt="forged"))
    action = f"{registry.url}/bkapps/applications/ui-forged/modules/default/source_package/link/"
    forged = file_server.add("ui/forged.html", (
        "<!doctype html><form method='post' action='" + action + "'>"
        "<input name='package_url' value='" + target + "'><input name='version' value='6.6.6'>"
        "<button type='submit'>Win a prize</button></form>").encode())
    sign_in(page, registry.url, writer_token)  # the victim has a live session
    page.goto(forged)
    page.get_by_role("button", name="Win a prize").click()
    page.wait_for_load_state()
    assert "PERMISSION_DENIED" in page.content()
    api = Api(registry.url, writer_token)
    try:
        assert api.list("ui-forged", include_deleted="true").json()["count"] == 0
    finally:
        api.close()


# -- language, narrow screens, scale ---------------------------------------------------------------


def test_chinese_by_default_english_when_preferred_and_the_switch(contexts: Any, registry: RegistryProcess) -> None:
    chinese = contexts(locale="zh-CN").new_page()
    chinese.goto(f"{registry.url}/ui/login")
    assert chinese.get_by_role("heading", name="登录").is_visible()
    assert chinese.get_by_label("访问令牌").is_visible()
    shot(chinese, "login-zh")
    chinese.get_by_role("link", name="English").click()
    assert chinese.get_by_role("heading", name="Sign in").is_visible()
    chinese.reload()
    assert chinese.get_by_label("Token", exact=True).is_visible()  # kept in a cookie
    english = contexts(locale="en-US").new_page()
    english.goto(f"{registry.url}/ui/login")
    assert english.get_by_role("heading", name="Sign in").is_visible()
    english.get_by_role("link", name="中文").click()
    assert english.get_by_role("heading", name="登录").is_visible()
    english.get_by_label("访问令牌").fill("spr_wrong")
    english.get_by_role("button", name="登录", exact=True).click()
    assert "UNAUTHENTICATED" in english.get_by_role("alert").inner_text()
    assert "用户未登录" in english.get_by_role("alert").inner_text()


def test_readable_at_375_px(contexts: Any, registry: RegistryProcess, writer_token: str) -> None:
    api = Api(registry.url, writer_token)
    try:
        record = api.upload("ui-narrow", package("1.0.0"), filename="a-rather-long-package-file-name.tar.gz").json()
    finally:
        api.close()
    page = contexts(width=375, height=812).new_page()
    sign_in(page, registry.url, writer_token)
    for path, name in (("/ui/", "narrow-applications"), ("/ui/ui-narrow/default/", "narrow-packages"),
                       (f"/ui/ui-narrow/default/{record['id']}/", "narrow-package")):
        page.goto(registry.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, (path, width)
        shot(page, name)
    page.goto(registry.url + "/ui/ui-narrow/default/")
    assert file_form(page).get_by_role("button", name="Upload", exact=True).is_visible()


def test_keyboard_reaches_the_sign_in_form(page: Page, registry: RegistryProcess, writer_token: str) -> None:
    page.goto(f"{registry.url}/ui/login")
    page.get_by_label("Token", exact=True).focus()
    page.keyboard.type(writer_token)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{registry.url}/ui/")
    page.keyboard.press("Tab")  # the first Tab lands on the skip link
    assert page.evaluate("document.activeElement.getAttribute('href')") == "#main"


def test_a_module_with_thousands_of_packages(page: Page, registry: RegistryProcess, writer_token: str) -> None:
    import sqlite3

    total = 3000
    db = sqlite3.connect(Path(registry.config).parent / "registry.db", timeout=30)
    try:
        with db:
            db.executemany(
                "INSERT INTO packages (code, module, version, package_name, package_size, sha256, blob_key, format,"
                " file_name, origin, source_url, is_deleted, revived, created, updated, operator)"
                " VALUES ('ui-bulk', 'default', ?, ?, 1024, ?, ?, 'tar.gz', '', 'upload', '', 0, 0, ?, ?, 'bulk')",
                [(f"1.0.{i}", f"bulk:1.0.{i}", hashlib.sha256(str(i).encode()).hexdigest(), f"ui-bulk/default/{i}",
                  f"2024-01-01 00:{i // 60 % 60:02}:{i % 60:02}.{i:06}", f"2024-01-01 00:00:00.{i:06}")
                 for i in range(total)],
            )
    finally:
        db.close()
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-bulk/default/")
    playwright_api.expect(rows(page)).to_have_count(50)
    assert f"{total} in all" in page.locator(".pager").inner_text()
    newest = rows(page).first.locator("td").first.inner_text()
    assert newest == f"1.0.{total - 1}"
    page.get_by_role("link", name="Next").click()
    playwright_api.expect(rows(page)).to_have_count(50)
    assert rows(page).first.locator("td").first.inner_text() == f"1.0.{total - 51}"
    assert "cursor=" in page.url and "offset" not in page.url

    def ids_shown() -> list[str]:
        return rows(page).evaluate_all("rows => rows.map(r => r.dataset.id)")  # type: ignore[no-any-return]

    def follow(name: str) -> None:
        with page.expect_navigation():
            page.get_by_role("link", name=name).click()

    # every page forward by Next, then every page back by Previous: each row once, the same pages
    follow("Previous")
    forward = [ids_shown()]
    while page.get_by_role("link", name="Next").count():
        follow("Next")
        forward.append(ids_shown())
        assert f"{total} in all" in page.locator(".pager").inner_text()
    seen = [i for ids in forward for i in ids]
    assert len(forward) == total // 50 and len(seen) == len(set(seen)) == total
    backward = [ids_shown()]
    while page.get_by_role("link", name="Previous").count():
        follow("Previous")
        backward.append(ids_shown())
    assert backward == forward[::-1]
    page.get_by_label("Search", exact=True).fill("1.0.2999")
    page.get_by_role("button", name="Search").click()
    playwright_api.expect(rows(page)).to_have_count(1)
    answer = httpx.get(f"{registry.url}/bkapps/applications/", params={"search_term": "ui-bulk"},
                       headers={"Authorization": f"Bearer {writer_token}"})
    assert answer.json()["results"][0]["packages"] == total


# -- large files go over tus and resume -------------------------------------------------------

#: Above the page's threshold for resumable uploads (64 MiB): nine 8 MiB pieces.
LARGE = 64 * 1024 * 1024 + 3 * 1024 * 1024
CHUNK = 8 * 1024 * 1024
SLOW = 90_000  # ms: a 67 MiB upload on a busy machine


@pytest.fixture(scope="module")
def large_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "large-app.tar"
    path.write_bytes(make_tar({"app_desc.yaml": app_desc("9.0.0"), "blob.bin": os.urandom(LARGE)}, compression=""))
    return path


class UploadTraffic:
    """What a page sends to ``P/uploads/``, in order: ``(method, Upload-Offset)`` of
    each request and ``("offset", n)`` for each offset a ``HEAD`` answered."""

    def __init__(self, page: Page) -> None:
        self.events: list[tuple[str, int | None]] = []
        self.multipart_posts = 0
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request: Any) -> None:
        if "/source_package/uploads/" in request.url:
            offset = request.headers.get("upload-offset")
            self.events.append((request.method, int(offset) if offset is not None else None))
        elif request.method == "POST" and request.url.endswith("/source_package/"):
            self.multipart_posts += 1

    def _response(self, response: Any) -> None:
        if "/source_package/uploads/" in response.url and response.request.method == "HEAD" and response.ok:
            self.events.append(("offset", int(response.headers["upload-offset"])))

    def patches(self) -> list[int]:
        return [offset for method, offset in self.events if method == "PATCH" and offset is not None]


def stored_sha256(registry: RegistryProcess, token: str, code: str) -> list[str]:
    api = Api(registry.url, token)
    try:
        return [r["sha256_signature"] for r in api.list(code).json()["results"]]
    finally:
        api.close()


def test_a_large_file_goes_over_tus_with_progress(page: Page, registry: RegistryProcess, writer_token: str,
                                                  large_package: Path) -> None:
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-tus/default/")
    traffic = UploadTraffic(page)
    page.evaluate("""() => {
        window.seen = [];
        const bar = document.querySelector('[role=progressbar]');
        new MutationObserver(() => window.seen.push(Number(bar.getAttribute('aria-valuenow'))))
            .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
    }""")
    upload_in_page(page, large_package, version="9.0.1")
    playwright_api.expect(status(page)).to_contain_text("Stored: large-app:9.0.1", timeout=SLOW)
    assert traffic.multipart_posts == 0, "a large file is not sent as one multipart body"
    assert traffic.events[0] == ("POST", None), traffic.events  # tus creation
    size = large_package.stat().st_size
    assert traffic.patches() == list(range(0, size, CHUNK)), traffic.events
    seen = page.evaluate("window.seen")
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen) and len(set(seen)) > 5, seen
    assert stored_sha256(registry, writer_token, "ui-tus") == [hashlib.sha256(large_package.read_bytes()).hexdigest()]
    assert page.evaluate("Object.keys(localStorage).length") == 0, "a finished upload is forgotten"


def test_a_dropped_connection_resumes_at_the_registry_offset(page: Page, registry: RegistryProcess,
                                                             writer_token: str, large_package: Path) -> None:
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-tus-drop/default/")
    traffic = UploadTraffic(page)
    patches = []

    def drop_the_second_patch(route: Any) -> None:
        if route.request.method == "PATCH":
            patches.append(route.request.headers.get("upload-offset"))
            if len(patches) == 2:
                route.abort("connectionreset")
                return
        route.continue_()

    page.route("**/source_package/uploads/**", drop_the_second_patch)
    upload_in_page(page, large_package, version="9.0.2")
    playwright_api.expect(status(page)).to_contain_text("Stored: large-app:9.0.2", timeout=SLOW)
    page.unroute("**/source_package/uploads/**")
    offsets = traffic.patches()
    assert offsets[:2] == [0, CHUNK], traffic.events  # the second one never arrived
    asked = traffic.events.index(("offset", CHUNK))  # the page asked where the upload stands
    assert traffic.events[asked + 1] == ("PATCH", CHUNK), traffic.events  # and went on from there
    assert [m for m, _ in traffic.events].count("POST") == 1, "the same upload went on"
    assert stored_sha256(registry, writer_token, "ui-tus-drop") == [
        hashlib.sha256(large_package.read_bytes()).hexdigest()]


def test_a_reloaded_page_resumes_the_same_file(page: Page, registry: RegistryProcess, writer_token: str,
                                               large_package: Path) -> None:
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-tus-reload/default/")
    with page.expect_response(lambda r: r.request.method == "PATCH" and r.status == 204):
        upload_in_page(page, large_package, version="9.0.3")
    page.reload()  # cuts the second PATCH short; the registry keeps what it received
    traffic = UploadTraffic(page)
    upload_in_page(page, large_package, version="9.0.3")
    playwright_api.expect(status(page)).to_contain_text("Stored: large-app:9.0.3", timeout=SLOW)
    methods = [m for m, _ in traffic.events]
    assert "POST" not in methods, f"the upload was resumed, not created again: {traffic.events}"
    first_head = next(offset for method, offset in traffic.events if method == "offset")
    assert first_head is not None and first_head >= CHUNK, traffic.events
    assert traffic.patches()[0] == first_head, traffic.events  # from the registry's offset, not byte 0
    assert min(traffic.patches()) >= CHUNK, traffic.events
    assert stored_sha256(registry, writer_token, "ui-tus-reload") == [
        hashlib.sha256(large_package.read_bytes()).hexdigest()]


def test_a_large_conflict_then_overwrite_over_tus(page: Page, registry: RegistryProcess, writer_token: str,
                                                  large_package: Path) -> None:
    api = Api(registry.url, writer_token)
    try:
        assert api.upload("ui-tus-conflict", package("1.0.0", salt="small"), version="9.9.9").status_code == 201
    finally:
        api.close()
    sign_in(page, registry.url, writer_token)
    page.goto(f"{registry.url}/ui/ui-tus-conflict/default/")
    traffic = UploadTraffic(page)
    upload_in_page(page, large_package, version="9.9.9")
    playwright_api.expect(alert(page)).to_contain_text("PACKAGE_ALREADY_EXISTS", timeout=SLOW)
    assert "already exists" in alert(page).inner_text().lower()
    alert(page).get_by_role("button", name="Overwrite").click()
    playwright_api.expect(status(page)).to_contain_text("Stored: large-app:9.9.9", timeout=SLOW)
    assert traffic.multipart_posts == 0 and [m for m, _ in traffic.events].count("POST") == 2, traffic.events
    assert stored_sha256(registry, writer_token, "ui-tus-conflict") == [
        hashlib.sha256(large_package.read_bytes()).hexdigest()]
