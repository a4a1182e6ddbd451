"""The WebSocket transport: uvicorn's sans-I/O protocol with a raw write path.

The fan-out builds each frame once and hands the same bytes to every watcher; writing them
through ASGI would cost an event dict, a re-encode and an await per message and recipient.
``PresenceWebSocketProtocol`` exposes, as the ASGI extension ``presence.raw``, a synchronous
``write(bytes)`` of already-framed data straight to the socket (server frames are unmasked,
and per-message compression is never negotiated), plus the transport's buffered size so the
session can hold back a slow reader. It also answers an over-size message with close code
4009 (SPEC section 5) instead of the library's 1009.

Under any other ASGI server the extension is absent and sessions fall back to plain ASGI
sends: same behaviour, more overhead.

``EdgeHTTPProtocol`` is uvicorn's httptools protocol with the edge of SPEC section 3: a
connection over the limits of ``[server]`` gets a 503 before a byte is parsed; headers (and
a body) that do not arrive within ``request_timeout_s`` get a 408 and the connection closed;
over-long headers a 431. Both protocols log through ``gateway.edge`` rules: never the client
address, never a query string.

It also hands every request the ASGI extension ``presence.stream`` (itself), for a response
that stays open (``gateway.sse``): once the app has started a chunked response, ``stream_write``
writes one chunk synchronously, ``buffered`` is what the kernel has not taken, ``stream_end``
finishes it (or cuts a client that does not read), and a graceful shutdown ends the stream
through the callback given to ``stream_open`` instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import CloseCode as LibraryCloseCode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.config import ServerConfig
from gateway.edge import Edge, Slot, quiet_log, redact_path
from gateway.errors import CloseCode
from gateway.protocol import MAX_MESSAGE

EXTENSION = "presence.raw"
STREAM = "presence.stream"
SEND_BUFFER = 128 * 1024  # the kernel doubles it
MAX_HEAD = 64 * 1024  # request line and headers
BODY_GRACE_S = 1.0  # the app answers a late body itself (408 in the provider's shape) first
LINGER_S = 2.0  # an answered, ending connection may read our answer this long before a cut

access_log = logging.getLogger("gateway.access")
_default_edge: Edge | None = None


def edge_of(app_state: dict[str, Any]) -> Edge:
    """The app's ``Edge`` from the lifespan state (``[server]`` defaults without one)."""
    edge = app_state.get(Edge.STATE_KEY)
    if isinstance(edge, Edge):
        return edge
    global _default_edge
    if _default_edge is None:
        _default_edge = Edge(ServerConfig())
    return _default_edge


def _plain(status: int, reason: str, *extra: bytes) -> bytes:
    body = reason.encode()
    head = [
        STATUS_LINES[status],
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        *extra,
        b"\r\n",
    ]
    return b"".join(head) + body


STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}
REFUSED = _plain(503, "too many connections, retry later", b"retry-after: 5\r\n")


class EdgeHTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with connection limits, deadlines and a quiet log."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = quiet_log
        self.edge = edge_of(app_state)
        self.slot: Slot | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.in_head = True  # bytes now arriving belong to a request line or headers
        self.head_bytes = 0
        self.draining = False  # answered and ending: what comes in is dropped
        self.stream_shutdown: Callable[[], None] | None = None  # see stream_open

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.slot = self.edge.limits.acquire(self.client[0] if self.client else None)
        if self.slot is None:
            self._refuse()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        self.stream_shutdown = None
        scope = getattr(self, "scope", None)
        if scope is not None:  # the scope holds us: freed by reference counting (test_heap.py)
            scope.get("extensions", {}).pop(STREAM, None)
        super().connection_lost(exc)
        # uvicorn cancels its keep-alive timer only on a clean close: after a reset the timer
        # and this protocol hold each other, a cycle a frozen heap never frees (test_heap.py)
        self._unset_keepalive_if_required()

    def _refuse(self) -> None:
        """Answer 503 before parsing anything."""
        self.edge.note_refused()
        self._end(REFUSED)

    def _end(self, response: bytes) -> None:
        """Send ``response`` and an end, drop what still comes in, cut after ``LINGER_S``.

        Closing with unread data in the socket would reset the connection, and a reset may
        destroy the response before the client reads it; the client closes on seeing the
        end (``eof_received`` then closes), or the linger timer cuts it.
        """
        self.draining = True
        self._disarm()
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.deadline = self.loop.call_later(LINGER_S, self.transport.abort)
        else:
            self.transport.close()

    def _arm(self, seconds: float | None = None) -> None:
        if self.deadline is None:
            delay = self.edge.request_timeout_s if seconds is None else seconds
            self.deadline = self.loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self) -> None:
        """Headers or body did not arrive in time: 408 unless a response is under way."""
        self.deadline = None
        self._answer(408, "request not received in time")

    def _answer(self, status: int, reason: str) -> None:
        if self.draining or self.transport.is_closing():
            return
        cycle = self.cycle
        started = False
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True  # the app's receive() ends, its sends go nowhere
            cycle.message_event.set()
        access_log.info("- - %d %s", status, reason)
        if started:
            self.transport.close()
        else:
            self._end(_plain(status, reason))

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return  # read and dropped: see _end
        if self.in_head:
            self.head_bytes += len(data)
        super().data_received(data)
        if self.in_head and self.head_bytes > MAX_HEAD:
            self._answer(431, "request headers too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a keep-alive request gets its own deadline from its first byte

    def on_headers_complete(self) -> None:
        self._disarm()
        self.in_head = False
        self.head_bytes = 0
        upgrade = self.parser.should_upgrade() and self._should_upgrade()
        if not upgrade:
            self.scope["extensions"] = {STREAM: self}  # type: ignore[dict-item]
        super().on_headers_complete()
        if not upgrade:
            self._arm(self.edge.request_timeout_s + BODY_GRACE_S)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self.in_head = True

    # a response that stays open (gateway.sse)

    def stream_open(self, on_shutdown: Callable[[], None]) -> None:
        """The response just started is a stream: ``on_shutdown`` ends it when the server stops.

        Its deadlines are over (a GET's ended with its headers); the send buffer is kept
        small, so a client that stops reading is seen behind after a few hundred KiB.
        """
        self.stream_shutdown = on_shutdown
        # what a stream waits on for hours: the slimmer Flag, not an asyncio.Event (a deque
        # each); nothing waits on them right now (the app is between its sends and receives)
        cycle = self.cycle
        if cycle is not None:
            cycle.message_event = _flag(cycle.message_event.is_set())  # type: ignore[assignment]
        flow = self.flow
        flow._is_writable_event = _flag(flow._is_writable_event.is_set())  # type: ignore[assignment]
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def stream_write(self, data: bytes) -> bool:
        """Write ``data`` as one chunk of the started response; False once it is over."""
        cycle = self.cycle
        if (
            cycle is None
            or not cycle.chunked_encoding
            or cycle.response_complete
            or cycle.disconnected
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    def stream_end(self, *, cut: bool = False) -> None:
        """End the stream and its connection: the last chunk, then a close (a client that
        does not read it is cut after ``LINGER_S``); ``cut`` drops what it has not read."""
        self.stream_shutdown = None
        if self.transport.is_closing():
            return
        if cut:
            self.transport.abort()
            return
        self.transport.write(b"0\r\n\r\n")
        self.transport.close()
        self._disarm()
        self.deadline = self.loop.call_later(LINGER_S, self.transport.abort)

    def shutdown(self) -> None:
        if self.stream_shutdown is not None:
            callback, self.stream_shutdown = self.stream_shutdown, None
            callback()  # the stream ends itself (stream_end) instead of running to the timeout
            return
        super().shutdown()

    def handle_websocket_upgrade(self) -> None:
        slot, self.slot = self.slot, None
        super().handle_websocket_upgrade()
        protocol = self.transport.get_protocol()
        if isinstance(protocol, PresenceWebSocketProtocol):
            protocol.slot = slot  # the WebSocket keeps this connection's place
        elif slot is not None:
            slot.release()


class Inbox:
    """What uvicorn needs of its per-connection ``asyncio.Queue``, in a fraction of the memory.

    One consumer (the ASGI app's ``receive``), a handful of items at most.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """What uvicorn needs of its per-connection ``asyncio.Event`` (writable), slimmer."""

    __slots__ = ("_on", "_waiter")

    def __init__(self) -> None:
        self._on = True
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._on

    def set(self) -> None:
        self._on = True
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_result(None)
            self._waiter = None

    def clear(self) -> None:
        self._on = False

    async def wait(self) -> None:
        while not self._on:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)


def _flag(on: bool) -> Flag:
    flag = Flag()
    if not on:
        flag.clear()
    return flag


class _Connection(ServerProtocol):
    """websockets' server state machine, closing with 4009 on an over-size message."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == LibraryCloseCode.MESSAGE_TOO_BIG:
            code, reason = CloseCode.TOO_LARGE_OR_TOO_MANY, "message too large"
        super().fail(code, reason)


class PresenceWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol plus the ``presence.raw`` extension."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = quiet_log  # uvicorn's lines name the client and the query string
        self.conn = _Connection(extensions=[], max_size=MAX_MESSAGE, logger=quiet_log)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.slot: Slot | None = None  # handed over by EdgeHTTPProtocol on upgrade
        self.status = 0  # the handshake's answer, for the access log
        self.opened_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.opened_at = self.loop.time()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linux lets a loopback send buffer grow to MiBs: a stalled reader would hide
            # that much before the session saw it fall behind (and pin kernel memory)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        self._log_access()
        # The scope holds us (the raw extension) and we hold the scope: with long-lived
        # objects frozen out of the collector's reach (gateway.heap), a closed connection
        # must be freed by reference counting alone (tests/test_heap.py).
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(EXTENSION, None)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code != 101:
            self.status = self.response.status_code  # a bad handshake, refused by websockets
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    def _log_access(self) -> None:
        """One access-log line per WebSocket: path redacted, no query, no client address."""
        scope = getattr(self, "scope", None)
        path = redact_path(scope["path"]) if scope is not None else "-"
        conn = self.conn
        first = conn.close_sent if conn.close_sent and not conn.close_rcvd_then_sent else None
        first = first or conn.close_rcvd or conn.close_sent
        close = f"close {first.code}" if first is not None else "close 1006"
        access_log.info(
            "WebSocket %s %d %s %.1fs",
            path,
            self.status or 500,
            close if self.status == 101 else "-",
            self.loop.time() - self.opened_at,
        )

    async def send(self, message: Any) -> None:
        if not self.handshake_complete and self.initial_response is None and not self.status:
            kind = message["type"]
            if kind == "websocket.accept":
                self.status = 101
            elif kind == "websocket.close":
                self.status = 403
            elif kind == "websocket.http.response.start":
                self.status = message["status"]
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # The HTTP upgrade request and response are not needed once the socket is open;
            # websockets' parser generator keeps the request as a local, so start a fresh
            # one (it parses frames only, now the state is OPEN). The client waits for our
            # 101 before sending frames, so nothing is half-parsed; check it anyway.
            self.request = self.response = None  # type: ignore[assignment]
            conn = self.conn
            if conn.state is State.OPEN and not conn.reader.buffer:
                conn.parser = conn.parse()
                next(conn.parser)

    def write(self, data: bytes) -> bool:
        """Write already-framed bytes; False once the connection is closing."""
        if self.close_sent or self.disconnected or not self.handshake_complete:
            return False
        if self.transport.is_closing():  # closed by uvicorn (shutdown, the peer's close):
            return False  # nothing may follow the close frame
        self.transport.write(data)
        return True

    def handle_ping(self) -> None:
        """Answer a WebSocket ping, unless the client is not reading what it is sent.

        uvicorn writes every pong straight into the socket's buffer and keeps reading: a
        client that pings and never reads would grow that buffer without limit. Past the
        same bound a session applies to everything it queues, it is closed with 4008 (what
        is buffered then is at most the bound plus the pongs of one read).
        """
        if self.buffered() > edge_of(self.app_state).pong_high_water:  # [server]
            self.conn.data_to_send()  # drop the pong websockets prepared
            self.close_now(CloseCode.TOO_SLOW, "client too slow")
            return
        super().handle_ping()

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    def close_now(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for the client to read.

        ASGI's ``websocket.close`` waits until the socket is writable, which for a stalled
        client is never; this queues the close frame behind what is buffered and aborts the
        connection if the client has not completed the handshake within the close timeout.
        """
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)


class QuietH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with no access log lines, whatever handlers a test's log
    capture attached (the simulator's fake pull APIs: a line would hold Tencent's usersig)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False
