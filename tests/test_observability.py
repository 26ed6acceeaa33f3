"""Metrics, request ids, access log lines, readiness, OpenAPI and /docs."""

from __future__ import annotations

import json
import re
import shutil
import time

import httpx
import pytest
from starlette.routing import Mount, Route

from registry.api.openapi import build_openapi
from registry.api.routes import build_routes
from tests.conftest import FileServer
from tests.helpers import Api, RegistryProcess, package


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit("} ", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_bytes_and_uploads(api: Api, registry: RegistryProcess, code: str,
                                                  file_server: FileServer) -> None:
    route = "/bkapps/applications/{code}/modules/{module_name}/source_package/"
    before = httpx.get(f"{registry.url}/metrics").text
    data = package("1.0.0", salt=code)
    assert api.upload(code, data).status_code == 201
    assert api.upload(code, b"not an archive", version="2").status_code == 400
    assert api.link(code, file_server.add(f"{code}/m.tar.gz", package(salt=code + "l")), version="3").status_code == 201
    after = httpx.get(f"{registry.url}/metrics")
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert metric(text, "registry_http_requests_total", method="POST", route=route, status="201") == \
        metric(before, "registry_http_requests_total", method="POST", route=route, status="201") + 1
    assert metric(text, "registry_uploads_total", origin="upload", result="created") >= 1
    assert metric(text, "registry_uploads_total", origin="upload", result="INVALID_PACKAGE") >= 1
    assert metric(text, "registry_uploads_total", origin="http", result="created") >= 1
    assert metric(text, "registry_http_received_bytes_total") - metric(before, "registry_http_received_bytes_total") > len(data)
    assert metric(text, "registry_http_request_duration_seconds_count", method="POST", route=route) >= 2
    assert "registry_storage_errors_total" in text


def test_request_id_echoed_or_generated(registry: RegistryProcess) -> None:
    echoed = httpx.get(f"{registry.url}/healthz", headers={"X-Request-ID": "build-42"})
    assert echoed.headers["x-request-id"] == "build-42"
    generated = httpx.get(f"{registry.url}/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    error = httpx.get(f"{registry.url}/nowhere")
    assert error.status_code == 404
    assert "x-request-id" in error.headers


def test_access_log_is_one_json_object_per_request(api: Api, registry: RegistryProcess, code: str) -> None:
    request_id = f"log-{code}"
    response = api.http.get(api.path(code), headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    # the line is written once the response is sent: the client may read the log first
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in registry.log.read_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line["request_id"] == request_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(mine) == 1
    entry = mine[0]
    assert entry["method"] == "GET"
    assert entry["path"] == api.path(code)
    assert entry["status"] == 200
    assert entry["operator"] == "alice"
    assert entry["bytes_out"] == len(response.content)
    assert entry["duration_ms"] >= 0


def test_readyz(registry: RegistryProcess) -> None:
    response = httpx.get(f"{registry.url}/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def _template(path: str) -> str:
    for concrete, template in (("/api/bkpaas3/stag", "/api/bkpaas3/{stage}"), ("/api/bkpaas3/prod", "/api/bkpaas3/{stage}"),
                               ("/stag", "/{stage}"), ("/prod", "/{stage}")):
        if path.startswith(concrete + "/"):
            return template + path[len(concrete):]
    return path


def served_routes() -> list[tuple[str, set[str]]]:
    """(path, methods) of every route, mounts expanded (``{stage:stage}`` spelled ``{stage}``)."""
    found: list[tuple[str, set[str]]] = []
    for route in build_routes():
        if isinstance(route, Mount):
            prefix = route.path.replace("{stage:stage}", "stag")
            found.extend((prefix + inner.path, set(inner.methods or ())) for inner in route.routes
                         if isinstance(inner, Route))
        else:
            assert isinstance(route, Route)
            found.append((route.path, set(route.methods or ())))
    return found


def test_every_route_is_in_the_openapi_document() -> None:
    spec = build_openapi()
    documented = {(path.rstrip("/"), method) for path, item in spec["paths"].items() for method in item if method != "parameters"}
    for path, methods in served_routes():
        for method in methods:
            if method == "HEAD":
                continue
            assert (_template(path).rstrip("/"), method.lower()) in documented, (path, method)
    codes = {line.split("`")[1] for line in spec["info"]["description"].splitlines() if line.startswith("- `")}
    assert {"VALIDATION_ERROR", "UNSUPPORTED_SOURCE_ORIGIN", "SOURCE_ORIGIN_FORBIDDEN", "MISSING_VERSION_INFO",
            "INVALID_PACKAGE", "PACKAGE_ALREADY_EXISTS", "CHECKSUM_MISMATCH", "PACKAGE_TOO_LARGE",
            "PACKAGE_DOWNLOAD_FAILED", "PACKAGE_DOWNLOAD_TIMEOUT", "OBJECT_STORE_EXCEPTION", "PACKAGE_NOT_FOUND",
            "UNAUTHENTICATED", "PERMISSION_DENIED"} <= codes


def test_openapi_and_docs_served_without_auth(registry: RegistryProcess) -> None:
    spec = httpx.get(f"{registry.url}/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["openapi"].startswith("3.")
    assert "/api/bkpaas3/{stage}/bkapps/applications/{code}/modules/{module_name}/source_package/link/" in spec.json()["paths"]
    docs = httpx.get(f"{registry.url}/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "openapi.json" in docs.text
    assert "<script src=" not in docs.text


def test_docs_page_shows_response_schemas_and_the_credential_headers(registry: RegistryProcess) -> None:
    """The page, rendered by a real browser, names each response's schema and explains both headers."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on this machine")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page()
            page.goto(f"{registry.url}/docs")
            page.wait_for_selector(".op")
            text = page.inner_text("body")
        finally:
            browser.close()
    assert "X-BKAPI-AUTHORIZATION" in text and "Authorization" in text
    assert "registry token create" in text and "bk_app_secret" in text
    assert "application/json Package" in text and "sha256_signature" in text
    assert "application/json Error" in text and "header bkapi-error-code" in text
    assert "header Registry-Upload-Outcome" in text


def test_a_wrong_method_lists_every_allowed_one(registry: RegistryProcess) -> None:
    """On every route, under every prefix and without the trailing slash, a 405 names all the methods."""
    concrete = {"{code}": "demo", "{module_name}": "default", "{package_id}": "1"}
    checked = 0
    for path, methods in served_routes():
        for name, value in concrete.items():
            path = path.replace(name, value)
        for spelling in {path, path.rstrip("/") or "/"}:
            wrong = next(m for m in ("PATCH", "PUT") if m not in methods)
            response = httpx.request(wrong, registry.url + spelling)
            assert response.status_code == 405, spelling
            assert response.json()["code"] == "METHOD_NOT_ALLOWED"
            assert {m.strip() for m in response.headers["allow"].split(",")} == methods, spelling
            checked += 1
    assert checked >= 30
