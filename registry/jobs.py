"""Background link uploads: the runner that claims queued jobs and runs them.

A job runs exactly what ``P/link/`` runs (:meth:`Registry.upload_link`), with
the origin wrapped so the bytes fetched so far are counted. Each serving
process runs one :class:`JobRunner` with at most ``[jobs] max_running`` jobs
at once. Jobs live in the record store (:mod:`registry.store`): the runner
claims one with a lease, and while the job runs writes its progress every
:data:`HEARTBEAT` seconds, which also renews the lease. A write that finds
the job no longer its own (cancelled by ``DELETE``, possibly on another
instance) cancels the fetch; the staging file is removed and nothing is
stored. A process that dies leaves a lease that expires (or, on the same host,
a holder whose process is gone), and any runner then runs the job again from
the start.

A job's outcome is stored as ``P/link/`` would have answered it: the record
JSON plus its HTTP ``status``, or the error's code, both detail texts and data.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from prometheus_client import Counter, Gauge, Histogram

from registry.api.serialize import record_json
from registry.errors import RegistryError
from registry.leases import make_holder
from registry.origins import Download, Origin
from registry.records import (
    CANCELLED,
    FAILED,
    JOB_STATES,
    SUCCEEDED,
    CommitResult,
    Job,
    NewJob,
    Outcome,
)
from registry.seal import SealBroken, key_path, read_key, seal, sealing_key, unseal
from registry.service import Registry, UploadRequest
from registry.settings import SettingsError
from registry.store import RecordStore

logger = logging.getLogger("registry.jobs")

#: Seconds between two progress writes of a running job (its heartbeat).
HEARTBEAT = 0.5
#: Seconds a claim holds without a heartbeat; then any instance may take the job.
LEASE = 30.0
#: Seconds between two looks for work queued elsewhere or left by a dead process.
POLL = 2.0
#: Seconds between two expiry sweeps of finished jobs.
EXPIRY_INTERVAL = 60.0
JOB_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)


def check_sealing_key(settings: Mapping[str, Any]) -> None:
    """Refuse a ``[jobs] key_file`` that cannot be used, naming the key; warn
    when instances on a database server would each make a key of their own
    (a job made on one could not run on another). Creates nothing.

    :raises SettingsError: the configured key file is missing or holds no key.
    """
    path, configured = key_path(settings)
    if configured:
        try:
            read_key(path)
        except SealBroken as exc:
            raise SettingsError(f"configuration key 'jobs.key_file': {exc}") from None
    elif settings["database.url"]:
        logger.warning("[jobs] key_file is not set: the key that seals background jobs is kept in %s, which only"
                       " instances on this host share; give every instance the same key_file", path)


def new_job_id() -> str:
    """``j_`` and 32 hex digits."""
    return f"j_{uuid.uuid4().hex}"


def stored_error(exc: RegistryError) -> dict[str, Any]:
    """An error as kept with a job or upload: code, status, both details, data."""
    return {"code": exc.code, "status": exc.status, "detail_zh": exc.detail("zh"),
            "detail_en": exc.detail("en"), "data": exc.data}


def error_json(stored: dict[str, Any], language: str) -> dict[str, Any]:
    """A stored error in the contract's shape, ``detail`` in ``language``."""
    body: dict[str, Any] = {"code": stored["code"], "detail": stored["detail_en" if language == "en" else "detail_zh"]}
    if stored.get("data") is not None:
        body["data"] = stored["data"]
    return body


class TransferMetrics:
    """The metrics of jobs and resumable uploads, in the instance's registry."""

    def __init__(self, registry: Registry) -> None:
        collectors = registry.metrics.registry
        self.jobs = Gauge("registry_jobs", "Background jobs in the record store, by state.", ["state"],
                          registry=collectors)
        self.job_duration = Histogram("registry_job_duration_seconds",
                                      "Time from claim to end of the background jobs this process ran, by final state.",
                                      ["state"], buckets=JOB_DURATION_BUCKETS, registry=collectors)
        self.job_bytes = Counter("registry_job_fetched_bytes", "Bytes fetched by background jobs.",
                                 registry=collectors)
        self.uploads_in_progress = Gauge("registry_resumable_uploads_in_progress",
                                         "Resumable uploads created and not yet completed.", registry=collectors)
        self.upload_bytes = Counter("registry_resumable_received_bytes",
                                    "Bytes received by resumable-upload PATCH requests.", registry=collectors)


