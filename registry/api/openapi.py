"""The OpenAPI 3.1 description of every route, built from the same tables the
app uses (path layout, orderings, error classes), so it cannot drift silently."""

from __future__ import annotations

from typing import Any

from registry import __version__
from registry.api.paths import PACKAGES, STAGE_PREFIXES
from registry.errors import RegistryError, all_error_classes
from registry.records import ORDERINGS
from registry.validation import SHA256, SLUG, VERSION

#: the stages the prefixes end in (``stag``, ``prod``)
STAGES = tuple(dict.fromkeys(prefix.rsplit("/", 1)[1] for prefix in STAGE_PREFIXES if prefix))
#: :data:`STAGE_PREFIXES` as path templates, with the stage as a ``{stage}``
#: parameter: ``""``, ``/{stage}``, ``/api/bkpaas3/{stage}``
STAGE_PATH_PREFIXES = tuple(
    dict.fromkeys(prefix.rsplit("/", 1)[0] + "/{stage}" if prefix else "" for prefix in STAGE_PREFIXES)
)

RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "version", "package_name", "package_size", "sha256_signature", "is_deleted",
                 "updated", "created", "operator"],
    "properties": {
        "id": {"type": "integer"},
        "version": {"type": "string"},
        "package_name": {"type": "string", "maxLength": 128},
        "package_size": {"type": "string", "pattern": "^[0-9]+$", "description": "byte count"},
        "sha256_signature": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "is_deleted": {"type": "boolean"},
        "updated": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"},
        "created": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"},
        "operator": {"type": "string"},
    },
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "detail"],
    "properties": {
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "fields_detail": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "data": {"type": "object"},
    },
}

LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["count", "next", "previous", "results"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "next": {"type": ["string", "null"]},
        "previous": {"type": ["string", "null"]},
        "results": {"type": "array", "items": {"$ref": "#/components/schemas/Package"}},
    },
}

BOOLEAN_FIELD = {
    "oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false", "1", "0", "True", "False", "TRUE", "FALSE"]}],
    "description": "JSON true/false or the strings true/false/1/0 in any case; default false",
}
VERSION_FIELD = {"type": "string", "maxLength": 128,
                 "description": f"trimmed, then `{VERSION.pattern}`; absent: read from app_desc.yaml"}
SHA256_FIELD = {"type": "string", "description": f"`{SHA256.pattern}`: the upload fails with CHECKSUM_MISMATCH unless the bytes match"}

LINK_BODY = {
    "type": "object",
    "required": ["package_url"],
    "properties": {
        "package_url": {"type": "string", "format": "uri", "maxLength": 4096,
                        "description": "http(s)://…, s3://bucket/key, file:///abs/path, or a plugin's scheme"},
        "version": VERSION_FIELD,
        "allow_overwrite": BOOLEAN_FIELD,
        "sha256": SHA256_FIELD,
    },
}
FILE_BODY = {
    "type": "object",
    "required": ["package"],
    "properties": {
        "package": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"},
        "version": VERSION_FIELD,
        "allow_overwrite": {"type": "string", "description": BOOLEAN_FIELD["description"]},
        "sha256": SHA256_FIELD,
    },
}


