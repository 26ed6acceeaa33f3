"""Long transfers for the client commands: background link uploads and resumable (tus) pushes.

- :func:`push_link_background` queues ``P/jobs/``, then polls the job,
  reporting the server-side fetch's progress, and answers the job's result
  as :meth:`RegistryClient.push_link` would have.
- :func:`push_resumable` is a small tus 1.0.0 client: it creates an upload,
  sends the file in chunks with a sha256 ``Upload-Checksum`` each, and keeps
  the upload's URL in a state file under the user's cache folder, keyed by
  the file (path, size, modification time), the registry and the module: run
  again after an interruption, it asks the server for the offset and goes on
  from there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from registry.client import (
    ApiError,
    ClientError,
    Progress,
    RegistryClient,
    UploadResult,
)
from registry.tus import TUS_VERSION, encode_metadata

#: Seconds between two polls of a background job.
POLL_INTERVAL = 0.5
#: Default tus chunk size: 8 MiB, a multiple of S3's smallest part.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
TUS = {"Tus-Resumable": TUS_VERSION}


def push_link_background(client: RegistryClient, url: str, code: str, module: str, *,
                         version: str | None = None, overwrite: bool = False,
                         progress: Progress | None = None, poll: float = POLL_INTERVAL) -> UploadResult:
    """Queue a background link upload and wait for its end, reporting progress.

    :raises ApiError: the registry refused the request, or the job failed
        (with the code and detail ``P/link/`` would have answered).
    """
    body: dict[str, Any] = {"package_url": url, "allow_overwrite": overwrite}
    if version is not None:
        body["version"] = version
    response = client._send("POST", client.packages_path(code, module, "jobs/"), json=body)
    job = client._json(response)
    job_path = client.packages_path(code, module, f"jobs/{job['id']}/")
    while job["state"] in ("queued", "running"):
        if progress is not None:
            progress(job["bytes_received"], job["bytes_total"])
        time.sleep(poll)
        job = client._json(client._send("GET", job_path))
    if job["state"] == "succeeded":
        record = dict(job["package"])
        status = record.pop("status", 201)
        return UploadResult(record=record, created=status == 201)
    if job["state"] == "failed":
        error = job["error"] or {}
        raise ApiError(0, str(error.get("code", "JOB_FAILED")), str(error.get("detail", "")), error)
    raise ClientError(f"the job {job['id']} was cancelled")


def state_dir() -> Path:
    """Where resumable pushes remember their uploads: ``$XDG_CACHE_HOME/registry/uploads``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "registry" / "uploads"


def _state_file(folder: Path, path: Path, base_url: str, code: str, module: str) -> Path:
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, base_url, code, module])
    return folder / (hashlib.sha256(key.encode()).hexdigest() + ".json")


def push_resumable(client: RegistryClient, path: Path, code: str, module: str, *,
                   version: str | None = None, overwrite: bool = False, sha256: str | None = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None,
                   folder: Path | None = None) -> UploadResult:
    """Upload ``path`` over tus, resuming an earlier interrupted push of the same file.

    :raises ApiError: the registry refused the upload (the state is then
        forgotten: the next run starts over).
    :raises ConnectionFailed: the connection broke; run again to resume.
    """
    if chunk_size <= 0:
        raise ClientError("the chunk size must be positive")
    state = _state_file(folder or state_dir(), path, client.base_url, code, module)
    size = path.stat().st_size
    upload_url = _resume(client, state)
    if upload_url is None:
        meta = {"filename": path.name, "allow_overwrite": "true" if overwrite else "false"}
        if version is not None:
            meta["version"] = version
        if sha256 is not None:
            meta["sha256"] = sha256
        response = client._send("POST", client.packages_path(code, module, "uploads/"), headers={
            **TUS, "Upload-Length": str(size), "Upload-Metadata": encode_metadata(meta)})
        upload_url = response.headers["location"]
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"url": upload_url}))
        offset = 0
    else:
        offset = _offset(client, upload_url)
    try:
        with path.open("rb") as f:
            while True:
                if progress is not None:
                    progress(offset, size)
                f.seek(offset)
                chunk = f.read(chunk_size)
                digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
                try:
                    response = client._send("PATCH", upload_url, content=chunk, headers={
                        **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                        "Upload-Checksum": f"sha256 {digest}"})
                except ApiError as exc:
                    if exc.status in (409, 460):  # out of step, or damaged on the way: ask and resend
                        offset = _offset(client, upload_url)
                        continue
                    raise
                offset = int(response.headers.get("upload-offset", offset + len(chunk)))
                if "registry-package-id" in response.headers:
                    break
    except ApiError:
        state.unlink(missing_ok=True)  # the upload ended with the registry's error
        raise
    state.unlink(missing_ok=True)
    if progress is not None:
        progress(size, size)
    outcome = client._json(client._send("GET", upload_url))
    record = dict(outcome["package"])
    status = record.pop("status", 201)
    result = UploadResult(record=record, created=status == 201)
    if sha256 is not None:
        client._check_record_digest(result.record, sha256)
    return result


def _resume(client: RegistryClient, state: Path) -> str | None:
    """The URL of the upload an earlier run left, if the registry still has it."""
    try:
        url = str(json.loads(state.read_text())["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        client._send("HEAD", url, headers=TUS)
    except ApiError:
        state.unlink(missing_ok=True)
        return None
    return url


def _offset(client: RegistryClient, url: str) -> int:
    response = client._send("HEAD", url, headers=TUS)
    try:
        return int(response.headers["upload-offset"])
    except (KeyError, ValueError):
        raise ClientError("the registry answered a HEAD without Upload-Offset") from None

