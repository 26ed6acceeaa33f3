"""One error shape for every error: the classes themselves, then over HTTP."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.errors import RegistryError, ValidationError, all_error_classes
from tests.conftest import FileServer
from tests.helpers import Api, RegistryProcess, blob_files, free_port, package

#: The contract's error table: code -> (HTTP status, Chinese detail).
CONTRACT: dict[str, tuple[int, str]] = {
    "VALIDATION_ERROR": (400, "参数校验失败"),
    "UNSUPPORTED_SOURCE_ORIGIN": (400, "未支持的源码来源"),
    "SOURCE_ORIGIN_FORBIDDEN": (403, "不允许的源码来源地址"),
    "MISSING_VERSION_INFO": (400, "缺失版本信息"),
    "INVALID_PACKAGE": (400, "源码包文件格式错误"),
    "PACKAGE_ALREADY_EXISTS": (409, "源码包已存在"),
    "CHECKSUM_MISMATCH": (400, "源码包校验和不匹配"),
    "PACKAGE_TOO_LARGE": (413, "源码包过大"),
    "PACKAGE_DOWNLOAD_FAILED": (502, "源码包下载失败"),
    "PACKAGE_DOWNLOAD_TIMEOUT": (504, "源码包下载超时"),
    "OBJECT_STORE_EXCEPTION": (503, "对象存储服务异常"),
    "DATABASE_UNAVAILABLE": (503, "数据库服务异常"),
    "PACKAGE_NOT_FOUND": (404, "找不到指定的源码包"),
    "UNAUTHENTICATED": (401, "用户未登录或登录态失效"),
    "PERMISSION_DENIED": (403, "无权限访问"),
    "INSUFFICIENT_STORAGE": (507, "存储空间不足"),
    "REQUEST_TIMEOUT": (408, "请求超时"),
    "JOB_NOT_FOUND": (404, "找不到指定的任务"),
}
#: Codes the contract does not list, for failures outside its table (HTTP's own).
BEYOND_CONTRACT: dict[str, int] = {
    "INTERNAL_ERROR": 500,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "RANGE_NOT_SATISFIABLE": 416,
    "SERVICE_UNAVAILABLE": 503,
    # tus 1.0.0's own statuses for resumable uploads
    "UPLOAD_OFFSET_MISMATCH": 409,
    "TUS_VERSION_UNSUPPORTED": 412,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "UPLOAD_CHECKSUM_MISMATCH": 460,
}
BODY_KEYS = {"code", "detail", "fields_detail", "data"}


def instance(cls: type[RegistryError]) -> RegistryError:
    if issubclass(cls, ValidationError):
        return cls({"version": [("须为版本号", "must be a version")]})
    return cls()


# -- the classes ---------------------------------------------------------------------------------


def test_every_contract_code_has_a_class() -> None:
    codes = {cls.code for cls in all_error_classes()}
    assert set(CONTRACT) <= codes


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_error_class_shape(cls: type[RegistryError]) -> None:
    assert cls.code in CONTRACT or cls.code in BEYOND_CONTRACT, f"{cls.__name__}: code {cls.code} not pinned"
    expected_status = CONTRACT[cls.code][0] if cls.code in CONTRACT else BEYOND_CONTRACT[cls.code]
    assert cls.status == expected_status
    if cls.code in CONTRACT:
        assert cls.detail_zh == CONTRACT[cls.code][1]
    assert cls.detail_en and cls.detail_en.isascii()
    error = instance(cls)
    for language in ("zh", "en"):
        body = error.body(language)
        assert isinstance(body["code"], str) and body["code"] == cls.code
        assert isinstance(body["detail"], str) and body["detail"]
        assert set(body) <= BODY_KEYS
        json.dumps(body)
    assert error.body("zh")["detail"].startswith(cls.detail_zh)
    assert error.body("en")["detail"].startswith(cls.detail_en)


def test_codes_are_unique_per_class_family() -> None:
    """Two unrelated classes never share a code (a subclass may keep its parent's)."""
    owners: dict[str, type[RegistryError]] = {}
    for cls in all_error_classes():
        owner = owners.setdefault(cls.code, cls)
        assert issubclass(cls, owner) or issubclass(owner, cls), (cls, owner)


def test_message_and_data_in_body() -> None:
    from registry.errors import PackageAlreadyExists

    error = PackageAlreadyExists("version '1'", data={"sha256_signature": "ab" * 32})
    assert error.body("zh") == {"code": "PACKAGE_ALREADY_EXISTS", "detail": "源码包已存在: version '1'",
                                "data": {"sha256_signature": "ab" * 32}}
    assert error.body("en")["detail"] == "Source package already exists: version '1'"


def test_validation_error_fields_detail() -> None:
    error = ValidationError({"version": [("须为版本号", "must be a version")], "sha256": [("太短", "too short")]})
    zh, en = error.body("zh"), error.body("en")
    assert zh["fields_detail"] == {"version": ["须为版本号"], "sha256": ["太短"]}
    assert en["fields_detail"] == {"version": ["must be a version"], "sha256": ["too short"]}
    assert zh["detail"].startswith("参数校验失败")
    assert en["detail"].startswith("Validation failed")


# -- over HTTP ------------------------------------------------------------------------------------


def check_shape(response: httpx.Response, code: str, language: str = "zh") -> dict[str, Any]:
    expected = CONTRACT[code][0] if code in CONTRACT else BEYOND_CONTRACT[code]
    assert response.status_code == expected, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) <= BODY_KEYS
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    # the header the platform's clients read as this service's error code
    assert response.headers["bkapi-error-code"] == code
    raw_names = {name.lower() for name, _ in response.headers.raw}
    assert b"x-bkapi-error-code" not in raw_names
    if code in CONTRACT and language == "zh":
        assert body["detail"].startswith(CONTRACT[code][1])
    return body  # type: ignore[no-any-return]


