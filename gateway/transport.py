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
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.protocol import MAX_MESSAGE

EXTENSION = "presence.raw"
SEND_BUFFER = 128 * 1024  # the kernel doubles it


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


class _Connection(ServerProtocol):
    """websockets' server state machine, closing with 4009 on an over-size message."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == 1009:
            code, reason = 4009, "message too large"
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
        self.conn = _Connection(extensions=[], max_size=MAX_MESSAGE, logger=self.conn.logger)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linux lets a loopback send buffer grow to MiBs: a stalled reader would hide
            # that much before the session saw it fall behind (and pin kernel memory)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The scope holds us (the raw extension) and we hold the scope: with long-lived
        # objects frozen out of the collector's reach (gateway.heap), a closed connection
        # must be freed by reference counting alone (tests/test_heap.py).
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(EXTENSION, None)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    async def send(self, message: Any) -> None:
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