@dataclass
class _Progress:
    received: int = 0
    total: int | None = None


class _CountingOrigin(Origin):
    """``origin``, counting the bytes its downloads deliver into ``progress``."""

    def __init__(self, origin: Origin, progress: _Progress, metrics: TransferMetrics) -> None:
        self.origin = origin
        self.name = origin.name
        self.progress = progress
        self.metrics = metrics

    def accepts(self, url: str) -> bool:
        return self.origin.accepts(url)

    def open(self, url: str, max_size: int) -> AbstractAsyncContextManager[Download]:
        return self._open(url, max_size)

    @asynccontextmanager
    async def _open(self, url: str, max_size: int) -> AsyncIterator[Download]:
        async with self.origin.open(url, max_size) as download:
            self.progress.total = download.size
            yield Download(chunks=self._count(download.chunks), size=download.size)

    async def _count(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.progress.received += len(chunk)
            self.metrics.job_bytes.inc(len(chunk))
            yield chunk


@dataclass
class JobRunner:
    """Runs the jobs of the record store in this process; see the module docstring."""

    registry: Registry
    store: RecordStore
    metrics: TransferMetrics
    _holder: str = ""
    _holder_pid: int = 0
    _wake: anyio.Event | None = None
    _running: dict[str, anyio.CancelScope] = field(default_factory=dict)
    _key: bytes | None = None

    @property
    def holder(self) -> str:
        """This process's name in leases; made anew in a forked child (a
        worker must never share its parent's or a sibling's)."""
        if self._holder_pid != os.getpid():
            self._holder, self._holder_pid = make_holder(), os.getpid()
        return self._holder

    @property
    def max_running(self) -> int:
        return int(self.registry.settings["jobs.max_running"])

    def key(self) -> bytes:
        """The sealing key, ``[jobs] key_file`` or beside the database (blocking on first use)."""
        if self._key is None:
            self._key = sealing_key(self.registry.settings)
        return self._key

    async def submit(self, upload: UploadRequest, package_url: str, redacted_url: str) -> Job:
        """Queue a job for ``package_url`` (already validated) and wake the runner."""
        request = {"version": upload.version, "allow_overwrite": upload.allow_overwrite, "sha256": upload.sha256}

        def create() -> Job:
            request["sealed_url"] = seal(self.key(), package_url)
            return self.store.create_job(NewJob(new_job_id(), upload.code, upload.module, redacted_url, request,
                                                upload.operator))

        job = await self.registry.write(create)
        self.wake()
        return job

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        if self._wake is not None:
            self._wake.set()

    def cancel_here(self, job_id: str) -> None:
        """Stop the job at once if this process runs it (the store says cancelled already)."""
        scope = self._running.get(job_id)
        if scope is not None:
            scope.cancel()

    async def run(self) -> None:
        """Claim and run jobs until cancelled (the app's lifespan cancels it)."""
        last_expiry = 0.0
        async with anyio.create_task_group() as group:
            while True:
                while len(self._running) < self.max_running:
                    try:
                        job = await self.registry.write(self.store.claim_job, self.holder, LEASE)
                    except Exception:  # the database is away: try again at the next poll, never stop serving
                        logger.warning("could not look for background jobs", exc_info=True)
                        break
                    if job is None:
                        break
                    self._running[job.id] = anyio.CancelScope()
                    group.start_soon(self._run_job, job)
                if time.monotonic() - last_expiry > EXPIRY_INTERVAL:
                    last_expiry = time.monotonic()
                    await self._housekeeping()
                await self._update_gauges()
                wake = self._wake = anyio.Event()
                with anyio.move_on_after(POLL):
                    await wake.wait()

    async def _housekeeping(self) -> None:
        keep = timedelta(seconds=self.registry.settings["jobs.keep_finished"])
        cutoff = datetime.now(UTC) - keep
        try:
            removed = await self.registry.write(self.store.expire_jobs, cutoff)
        except Exception:
            logger.warning("could not expire finished jobs", exc_info=True)
            return
        if removed:
            logger.info("removed %d finished job(s) older than %s", removed, keep)

    async def _update_gauges(self) -> None:
        try:
            counts = await self.registry.read(self.store.count_jobs_by_state)
            uploads = await self.registry.read(self.store.count_uploads_in_progress)
        except Exception:
            logger.warning("could not count jobs", exc_info=True)
            return
        for state in JOB_STATES:
            self.metrics.jobs.labels(state).set(counts.get(state, 0))
        self.metrics.uploads_in_progress.set(uploads)

    async def _run_job(self, job: Job) -> None:
        scope = self._running[job.id]
        progress = _Progress()
        started = time.monotonic()
        state, result = FAILED, None
        try:
            with scope:
                state, result = await self._attempt(job, progress, scope)
            if scope.cancelled_caught:
                state = CANCELLED
        finally:
            del self._running[job.id]
            self.wake()
        self.metrics.job_duration.labels(state).observe(time.monotonic() - started)
        if state == CANCELLED:
            logger.info("job %s cancelled", job.id)
            return
        try:
            with anyio.CancelScope(shield=True):
                done = await self.registry.write(
                    lambda: self.store.finish_job(job.id, self.holder, state, result, progress.received,
                                                  progress.total)
                )
        except Exception:
            # The lease runs out and the job runs again; an upload that was
            # stored then answers as an identical re-upload (200).
            logger.warning("job %s: could not record its end", job.id, exc_info=True)
            return
        if not done:
            logger.info("job %s was cancelled or taken over before it ended as %s", job.id, state)

    async def _attempt(self, job: Job, progress: _Progress, scope: anyio.CancelScope) -> tuple[str, dict[str, Any]]:
        """Run the upload beside a heartbeat; (final state, stored result)."""
        registry = self.registry
        upload = UploadRequest(code=job.code, module=job.module, version=job.request["version"],
                               allow_overwrite=job.request["allow_overwrite"], sha256=job.request["sha256"],
                               operator=job.operator)
        origin_name = "none"
        outcome: list[CommitResult | RegistryError] = []

        async def upload_beside_heartbeat(url: str, origin: Origin) -> None:
            # Errors are caught here, not in a task group's exception group.
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat, job, progress, scope)
                try:
                    outcome.append(await registry.upload_through(
                        upload, _CountingOrigin(origin, progress, self.metrics), url))
                except RegistryError as exc:
                    outcome.append(exc)
                group.cancel_scope.cancel()

        try:
            url = await anyio.to_thread.run_sync(lambda: unseal(self.key(), job.request["sealed_url"]))  # key() may read
            origin = registry.resolve_origin(url)
            origin_name = origin.name
            await upload_beside_heartbeat(url, origin)
        except RegistryError as exc:
            outcome.append(exc)
        except SealBroken:
            # Made by an instance with another key: a configuration error, not a bug of the job.
            logger.error("job %s was sealed with another key than this instance's: give every instance"
                         " sharing the database the same [jobs] key_file", job.id)
            outcome.append(RegistryError(f"job {job.id}"))
        except Exception:
            logger.exception("job %s failed unexpectedly", job.id)
            outcome.append(RegistryError(f"job {job.id}"))
        commit = outcome[0]
        if isinstance(commit, RegistryError):
            registry.metrics.uploads.labels(origin_name, commit.code).inc()
            return FAILED, stored_error(commit)
        registry.metrics.uploads.labels(origin_name, commit.outcome.value).inc()
        status = 201 if commit.outcome in (Outcome.CREATED, Outcome.REVIVED) else 200
        return SUCCEEDED, {**record_json(commit.record, registry.time_zone), "status": status}

    async def _heartbeat(self, job: Job, progress: _Progress, scope: anyio.CancelScope) -> None:
        """Write progress and renew the lease; cancel the job once it is no longer ours."""
        while True:
            await anyio.sleep(HEARTBEAT)
            try:
                ours = await self.registry.write(
                    lambda: self.store.heartbeat_job(job.id, self.holder, LEASE, progress.received, progress.total)
                )
            except Exception:
                logger.warning("job %s: could not record progress", job.id, exc_info=True)
                continue
            if not ours:
                scope.cancel()
                return
