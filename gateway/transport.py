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
from websockets.server import ServerProtocol

from gateway.protocol import MAX_MESSAGE

EXTENSION = "presence.raw"
SEND_BUFFER = 128 * 1024  # the kernel doubles it


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linux lets a loopback send buffer grow to MiBs: a stalled reader would hide
            # that much before the session saw it fall behind (and pin kernel memory)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

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
