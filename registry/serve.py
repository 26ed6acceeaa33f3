"""``registry serve``: bind once, then run one or ``--workers N`` processes.

The listening socket is bound in the parent before anything starts, so a
second ``serve`` on a port in use exits (status 3) before it touches any
state. With one worker the parent serves itself; with more, it forks that
many children which all accept on the one socket (the kernel spreads the
connections) and supervises them: SIGTERM or SIGINT to the parent stops every
child gracefully; a child that dies is started again, unless it died within
seconds of starting (a crash loop stops the whole server instead).

Children are forked before any of them builds the registry (database
connections, threads and event loops are made after the fork, never shared).
Each holds its own staging folder (:mod:`registry.staging_folders`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import re
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from registry.bootstrap import build_registry
from registry.redact import redact_url
from registry.settings import Settings

logger = logging.getLogger("registry.server")

#: A child that ends sooner than this after its start is not restarted: it
#: would only fail the same way again, as fast as it can be forked.
MIN_CHILD_LIFETIME = 5.0
#: One log line per this many seconds for each kind of loop error (a full
#: file table makes every accept fail until a connection closes).
LOOP_ERROR_LOG_INTERVAL = 10.0

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ServeError(Exception):
    """``serve`` cannot start; the message names the flag or key to fix."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be a listen address (an IP address or a host
    name), or None. Shared by ``server.host`` and ``serve --host``."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host.removesuffix(".")
    if 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return f"{host!r} is neither an IP address nor a host name"


@dataclass(frozen=True)
class ServeOptions:
    """What ``serve`` runs: the resolved ``[server]`` keys and flags."""

    host: str
    port: int
    workers: int
    header_timeout: float
    body_idle_timeout: float
    max_connections: int
    forwarded_allow_ips: list[str]

    @classmethod
    def from_settings(cls, settings: Settings, host: str | None, port: int | None, workers: int | None) -> ServeOptions:
        count = workers if workers is not None else settings["server.workers"]
        return cls(
            host=host or settings["server.host"],
            port=port if port is not None else settings["server.port"],
            workers=count or (os.cpu_count() or 1),
            header_timeout=settings["server.header_timeout"],
            body_idle_timeout=settings["server.body_idle_timeout"],
            max_connections=settings["server.max_connections"],
            forwarded_allow_ips=list(settings["server.forwarded_allow_ips"]),
        )


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the (old, new) soft limits.

    Every connection and every upload in flight costs descriptors; the usual
    soft default (1024) runs out long before the machine does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The bound, listening TCP socket.

    Re-wrapped so Python reads the protocol (TCP) back from the descriptor:
    a socket made with proto 0 says 0, and asyncio then leaves Nagle's
    algorithm on for accepted connections, which delays every keep-alive
    request by the client's delayed ACK (40 ms).

    :raises ServeError: status 3 when the address is in use; 1 otherwise,
        naming ``server.host``/``--host`` and ``server.port``/``--port``.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"server.host / --host {host!r}: cannot resolve it: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    try:
        bound = socket.create_server(address, family=family, backlog=backlog)
    except OSError as exc:
        status = 3 if exc.errno == 98 else 1  # EADDRINUSE
        raise ServeError(
            f"cannot listen on {host}:{port} (server.host / --host, server.port / --port): {exc.strerror}", status
        ) from None
    return socket.socket(fileno=bound.detach())


def describe(settings: Settings, pm: pluggy.PluginManager, options: ServeOptions) -> list[str]:
    """The start-up lines: config file, database, storage, origins, plugins,
    address; every URL with its secrets redacted."""
    values = dict(settings)
    database = values.get("database.url") or values["database.path"]
    backend = values["storage.backend"]
    storage_keys = sorted(k for k in values if k.startswith(f"storage.{backend}."))
    storage_details = ", ".join(f"{k.rsplit('.', 1)[1]}={_shown(values[k])}" for k in storage_keys)
    plugins = sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None and not name.isdigit())
    return [
        f"config: {settings.source or 'none found; built-in defaults'}",
        f"database: {_shown(database)}",
        f"storage: {backend}" + (f" ({storage_details})" if storage_details else ""),
        f"origins: {', '.join(values['origins.enabled']) or 'none'}",
        f"plugins: {', '.join(plugins)}",
        (f"listening on http://{_url_host(options.host)}:{options.port} with {options.workers} worker(s);"
         f" trusted proxies: {', '.join(options.forwarded_allow_ips) or 'none'}"),
    ]


