"""``EdgeHTTPProtocol``: uvicorn's httptools protocol with the edge of SPEC section 3.

A connection over the limits of ``[server]`` gets a 503 before a byte is parsed; headers (and
a body) that do not arrive within ``request_timeout_s`` get a 408 and the connection closed;
over-long headers a 431. It logs through ``gateway.edge`` rules: never the client address,
never a query string.

It also hands every request the ASGI extension ``presence.stream`` (itself), for a response
that stays open (``gateway.sse``): once the app has started a chunked response, ``stream_write``
writes one chunk synchronously, ``buffered`` is what the kernel has not taken, ``stream_end``
finishes it (or cuts a client that does not read), and a graceful shutdown ends the stream
through the callback given to ``stream_open`` instead of waiting for it.

A WebSocket upgrade hands the connection's slot to ``PresenceWebSocketProtocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.edge import Slot, quiet_log
from gateway.transport.common import SEND_BUFFER, Flag, access_log, edge_of, release_transport
from gateway.transport.websocket import PresenceWebSocketProtocol

STREAM = "presence.stream"
MAX_HEAD = 64 * 1024  # request line and headers
BODY_GRACE_S = 1.0  # the app answers a late body itself (408 in the provider's shape) first
LINGER_S = 2.0  # an answered, ending connection may read our answer this long before a cut


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
        release_transport(self.transport)

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
            cycle.message_event = Flag(cycle.message_event.is_set())  # type: ignore[assignment]
        flow = self.flow
        flow._is_writable_event = Flag(flow._is_writable_event.is_set())  # type: ignore[assignment]
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
        # done with this connection: httptools' parser and this protocol hold each other, a
        # cycle that would outlive the WebSocket once frozen (gateway.heap); and the request
        self.parser = None  # type: ignore[assignment]
        self.scope = self.headers = None  # type: ignore[assignment]
        protocol = self.transport.get_protocol()
        if isinstance(protocol, PresenceWebSocketProtocol):
            protocol.slot = slot  # the WebSocket keeps this connection's place
        elif slot is not None:
            slot.release()
