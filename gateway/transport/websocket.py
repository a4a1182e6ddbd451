"""``PresenceWebSocketProtocol``: uvicorn's sans-I/O WebSocket protocol with a raw write path.

The fan-out builds each frame once and hands the same bytes to every watcher; writing them
through ASGI would cost an event dict, a re-encode and an await per message and recipient.
``PresenceWebSocketProtocol`` exposes, as the ASGI extension ``presence.raw``, a synchronous
``write(bytes)`` of already-framed data straight to the socket (server frames are unmasked,
and per-message compression is never negotiated), plus the transport's buffered size so the
session can hold back a slow reader. It also answers an over-size message with close code
4009 (SPEC section 5) instead of the library's 1009, and logs one access line per WebSocket
through ``gateway.edge`` rules (no client address, no query string).

Under any other ASGI server the extension is absent and sessions fall back to plain ASGI
sends: same behaviour, more overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import CloseCode as LibraryCloseCode
from websockets.http11 import Request
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from gateway.edge import Slot, quiet_log, redact_path
from gateway.errors import CloseCode
from gateway.protocol import MAX_MESSAGE
from gateway.transport.common import (
    SEND_BUFFER,
    Flag,
    Inbox,
    access_log,
    edge_of,
    release_transport,
)

EXTENSION = "presence.raw"


class _Connection(ServerProtocol):
    """websockets' server state machine, closing with 4009 on an over-size message; its
    attributes are slots (no instance dict), as ``PresenceWebSocketProtocol``'s."""

    __slots__ = (
        "_state",
        "accept_called",
        "available_extensions",
        "available_subprotocols",
        "close_rcvd",
        "close_rcvd_then_sent",
        "close_sent",
        "current_size",
        "debug",
        "eof_sent",
        "events",
        "expect_continuation_frame",
        "extensions",
        "handshake_exc",
        "id",
        "logger",
        "max_fragment_size",
        "max_message_size",
        "origin",
        "origins",
        "parser",
        "parser_exc",
        "reader",
        "side",
        "subprotocol",
        "writes",
    )

    def fail(self, code: int, reason: str = "") -> None:
        if code == LibraryCloseCode.MESSAGE_TOO_BIG:
            code, reason = CloseCode.TOO_LARGE_OR_TOO_MANY, "message too large"
        super().fail(code, reason)


class PresenceWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol plus the ``presence.raw`` extension.

    Every attribute uvicorn's class and this one set is a slot, so a connection has no
    instance ``__dict__`` (with 40 attributes CPython gives up sharing the keys: 1.5 KB
    each; tests/test_transport_memory.py checks none is left over).
    """

    __slots__ = (  # uvicorn's attributes, and ours: opened_at, slot, status
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "logger",
        "loop",
        "opened_at",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "slot",
        "status",
        "tasks",
        "transport",
        "writable",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = quiet_log  # uvicorn's lines name the client and the query string
        # uvicorn's own connection, replaced below: it and its parser hold each other
        self.conn.parser = None  # type: ignore[assignment]
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
        if scope is not None and "extensions" in scope:
            scope["extensions"].pop(EXTENSION, None)
        # websockets' parser generator and its connection hold each other, and the generator
        # never finishes (it waits for an EOF nobody feeds): end it, nothing is parsed now.
        self.conn.parser.close()
        release_transport(self.transport)

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
                # the frame parser itself: ServerProtocol.parse only wraps it for the handshake
                conn.parser = Protocol.parse(conn)
                next(conn.parser)
            # The app read the scope before accepting (the session takes the raw extension
            # first); an open connection keeps only the path, for its access-log line, and
            # not the addresses (uvicorn names them only in trace logs, which we never emit).
            scope = getattr(self, "scope", None)
            if scope is not None:
                path = scope.get("path", "-")
                scope.clear()
                scope["path"] = path
            self.client = self.server = None

    async def receive(self) -> Any:
        """uvicorn's, awaiting the inbox's future directly: an idle connection waits with
        one coroutine frame less (``Inbox.get`` would be a second)."""
        queue = self.queue
        while queue.empty():
            await queue.arrival()  # type: ignore[attr-defined]
        message = queue.get_nowait()
        if self.read_paused and queue.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def write(self, data: bytes) -> bool:
        """Write already-framed bytes; False once the connection is closing."""
        if self.close_sent or self.disconnected or not self.handshake_complete:
            return False
        transport = self.transport
        if transport.is_closing():  # closed by uvicorn (shutdown, the peer's close):
            return False  # nothing may follow the close frame
        transport.write(data)
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
