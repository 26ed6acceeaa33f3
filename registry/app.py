"""``create_app(registry)``: the Starlette application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware

from registry.api.browse import browse_routes
from registry.api.errors import EXCEPTION_HANDLERS
from registry.api.observe import ObserveRequests
from registry.api.paths import KeepEncodedSlashes
from registry.api.routes import build_routes
from registry.jobs import JobRunner, TransferMetrics, check_sealing_key
from registry.resumable import Resumable
from registry.service import Registry
from registry.ui.routes import ui_routes
from registry.ui.session import SessionCodec, session_key


def create_app(registry: Registry) -> Starlette:
    """The ASGI app serving ``registry``; its lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await registry.startup()
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(jobs.run)
                background.start_soon(resumable.run)
                yield
                background.cancel_scope.cancel()
            await resumable.assemblies.close()
        finally:
            await registry.shutdown()

    ui_enabled = bool(registry.settings["ui.enabled"])
    app = Starlette(
        routes=build_routes(browse_routes()) + (ui_routes() if ui_enabled else []),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
        middleware=[Middleware(ObserveRequests, metrics=registry.metrics), Middleware(KeepEncodedSlashes)],
    )
    app.state.registry = registry
    # No codec when the web interface is off: session cookies then mean nothing.
    app.state.ui_sessions = (
        SessionCodec(session_key(registry.settings)) if ui_enabled else None
    )
    check_sealing_key(registry.settings)  # a shared key file that is missing stops start-up
    # Background link uploads and resumable uploads share one store and metrics.
    jobs = JobRunner(registry, registry.records, TransferMetrics(registry))
    app.state.jobs = jobs
    resumable = Resumable(registry, jobs)
    app.state.resumable = resumable
    return app