def _error_responses(*classes: type[RegistryError]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for cls in classes:
        by_status.setdefault(cls.status, []).append(cls.code)
    return {
        str(status): {
            "description": " or ".join(sorted(set(codes))),
            "headers": {"bkapi-error-code": {"schema": {"type": "string", "enum": sorted(set(codes))}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status, codes in sorted(by_status.items())
    }


def _errors(*codes: str) -> dict[str, Any]:
    classes = {cls.code: cls for cls in all_error_classes() if cls.code != "INTERNAL_ERROR"}
    # every package route reads the record store (the credential at least)
    always = ("VALIDATION_ERROR", "UNAUTHENTICATED", "PERMISSION_DENIED", "DATABASE_UNAVAILABLE")
    return _error_responses(*(classes[c] for c in (*always, *codes)))


def _record_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Package"}}}}


def _upload_response(description: str) -> dict[str, Any]:
    """A record answered by an upload, with the header saying what the upload did."""
    outcome = {"description": "what the upload did", "schema": {
        "type": "string", "enum": ["created", "revived", "overwritten", "identical"]}}
    return {**_record_response(description), "headers": {"Registry-Upload-Outcome": outcome}}


UPLOAD_ERRORS = ("UNSUPPORTED_SOURCE_ORIGIN", "SOURCE_ORIGIN_FORBIDDEN", "MISSING_VERSION_INFO", "INVALID_PACKAGE",
                 "PACKAGE_ALREADY_EXISTS", "CHECKSUM_MISMATCH", "PACKAGE_TOO_LARGE", "PACKAGE_DOWNLOAD_FAILED",
                 "PACKAGE_DOWNLOAD_TIMEOUT", "OBJECT_STORE_EXCEPTION", "INSUFFICIENT_STORAGE")


def _operations() -> dict[str, dict[str, Any]]:
    """Operations by path below a stage prefix."""
    upload_responses = {"201": _upload_response("a new version (or a soft-deleted one revived)"),
                        "200": _upload_response("overwritten, or identical bytes re-uploaded (unchanged)")}
    id_param = {"name": "package_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
    from registry.api.openapi_transfers import transfer_operations

    return {
        **transfer_operations(_errors, LINK_BODY),
        f"{PACKAGES}/link/": {
            "post": {
                "operationId": "upload_link", "summary": "Upload by link: the registry fetches package_url",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": LINK_BODY},
                    "multipart/form-data": {"schema": LINK_BODY},
                    "application/x-www-form-urlencoded": {"schema": LINK_BODY}}},
                "responses": {**upload_responses, **_errors(*UPLOAD_ERRORS)},
            },
        },
        f"{PACKAGES}/": {
            "post": {
                "operationId": "upload_file", "summary": "Upload a file (multipart field `package`)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": FILE_BODY}}},
                "responses": {**upload_responses, **_errors(*UPLOAD_ERRORS)},
            },
            "get": {
                "operationId": "list_packages", "summary": "A module's packages, newest first",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                    {"name": "search_term", "in": "query", "schema": {"type": "string", "maxLength": 128}},
                    {"name": "order_by", "in": "query", "schema": {"type": "string", "enum": list(ORDERINGS), "default": "-created"}},
                    {"name": "include_deleted", "in": "query", "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}},
                ],
                "responses": {"200": {"description": "one page",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PackageList"}}}},
                              **_errors()},
            },
        },
        f"{PACKAGES}/{{package_id}}/": {
            "parameters": [id_param],
            "get": {"operationId": "get_package", "summary": "One package record",
                    "responses": {"200": _record_response("the record"), **_errors("PACKAGE_NOT_FOUND")}},
            "delete": {"operationId": "delete_package", "summary": "Soft delete (idempotent)",
                       "responses": {"204": {"description": "deleted"}, **_errors("PACKAGE_NOT_FOUND")}},
        },
        f"{PACKAGES}/{{package_id}}/download/": {
            "parameters": [id_param],
            "get": {
                "operationId": "download_package", "summary": "The package bytes, streamed",
                "parameters": [{"name": "Range", "in": "header", "schema": {"type": "string"}},
                               {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "the bytes", "headers": {
                        "ETag": {"schema": {"type": "string"}}, "X-Checksum-Sha256": {"schema": {"type": "string"}}},
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "the requested range",
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "304": {"description": "If-None-Match matched"},
                    **_errors("PACKAGE_NOT_FOUND", "RANGE_NOT_SATISFIABLE", "OBJECT_STORE_EXCEPTION"),
                },
            },
        },
        f"{PACKAGES}/{{package_id}}/restore/": {
            "parameters": [id_param],
            "post": {"operationId": "restore_package", "summary": "Undo a soft delete",
                     "responses": {"200": _record_response("restored"),
                                   **_errors("PACKAGE_NOT_FOUND", "PACKAGE_ALREADY_EXISTS")}},
        },
    }


SUMMARY_TIME = {"type": ["string", "null"], "pattern": r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$",
                "description": "the newest live package's last upload or change, in the server's time zone"}
APPLICATION_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["count", "next", "previous", "results"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "next": {"type": ["string", "null"]},
        "previous": {"type": ["string", "null"]},
        "results": {"type": "array", "items": {
            "type": "object", "required": ["code", "modules", "packages", "last_uploaded"],
            "properties": {"code": {"type": "string"}, "modules": {"type": "integer", "minimum": 0},
                           "packages": {"type": "integer", "minimum": 0, "description": "live packages"},
                           "last_uploaded": SUMMARY_TIME}}},
    },
}
MODULE_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["count", "next", "previous", "results"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "next": {"type": "null"},
        "previous": {"type": "null"},
        "results": {"type": "array", "items": {
            "type": "object", "required": ["name", "packages", "last_uploaded"],
            "properties": {"name": {"type": "string"}, "packages": {"type": "integer", "minimum": 0},
                           "last_uploaded": SUMMARY_TIME}}},
    },
}