def test_each_reachable_error_over_http(api: Api, registry: RegistryProcess, token: str, code: str,
                                        file_server: FileServer, tmp_path: Path) -> None:
    data = package(salt=code)
    record = api.upload(code, data, version="1").json()
    other = package(salt=code + "other")
    base = Api.path(code)

    check_shape(api.list(code, limit="0"), "VALIDATION_ERROR")
    check_shape(api.link(code, "gopher://example.com/p.tar.gz", version="2"), "UNSUPPORTED_SOURCE_ORIGIN")
    outside = tmp_path / "outside.tar.gz"
    outside.write_bytes(data)
    check_shape(api.link(code, f"file://{outside}", version="2"), "SOURCE_ORIGIN_FORBIDDEN")
    check_shape(api.upload(code, package(salt=code + "nv")), "MISSING_VERSION_INFO")
    check_shape(api.upload(code, b"not an archive", version="2"), "INVALID_PACKAGE")
    conflict = check_shape(api.upload(code, other, version="1"), "PACKAGE_ALREADY_EXISTS")
    assert conflict["data"] == {"sha256_signature": hashlib.sha256(data).hexdigest()}
    check_shape(api.upload(code, other, version="2", sha256="0" * 64), "CHECKSUM_MISMATCH")
    check_shape(api.link(code, f"http://127.0.0.1:{free_port()}/p.tar.gz", version="2"), "PACKAGE_DOWNLOAD_FAILED")
    check_shape(api.link(code, f"{file_server.url}/{code}/missing.tar.gz", version="2"), "PACKAGE_DOWNLOAD_FAILED")
    check_shape(api.get(code, 99999999), "PACKAGE_NOT_FOUND")
    check_shape(httpx.get(f"{registry.url}{base}"), "UNAUTHENTICATED")
    reader = registry.token(f"reader-{code}", read_only=True)
    check_shape(httpx.delete(f"{registry.url}{base}{record['id']}/",
                             headers={"Authorization": f"Bearer {reader}"}), "PERMISSION_DENIED")
    check_shape(api.download(code, record["id"], Range=f"bytes={len(data)}-"), "RANGE_NOT_SATISFIABLE")
    check_shape(api.http.get("/no/such/route"), "NOT_FOUND")
    check_shape(api.http.put(base), "METHOD_NOT_ALLOWED")
    assert api.list(code).json()["count"] == 1


def test_missing_blob_is_object_store_exception(api: Api, registry: RegistryProcess, code: str) -> None:
    record = api.upload(code, package(salt=code), version="1").json()
    [blob] = blob_files(registry.config.parent / "packages" / code)
    blob.unlink()
    check_shape(api.download(code, record["id"]), "OBJECT_STORE_EXCEPTION")


