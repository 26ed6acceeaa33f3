"""The OpenAPI operations of background jobs and resumable (tus) uploads.

Kept apart from :mod:`registry.api.openapi`, which merges them into its paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from registry.api.paths import PACKAGES

Errors = Callable[..., dict[str, Any]]

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "state", "package_url", "bytes_received", "bytes_total", "package", "error",
                 "created", "updated", "operator"],
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "package_url": {"type": "string", "description": "secrets redacted"},
        "bytes_received": {"type": "integer", "minimum": 0},
        "bytes_total": {"type": ["integer", "null"]},
        "package": {"type": ["object", "null"], "description": "the record P/link/ would answer, plus `status`"},
        "error": {"type": ["object", "null"], "description": "the error P/link/ would answer"},
        "created": {"type": "string"},
        "updated": {"type": "string"},
        "operator": {"type": "string"},
    },
}
UPLOAD_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["state", "package", "error"],
    "properties": {
        "state": {"type": "string", "enum": ["running", "succeeded", "failed"]},
        "package": {"type": ["object", "null"]},
        "error": {"type": ["object", "null"]},
    },
}
TUS_RESUMABLE = {"name": "Tus-Resumable", "in": "header", "required": True,
                 "schema": {"type": "string", "enum": ["1.0.0"]}}
UPLOAD_ID = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
NUMBER = {"type": "string", "pattern": "^[0-9]{1,19}$"}
UPLOAD_ERRORS = ("UNSUPPORTED_SOURCE_ORIGIN", "SOURCE_ORIGIN_FORBIDDEN", "MISSING_VERSION_INFO", "INVALID_PACKAGE",
                 "PACKAGE_ALREADY_EXISTS", "CHECKSUM_MISMATCH", "PACKAGE_TOO_LARGE", "OBJECT_STORE_EXCEPTION")
TUS_ERRORS = ("TUS_VERSION_UNSUPPORTED", "JOB_NOT_FOUND", "OBJECT_STORE_EXCEPTION")


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def transfer_operations(errors: Errors, link_body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Operations by path below a stage prefix; ``errors(*codes)`` documents error answers."""
    job = _json("the job", JOB_SCHEMA)
    return {
        f"{PACKAGES}/jobs/": {
            "post": {
                "operationId": "create_job", "summary": "Upload by link in the background: 202 with the job",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": link_body},
                    "multipart/form-data": {"schema": link_body},
                    "application/x-www-form-urlencoded": {"schema": link_body}}},
                "responses": {"202": job, **errors("UNSUPPORTED_SOURCE_ORIGIN")},
            },
        },
        f"{PACKAGES}/jobs/{{job_id}}/": {
            "parameters": [JOB_ID],
            "get": {"operationId": "get_job", "summary": "A background job: state, progress, record or error",
                    "responses": {"200": job, **errors("JOB_NOT_FOUND")}},
            "delete": {"operationId": "cancel_job", "summary": "Cancel a queued or running job",
                       "responses": {"204": {"description": "cancelled (or already finished)"},
                                     **errors("JOB_NOT_FOUND")}},
        },
        f"{PACKAGES}/uploads/": {
            "options": {"operationId": "tus_options", "summary": "tus 1.0.0 capabilities", "security": [],
                        "responses": {"204": {"description": "Tus-Version, Tus-Extension, Tus-Max-Size"},
                                      **errors()}},
            "post": {
                "operationId": "tus_create", "summary": "tus creation: a new resumable upload",
                "parameters": [TUS_RESUMABLE,
                               {"name": "Upload-Length", "in": "header", "required": True, "schema": NUMBER},
                               {"name": "Upload-Metadata", "in": "header", "required": True,
                                "schema": {"type": "string"},
                                "description": "filename, and optionally version, allow_overwrite, sha256; base64 values"}],
                "responses": {"201": {"description": "created; Location names the upload"},
                              **errors("TUS_VERSION_UNSUPPORTED", "PACKAGE_TOO_LARGE", "INVALID_PACKAGE")},
            },
        },
        f"{PACKAGES}/uploads/{{upload_id}}": {
            "parameters": [UPLOAD_ID],
            "options": {"operationId": "tus_options_upload", "summary": "tus 1.0.0 capabilities", "security": [],
                        "responses": {"204": {"description": "Tus-Version, Tus-Extension, Tus-Max-Size"},
                                      **errors()}},
            "get": {"operationId": "get_upload", "summary": "A resumable upload's outcome, like a job's",
                    "responses": {"200": _json("state, package, error", UPLOAD_RESULT_SCHEMA),
                                  **errors("JOB_NOT_FOUND")}},
            "head": {"operationId": "tus_head", "summary": "tus: the upload's offset", "parameters": [TUS_RESUMABLE],
                     "responses": {"200": {"description": "Upload-Offset and Upload-Length"}, **errors(*TUS_ERRORS)}},
            "patch": {
                "operationId": "tus_patch", "summary": "tus: append bytes; the last PATCH stores the package",
                "parameters": [TUS_RESUMABLE,
                               {"name": "Upload-Offset", "in": "header", "required": True, "schema": NUMBER},
                               {"name": "Upload-Checksum", "in": "header", "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {
                    "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"204": {"description": "appended; Upload-Offset, and Registry-Package-Id when complete"},
                              **errors(*TUS_ERRORS, *UPLOAD_ERRORS, "UPLOAD_OFFSET_MISMATCH",
                                       "UNSUPPORTED_MEDIA_TYPE", "UPLOAD_CHECKSUM_MISMATCH")},
            },
            "delete": {"operationId": "tus_terminate", "summary": "tus termination: the upload and its bytes go",
                       "parameters": [TUS_RESUMABLE],
                       "responses": {"204": {"description": "terminated"},
                                     **errors(*TUS_ERRORS, "UPLOAD_OFFSET_MISMATCH")}},
        },
    }