def _browse_paths() -> dict[str, Any]:
    """``/bkapps/applications/`` and ``…/{code}/modules/`` under every prefix."""
    slug = {"type": "string", "pattern": f"^{SLUG.pattern}$"}
    paths: dict[str, Any] = {}
    for prefix in STAGE_PATH_PREFIXES:
        stage = ([{"name": "stage", "in": "path", "required": True, "schema": {"type": "string", "enum": list(STAGES)}}]
                 if "{stage}" in prefix else [])
        suffix = "" if not prefix else "_" + prefix.strip("/").replace("/", "_").replace("{", "").replace("}", "")
        paths[prefix + "/bkapps/applications/"] = {"get": {
            "operationId": "list_applications" + suffix,
            "summary": "The applications the credential may read, by code",
            "parameters": [*stage,
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                {"name": "search_term", "in": "query", "schema": {"type": "string", "maxLength": 128},
                 "description": "only codes containing it"},
                {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 512},
                 "description": "opaque page position carried by next/previous: follow those links as they are"}],
            "responses": {"200": {"description": "one page", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ApplicationList"}}}}, **_errors()},
        }}
        paths[prefix + "/bkapps/applications/{code}/modules/"] = {"get": {
            "operationId": "list_modules" + suffix,
            "summary": "An application's modules, by name (none before its first package)",
            "parameters": [*stage, {"name": "code", "in": "path", "required": True, "schema": slug}],
            "responses": {"200": {"description": "every module", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ModuleList"}}}}, **_errors()},
        }}
    return paths


def _with_prefix(prefix: str, path: str, item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with path parameters for the slugs (and the stage, when prefixed)."""
    slug = {"type": "string", "pattern": f"^{SLUG.pattern}$"}
    params = [{"name": "code", "in": "path", "required": True, "schema": slug},
              {"name": "module_name", "in": "path", "required": True, "schema": slug}]
    if "{stage}" in prefix:
        params.append({"name": "stage", "in": "path", "required": True, "schema": {"type": "string", "enum": list(STAGES)}})
    result = {key: value for key, value in item.items() if key != "parameters"}
    result["parameters"] = params + item.get("parameters", [])
    suffix = "" if not prefix else "_" + prefix.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    for method, operation in result.items():
        if method != "parameters":
            result[method] = {**operation, "operationId": operation["operationId"] + suffix}
    return result


def _service_paths() -> dict[str, Any]:
    plain = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness", "security": [], "responses": {"200": plain}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness: database and storage reachable",
                            "security": [], "responses": {"200": plain, **_error_responses(*[c for c in all_error_classes() if c.code in ("OBJECT_STORE_EXCEPTION", "DATABASE_UNAVAILABLE",
                                                                                                   "INSUFFICIENT_STORAGE")])}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics (registry_*)", "security": [],
                             "responses": {"200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This description", "security": [],
                                  "responses": {"200": plain}}},
        "/docs": {"get": {"operationId": "docs", "summary": "This description as a page", "security": [],
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    }


def build_openapi() -> dict[str, Any]:
    """The whole document."""
    paths: dict[str, Any] = {}
    for prefix in STAGE_PATH_PREFIXES:
        for path, item in _operations().items():
            paths[prefix + path] = _with_prefix(prefix, path, item)
    paths.update(_browse_paths())
    paths.update(_service_paths())
    codes = sorted({(cls.code, cls.status, cls.detail_zh, cls.detail_en) for cls in all_error_classes()})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Source Package Registry",
            "version": __version__,
            "description": "Wire-compatible with the BlueKing PaaS v3 source-package API. Every path is also "
                           "served without its trailing slash.\n\nError codes:\n\n"
                           + "\n".join(f"- `{c}` ({s}): {zh} / {en}" for c, s, zh, en in codes),
        },
        "paths": paths,
        "components": {
            "schemas": {"Package": RECORD_SCHEMA, "PackageList": LIST_SCHEMA, "Error": ERROR_SCHEMA,
                        "ApplicationList": APPLICATION_LIST_SCHEMA, "ModuleList": MODULE_LIST_SCHEMA},
            "securitySchemes": {
                "gateway": {"type": "apiKey", "in": "header", "name": "X-BKAPI-AUTHORIZATION",
                            "description": 'JSON: {"access_token": "<token>"} (made by `registry token create`) or'
                                           ' {"bk_app_code": "<name>", "bk_app_secret": "<secret>"} (made by'
                                           ' `registry app-secret create`); other keys such as bk_ticket are ignored'},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Bearer <token>: the same access token as in X-BKAPI-AUTHORIZATION"},
            },
        },
        "security": [{"gateway": []}, {"bearer": []}],
    }