def _shown(value: Any) -> str:
    return redact_url(value) if isinstance(value, str) and "://" in value else str(value)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(settings: Settings, pm: pluggy.PluginManager, options: ServeOptions) -> int:
    """Run the service until SIGTERM/SIGINT; the exit status.

    :raises ServeError: the socket cannot be bound.
    """
    old, new = raise_open_file_limit()
    sock = bind(options.host, options.port)
    for line in describe(settings, pm, options):
        logger.info("%s", line)
    if new > old:
        logger.info("open file limit raised from %d to %d", old, new)
    if options.workers == 1:
        return _run_worker(settings, pm, options, sock)
    gc.enable()  # the supervisor runs for as long as its children
    return _Supervisor(lambda: _run_forked_worker(settings, pm, options, sock), options.workers).run()


def _run_forked_worker(settings: Settings, pm: pluggy.PluginManager, options: ServeOptions,
                       sock: socket.socket) -> int:
    """:func:`_run_worker` in a child of the supervisor, which collects cycles:
    a child (a restarted one too) starts as a single worker does, with the
    collector paused until its start-up's objects are frozen."""
    gc.disable()
    return _run_worker(settings, pm, options, sock)


def _run_worker(settings: Settings, pm: pluggy.PluginManager, options: ServeOptions, sock: socket.socket) -> int:
    """Serve on ``sock`` in this process until told to stop; the exit status."""
    import uvicorn

    from registry.app import create_app
    from registry.connections import (
        ConnectionLimits,
        KeepAliveAfterErrors,
        protocol_class,
    )
    from registry.heap import keep_transfer_buffers

    keep_transfer_buffers()
    registry = build_registry(settings, pm)
    limits = ConnectionLimits(options.header_timeout, options.body_idle_timeout, options.max_connections)
    config = uvicorn.Config(
        KeepAliveAfterErrors(create_app(registry)),
        host=options.host,
        port=options.port,
        http=protocol_class(limits),
        ws="none",  # no WebSocket routes: an Upgrade request is served as plain HTTP
        log_config=None,  # keep configure_logging's handlers
        access_log=False,  # registry.access writes one JSON line per request instead
        lifespan="on",
        timeout_graceful_shutdown=10,
        proxy_headers=bool(options.forwarded_allow_ips),
        forwarded_allow_ips=options.forwarded_allow_ips,
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(_RateLimitedLoopErrors())
        # What exists now (modules, the app, the plugins) lives as long as the
        # process: frozen, the cyclic collector no longer walks it each time
        # request garbage triggers a full collection (a 1 KiB download then
        # took about a quarter less CPU).
        gc.freeze()
        gc.enable()  # paused by the ``serve`` command while it started
        await server.serve(sockets=[sock])

    asyncio.run(run())
    return 0 if server.started else 3


class _RateLimitedLoopErrors:
    """An event-loop exception handler that logs each kind of error at most
    once per :data:`LOOP_ERROR_LOG_INTERVAL`, with how many it left out."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        kind = str(context.get("message", "event loop error"))
        now = time.monotonic()
        if now - self._last.get(kind, -LOOP_ERROR_LOG_INTERVAL) < LOOP_ERROR_LOG_INTERVAL:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            context = {**context, "message": f"{kind} (and {skipped} more like it since the last report)"}
        loop.default_exception_handler(context)


class _Supervisor:
    """Fork ``count`` children running ``work`` and keep them running until a signal."""

    def __init__(self, work: Callable[[], int], count: int) -> None:
        self.work = work
        self.count = count
        self.children: dict[int, float] = {}  # pid -> start time
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for _ in range(self.count):
            self._spawn()
        while self.children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            started = self.children.pop(pid, None)
            if started is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                continue
            if time.monotonic() - started < MIN_CHILD_LIFETIME:
                logger.error("worker %d exited with status %d right after starting; stopping", pid, code)
                self.status = code if code > 0 else 1
                self._stop(signal.SIGTERM, None)
                continue
            logger.warning("worker %d exited with status %d; starting another", pid, code)
            self._spawn()
        return self.status

    def _spawn(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                code = self.work()
            except BaseException:
                logger.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = time.monotonic()

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
