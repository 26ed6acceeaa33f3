"""A lean tus 1.0.0 upload for the benchmark: one kept-alive connection, one
PATCH per chunk read straight from the file, no per-chunk checksum (tus
clients send none by default), so the number measures the server."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import httpx

TUS = {"Tus-Resumable": "1.0.0"}


def _metadata(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def tus_upload(uploads_url: str, path: Path, headers: dict[str, str], chunk_size: int,
               metadata: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Upload ``path`` in ``chunk_size`` PATCHes; (seconds from creation to the
    completing answer, the upload's outcome ``{"state","package","error"}``)."""
    size = path.stat().st_size
    with httpx.Client(headers={**headers, **TUS}, timeout=httpx.Timeout(600.0)) as client, path.open("rb") as f:
        started = time.perf_counter()
        created = client.post(uploads_url, headers={"Upload-Length": str(size),
                                                    "Upload-Metadata": _metadata(metadata)})
        if created.status_code != 201:
            raise RuntimeError(f"tus creation: HTTP {created.status_code}: {created.text[:300]}")
        url = created.headers["location"]
        offset = 0
        while offset < size:
            chunk = os.pread(f.fileno(), chunk_size, offset)
            answer = client.patch(url, content=chunk, headers={
                "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
            if answer.status_code != 204:
                raise RuntimeError(f"tus PATCH at {offset}: HTTP {answer.status_code}: {answer.text[:300]}")
            offset = int(answer.headers["upload-offset"])
        seconds = time.perf_counter() - started
        outcome: dict[str, Any] = client.get(url).json()
    return seconds, outcome
