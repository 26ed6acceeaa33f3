"""Connection handling for ``registry serve``: timeouts, a connection cap,
and protocol-level errors in the contract's JSON shape.

:class:`RegistryProtocol` is uvicorn's httptools protocol (llhttp, the
parser of Node.js, in C: about a tenth less CPU per small request than the
pure-Python h11) with four guards, each a single timer or counter per
connection (no polling, nothing per byte beyond re-arming one timer):

- ``header_timeout``: a request head must arrive whole within it, counted
  from the connection's start or the previous response's end. A client that
  trickles a head (or sends half of one and stops) gets 408
  ``REQUEST_TIMEOUT`` and the connection is closed; one that sent nothing is
  closed silently (there is no request to answer).
- ``body_idle_timeout``: while the app waits for body bytes, a pause longer
  than it answers 408 ``REQUEST_TIMEOUT`` and closes the connection; the app
  sees the client as disconnected, so the upload's staging file is removed.
  Time during which the server itself stopped reading (back-pressure), or a
  request sent ahead waits behind an earlier one still being answered, never
  counts against the client.
- ``max_connections``: a connection beyond it is answered at once with 503
  ``SERVICE_UNAVAILABLE`` and ``Connection: close``, never queued.
- :data:`MAX_HEAD_SIZE`: a request head (request line and headers) larger
  than it is answered 400 and the connection closed. llhttp itself sets no
  limit and httptools buffers a header's value until it ends, so the bytes a
  connection may hold for an unfinished head are bounded here. The same
  bound holds for what a chunked body sends that is not body: trailer fields
  (buffered alike) and chunk framing.

Trailer fields are read and dropped (RFC 9110 section 6.5.1 allows it): uvicorn
would add them to the request's headers, where a field sent after the body
(``Authorization``, say) would read as one sent before it.

A request llhttp cannot parse (a malformed or absurd ``Content-Length``, a bad
request line, ``Content-Length`` together with ``Transfer-Encoding``, which
RFC 9112 section 6.3 allows a server to refuse as a sign of request
smuggling), and what h11 refused and llhttp does not (an HTTP/1.1 request
without exactly one ``Host``, a transfer coding other than chunked, more than
:data:`MAX_PIPELINED` requests sent ahead of their answers) is answered 400
``VALIDATION_ERROR`` as JSON, never uvicorn's plain text, and the connection
is closed (after the answers still due, where requests were sent ahead). A
request asking to switch
protocols (``Upgrade``) is served as plain HTTP, with ``Connection: close``:
llhttp parses nothing after it, and no protocol is offered to switch to.

:class:`KeepAliveAfterErrors` wraps the app so that an exception raised after
the error response was sent whole (Starlette re-raises a 500's exception for
the server to log) leaves the kept-alive connection usable: the handler has
logged it already, and uvicorn would otherwise close the connection unannounced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr

from registry.api.errors import ERROR_CODE_HEADER, preferred_language
from registry.errors import (
    RegistryError,
    RequestTimeout,
    ServiceUnavailable,
    ValidationError,
)

logger = logging.getLogger("registry.server")

#: The most bytes of a request head: its request line and headers. Browsers
#: and HTTP clients send a few KiB; nginx's default allows 32 KiB as well.
MAX_HEAD_SIZE = 32 * 1024


#: The most requests of one connection that wait, parsed, behind the one being
#: answered (pipelined). llhttp parses every request in what arrives at once
#: (up to 256 KiB: thousands of tiny ones), and each waits as a request object
#: of a few KiB; beyond these the connection ends after answering them.
MAX_PIPELINED = 16


#: Methods handed to llhttp as they are. llhttp refuses any method outside
#: its own list as malformed, where a method is any token a client cares to
#: send and the contract answers one that no route takes 405 with ``Allow``.
#: Any other token is parsed as :data:`STAND_IN_METHOD` (llhttp frames a
#: request by its headers whatever its method) and the app sees the real one.
PARSED_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})
STAND_IN_METHOD = b"GET"
#: A method: an RFC 9110 token, followed by the space before the target.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?= )")


class _Refused(Exception):
    """Raised from a parser callback: httptools stops and reports a parser error."""


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


class RegistryProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards described in the module docstring.

    Built by uvicorn with its own arguments; the limits come from the class
    attribute :attr:`limits`, set once per process by :func:`protocol_class`.
    """

    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._answered_cycle: object | None = None
        # Whether a request head has begun and not yet ended, and how many
        # bytes arrived for it after the piece it began in.
        self._head_open = False
        self._head_bytes = 0
        # Bytes of a body's message that brought no body byte (chunk framing,
        # trailer fields) since the last that did; whether a piece brought one.
        self._framing_bytes = 0
        self._body_arrived = False
        self._refusal: str | None = None  # why a callback stopped the parser
        # Whether a request is being parsed (its first byte arrived and its
        # body has not ended), and the real method of one parsed as another.
        self._message_open = False
        self._real_method: str | None = None

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
        if self._refusal is not None:
            return  # parsing stopped at a refused request (see _refuse)
        if not self._message_open:
            data = self._stand_in_for_other_methods(data)
        head_was_open = self._head_open
        self._body_arrived = False
        super().data_received(data)
        if self._refusal is not None:
            return
        if head_was_open and self._head_open:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_SIZE:
                self._refuse("the request head is too large")
                return
        elif self._message_open and not self._head_open and not self._body_arrived:
            self._framing_bytes += len(data)
            if self._framing_bytes > MAX_HEAD_SIZE:
                self._refuse("the request's chunk framing or trailer fields are too large")
                return
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

    def _stand_in_for_other_methods(self, data: bytes) -> bytes:
        """``data``, the start of a request, with a method outside
        :data:`PARSED_METHODS` replaced by :data:`STAND_IN_METHOD` (kept in
        :attr:`_real_method` for the app). A request that starts inside a
        piece after another request's end, or whose method is cut by the
        piece's end, is left to llhttp (which refuses an unknown method)."""
        start = len(data) - len(data.lstrip(b"\r\n"))  # empty lines before a request are skipped
        method = _METHOD.match(data, start)
        if method is None or method.group() in PARSED_METHODS:
            return data
        self._real_method = method.group().decode("ascii")
        return data[:start] + STAND_IN_METHOD + data[method.end():]

    # -- parser callbacks (called by httptools while it parses) ---------------

    def on_message_begin(self) -> None:
        self._message_open = True
        self._head_open = True
        self._head_bytes = 0
        self._framing_bytes = 0
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._message_open = False
        super().on_message_complete()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_open:
            super().on_header(name, value)
        # else a trailer field, after the body: dropped (see the module docstring)

    def on_body(self, body: bytes) -> None:
        self._body_arrived = True
        self._framing_bytes = 0
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self._refusal = self._head_refusal()
        if self._refusal is None and len(self.pipeline) >= MAX_PIPELINED:
            self._refusal = "too many requests sent ahead of their answers"
        if self._refusal is not None:
            raise _Refused  # stops the parser; uvicorn calls send_400_response
        self._head_open = False
        super().on_headers_complete()  # sets the method llhttp parsed, starts (or queues) the app's task
        if self._real_method is not None:
            # Put back before that task first runs (at the loop's next turn).
            self.scope["method"], self._real_method = self._real_method, None
        if self.parser.should_upgrade():
            # llhttp parses nothing after a request that asks to switch
            # protocols; none is offered here, so the connection ends with
            # the answer instead of leaving what follows unread.
            self.cycle.keep_alive = False

    def _head_refusal(self) -> str | None:
        """Why a whole head llhttp accepted is refused, or None.

        Its size: the head's bytes, give or take its line ends, so that the
        same head is refused or served whether it came in one piece or many.
        And what h11 (this server's parser before) refused too: an HTTP/1.1
        request needs exactly one ``Host`` (RFC 9112 section 3.2; with two, a
        proxy in front and the app could each believe another), and the only
        transfer coding is chunked (llhttp frames ``gzip, chunked`` by its
        chunks and would hand the app still-encoded bytes).
        """
        size = len(self.url)
        hosts = 0
        codings: list[bytes] = []
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                codings += (coding.strip().lower() for coding in value.split(b","))
        if size > MAX_HEAD_SIZE:
            return "the request head is too large"
        if hosts > 1 or (hosts == 0 and self.parser.get_http_version() != "1.0"):
            return "an HTTP/1.1 request needs exactly one Host header"
        if codings and codings != [b"chunked"]:
            return "the only transfer coding accepted is chunked"
        return None

    def _unsupported_upgrade_warning(self) -> None:
        """An ``Upgrade`` request is served as plain HTTP: nothing for the operator to do.

        (uvicorn logs two warnings per such request, one advising to install
        a WebSocket library: any client could fill the log with them.)
        """

    # -- protocol errors -----------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse (or a callback refused): the
        contract's JSON 400, then close."""
        self._refuse(self._refusal or "malformed HTTP request")

    def _refuse(self, message: str) -> None:
        """Stop parsing at a request that cannot be served and end the connection.

        The refused request is answered 400 ``VALIDATION_ERROR`` saying
        ``message``, unless an earlier request's answer is still due: then
        that one (and any sent ahead of it that wait for their turn) is
        answered and the connection closed after it, or, where it cannot be
        (the refused body is that of a request still waiting, or its own
        response began), the connection is closed at once.
        Bytes written then would corrupt a response or be read as its answer.
        A request whose body is refused after its answer began (or ended) gets
        no second answer: the connection just ends.
        """
        self._refusal = message
        self._cancel_timers()
        cycle = self.cycle
        # llhttp reads requests sent ahead of their turn (pipelined) while an
        # earlier one is answered; such a request waits in self.pipeline, and
        # self.cycle is the newest, waiting or not.
        reading_its_body = cycle is not None and self._message_open and not self._head_open
        if reading_its_body and (self.pipeline or cycle.response_started):
            self.transport.close()
        elif cycle is not None and not cycle.response_complete and not reading_its_body:
            cycle.keep_alive = False  # the refused bytes follow a request still being answered
            self.flow.pause_reading()
        else:
            error = ValidationError({})
            error.message = message
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
        if not self._head_open:
            self.transport.close()  # nothing of a request was sent: nobody to answer
            return
        self.transport.write(error_bytes(RequestTimeout("no complete request head")))
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.disconnected or not cycle.more_body:
            return
        if self.flow.read_paused or self.pipeline:
            # The server is not reading (not the client's stall), or the
            # request waits behind an earlier one still being answered (its
            # app reading the connection for a disconnect lets its body in):
            # a 408 now would land inside that answer. Counted once it starts.
            self._arm_body_timer()
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
