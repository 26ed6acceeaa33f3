"""HTTP handlers of background link uploads: ``P/jobs/`` and ``P/jobs/{job_id}/``.

``POST`` validates exactly as ``P/link/`` does (errors are answered at once,
never as a failed job), then queues the job and answers 202 with it; the
runner (:mod:`registry.jobs`) does the rest. Jobs are scoped like packages:
a credential limited to other applications gets 403, an unknown id 404
``JOB_NOT_FOUND``.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry.api.errors import preferred_language
from registry.api.routes import _module_path, _registry, authorize, link_request
from registry.api.serialize import format_time
from registry.errors import JobNotFound, RegistryError
from registry.jobs import JobRunner, error_json
from registry.records import FAILED, SUCCEEDED, Job
from registry.redact import redact_url

JOB_ID = re.compile(r"j_[0-9a-f]{32}")


def runner(request: Request) -> JobRunner:
    """This app's job runner."""
    return request.app.state.jobs  # type: ignore[no-any-return]


def job_json(job: Job, request: Request) -> dict[str, Any]:
    """The contract's job object; an error's detail in the request's language."""
    zone = _registry(request).time_zone
    package = dict(job.result) if job.state == SUCCEEDED and job.result else None
    error = None
    if job.state == FAILED and job.result:
        error = error_json(job.result, preferred_language(request.headers.get("accept-language")))
    return {
        "id": job.id,
        "state": job.state,
        "package_url": job.package_url,
        "bytes_received": job.bytes_received,
        "bytes_total": job.bytes_total,
        "package": package,
        "error": error,
        "created": format_time(job.created, zone),
        "updated": format_time(job.updated, zone),
        "operator": job.operator,
    }


def _job_id(request: Request) -> str:
    """The ``job_id`` path segment; one that no job could have is simply not found."""
    raw = str(request.path_params["job_id"])
    if not JOB_ID.fullmatch(raw):
        raise JobNotFound()
    return raw


async def create_job(request: Request) -> Response:
    """POST ``P/jobs/``: the body of ``P/link/``; 202 with the queued job and its ``Location``."""
    upload, package_url = await link_request(request)
    registry = _registry(request)
    try:
        registry.resolve_origin(package_url)  # no origin takes it: answered now, as P/link/ does
    except RegistryError as exc:
        registry.metrics.uploads.labels("none", exc.code).inc()
        raise
    job = await runner(request).submit(upload, package_url, redact_url(package_url))
    location = str(request.url).split("?", 1)[0].rstrip("/") + f"/{job.id}/"
    return JSONResponse(job_json(job, request), status_code=202, headers={"Location": location})


async def get_job(request: Request) -> Response:
    """GET ``P/jobs/{job_id}/``: state, progress, and the record or error once finished."""
    code, module = _module_path(request)
    job_id = _job_id(request)
    await authorize(request, code, write=False)
    store = runner(request).store
    job = await _registry(request).read(store.get_job, code, module, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return JSONResponse(job_json(job, request))


async def cancel_job(request: Request) -> Response:
    """DELETE ``P/jobs/{job_id}/``: cancel a queued or running job; 204 (a finished job stays as it is)."""
    code, module = _module_path(request)
    job_id = _job_id(request)
    await authorize(request, code, write=True)
    jobs = runner(request)
    job = await _registry(request).write(jobs.store.cancel_job, code, module, job_id)
    if job is None:
        raise JobNotFound(job_id)
    jobs.cancel_here(job_id)
    return Response(status_code=204)
