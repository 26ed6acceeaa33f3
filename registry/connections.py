"""Connection handling for ``registry serve``: timeouts, a connection cap,
and protocol-level errors in the contract's JSON shape.

:class:`RegistryProtocol` is uvicorn's h11 protocol with three guards, each a
single timer or counter per connection (no polling, nothing per byte beyond
re-arming one timer):

- ``header_timeout``: a request head must arrive whole within it, counted
  from the connection's start or the previous response's end. A client that
  trickles a head (or sends half of one and stops) gets 408
  ``REQUEST_TIMEOUT`` and the connection is closed; one that sent nothing is
  closed silently (there is no request to answer).
- ``body_idle_timeout``: while the app waits for body bytes, a pause longer
  than it answers 408 ``REQUEST_TIMEOUT`` and closes the connection; the app
  sees the client as disconnected, so the upload's staging file is removed.
  Time during which the server itself stopped reading (back-pressure) never
  counts against the client.
- ``max_connections``: a connection beyond it is answered at once with 503
  ``SERVICE_UNAVAILABLE`` and ``Connection: close``, never queued.

A request h11 cannot parse (a malformed or absurd ``Content-Length``, a bad
request line, a head over the size limit) is answered 400
``VALIDATION_ERROR`` as JSON, never uvicorn's plain text.

:class:`KeepAliveAfterErrors` wraps the app so that an exception raised after
the error response was sent whole (Starlette re-raises a 500's exception for
the server to log) leaves the kept-alive connection usable: the handler has
logged it already, and uvicorn would otherwise close the connection unannounced.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

from registry.api.errors import ERROR_CODE_HEADER, preferred_language
from registry.errors import (
    RegistryError,
    RequestTimeout,
    ServiceUnavailable,
    ValidationError,
)

logger = logging.getLogger("registry.server")


class ConnectionLimits:
    """The ``[server]`` timeouts and cap that every connection of a process shares."""

    def __init__(self, header_timeout: float, body_idle_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.body_idle_timeout = body_idle_timeout
        self.max_connections = max_connections


def error_bytes(error: RegistryError, accept_language: str | None = None) -> bytes:
    """A whole HTTP/1.1 response for ``error`` that closes the connection."""
    body = json.dumps(error.body(preferred_language(accept_language)), ensure_ascii=False).encode()
    reason = b"Request Timeout" if error.status == 408 else b"Error"
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"%s: %s\r\nconnection: close\r\n\r\n"
        % (error.status, reason, len(body), ERROR_CODE_HEADER.encode(), error.code.encode())
    )
    return head + body


class RegistryProtocol(H11Protocol):
    """uvicorn's h11 protocol with the guards described in the module docstring.

    Built by uvicorn with its own arguments; the limits come from the class
    attribute :attr:`limits`, set once per process by :func:`protocol_class`.
    """

    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._answered_cycle: object | None = None

    # -- connection life ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Answered before it counts: the process never holds more than the cap.
            transport.write(error_bytes(ServiceUnavailable()))
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self.transport is None:  # refused in connection_made: uvicorn never knew it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._after_events()

    def on_response_complete(self) -> None:
        self._cancel_body_timer()
        if not self.transport.is_closing():
            self._arm_head_timer()
        # May start a pipelined request already received: re-arm for it.
        super().on_response_complete()
        self._after_events()

    def shutdown(self) -> None:
        self._cancel_timers()
        super().shutdown()

    # -- protocol errors -----------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: the contract's JSON 400, then close."""
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()  # mid-response: any bytes now would corrupt it
            return
        error = ValidationError({})
        error.message = "malformed HTTP request"
        self.transport.write(error_bytes(error))
        self.transport.close()

    # -- timers --------------------------------------------------------------

    def _after_events(self) -> None:
        """Re-arm the timers for what the connection now waits for."""
        cycle = self.cycle
        if cycle is not None and cycle is not self._answered_cycle and not cycle.response_complete:
            # A new request head arrived whole.
            self._answered_cycle = cycle
            self._cancel_head_timer()
        if cycle is not None and cycle.more_body and not cycle.response_complete and not cycle.disconnected:
            self._arm_body_timer()
        else:
            self._cancel_body_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _arm_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.limits.body_idle_timeout, self._body_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # a request is being served; its head arrived
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self.transport.close()  # nothing of a request was sent: nobody to answer
            return
        self.transport.write(error_bytes(RequestTimeout("no complete request head")))
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.disconnected or not cycle.more_body:
            return
        if self.flow.read_paused:
            self._arm_body_timer()  # the server is not reading: not the client's stall
            return
        if not cycle.response_started:
            language = dict(self.headers or []).get(b"accept-language", b"").decode("latin-1")
            self.transport.write(error_bytes(RequestTimeout("the request body stalled"), language))
            cycle.response_started = True
        client = get_remote_addr(self.transport)
        logger.info("closed a connection from %s: request body stalled", client[0] if client else "?")
        # The app's next receive() says the client went away: it removes the
        # upload's staging file and its answer (if any) goes nowhere.
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[RegistryProtocol]:
    """A :class:`RegistryProtocol` subclass bound to ``limits``, for uvicorn's ``http``."""
    return type("BoundRegistryProtocol", (RegistryProtocol,), {"limits": limits})


class KeepAliveAfterErrors:
    """ASGI wrapper: an exception after a complete response keeps the connection.

    Starlette's error middleware sends the 500 and then re-raises for the
    server to log; the app's handler has logged it already, and uvicorn would
    close the kept-alive connection without ``Connection: close``. An
    exception before the response is complete still reaches uvicorn.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        completed = False

        async def watching_send(message: Any) -> None:
            nonlocal completed
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True

        try:
            await self.app(scope, receive, watching_send)
        except Exception:
            if not completed:
                raise