def test_unauthenticated_carries_www_authenticate(registry: RegistryProcess, code: str) -> None:
    response = httpx.get(f"{registry.url}{Api.path(code)}")
    check_shape(response, "UNAUTHENTICATED")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


# -- language -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("accept_language", "language"), [
    (None, "zh"),
    ("", "zh"),
    ("en", "en"),
    ("EN", "en"),
    ("en-US,en;q=0.9", "en"),
    ("en-GB", "en"),
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
    ("zh-CN", "zh"),
    ("zh;q=0.5, en;q=0.8", "en"),
    ("fr-FR,fr;q=0.9", "zh"),
    ("en;q=0", "zh"),
    ("*", "zh"),
])
def test_detail_language(api: Api, code: str, accept_language: str | None, language: str) -> None:
    headers = {} if accept_language is None else {"Accept-Language": accept_language}
    not_found = api.http.get(api.path(code, suffix="424242/"), headers=headers)
    body = check_shape(not_found, "PACKAGE_NOT_FOUND", language)
    expected = "找不到指定的源码包" if language == "zh" else "Source package not found"
    assert body["detail"].startswith(expected)

    invalid = api.http.get(api.path(code), params={"order_by": "bogus"}, headers=headers)
    body = check_shape(invalid, "VALIDATION_ERROR", language)
    messages = body["fields_detail"]["order_by"]
    assert messages and all(isinstance(m, str) and m for m in messages)
    if language == "en":
        assert body["detail"].startswith("Validation failed")
        assert all(m.isascii() for m in messages)
        assert body["detail"].isascii()
    else:
        assert body["detail"].startswith("参数校验失败")
        assert not all(m.isascii() for m in messages)


def test_english_for_every_kind_of_route(api: Api, registry: RegistryProcess, code: str) -> None:
    en = {"Accept-Language": "en-US,en;q=0.9"}
    assert httpx.get(f"{registry.url}{Api.path(code)}", headers=en).json()["detail"].isascii()
    assert api.http.get("/nothing-here", headers=en).json()["detail"].isascii()
    assert api.http.patch(Api.path(code), headers=en).json()["detail"].isascii()
    assert not api.http.get("/nothing-here").json()["detail"].isascii()


# -- routing errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/nope",
    "/bkapps/applications/x/",
    "/bkapps/applications/x/modules/default/",
    "/api/bkpaas3/dev/bkapps/applications/x/modules/default/source_package/",
    "/bkapps/applications/x/modules/default/source_package/1/unknown/",
])
def test_unknown_route(api: Api, path: str) -> None:
    check_shape(api.http.get(path), "NOT_FOUND")


@pytest.mark.parametrize(("method", "suffix"), [
    ("PUT", ""),
    ("DELETE", ""),
    ("PATCH", "1/"),
    ("POST", "1/"),
    ("GET", "link/"),
    ("GET", "link"),
    ("DELETE", "link/"),
    ("PUT", "1/download/"),
    ("GET", "1/restore/"),
])
def test_wrong_method(api: Api, code: str, method: str, suffix: str) -> None:
    response = api.http.request(method, api.path(code, suffix=suffix))
    check_shape(response, "METHOD_NOT_ALLOWED")
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed and method not in allowed


def test_wrong_method_on_healthz(registry: RegistryProcess) -> None:
    response = httpx.post(f"{registry.url}/healthz")
    check_shape(response, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["allow"]


def test_the_readme_error_table_lists_every_code_the_service_answers(registry: RegistryProcess) -> None:
    """The README's table and the served OpenAPI description name the same codes with the same statuses."""
    spec = httpx.get(f"{registry.url}/openapi.json").json()
    served = {m.group(1): int(m.group(2)) for m in re.finditer(r"^- `([A-Z_]+)` \((\d{3})\)", spec["info"]["description"],
                                                                re.MULTILINE)}
    assert served == {cls.code: cls.status for cls in all_error_classes()}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Errors"):]
    section = section[:section.index("\n## ")]
    documented = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `([A-Z_]+)` \| (\d{3}) \|", section, re.MULTILINE)}
    assert documented == served
