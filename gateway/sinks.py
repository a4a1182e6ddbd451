"""Where a session's frames go: the ``Sink`` protocol and the WebSocket sinks.

``RawSink`` writes straight to the socket through ``gateway.transport``'s raw extension;
``AsgiSink`` is the fallback for other ASGI servers. (The SSE stream has its own,
``gateway.sse.EventSink``.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

from starlette.types import Send

from gateway.protocol import frame_payload


class Sink(Protocol):
    """Where a session's frames go."""

    def write(self, frames: list[bytes]) -> None: ...

    def send(self, frame: bytes) -> None:
        """``write([frame])``, without the list: the fan-out's common case."""
        ...

    def buffered(self) -> int: ...

    def close(self, code: int, reason: str) -> None: ...


class RawSink:
    """Frames written straight to the socket (``PresenceWebSocketProtocol``)."""

    __slots__ = ("raw", "transport")

    def __init__(self, raw: object) -> None:
        self.raw = raw
        self.transport = raw.transport  # type: ignore[attr-defined]  # buffered(), once per flush

    def write(self, frames: list[bytes]) -> None:
        self.raw.write(frames[0] if len(frames) == 1 else b"".join(frames))  # type: ignore[attr-defined]

    def send(self, frame: bytes) -> None:
        self.raw.write(frame)  # type: ignore[attr-defined]

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()  # type: ignore[no-any-return]

    def close(self, code: int, reason: str) -> None:
        self.raw.close_now(code, reason)  # type: ignore[attr-defined]


class AsgiSink:
    """Fallback for ASGI servers without the raw extension: a writer task per connection."""

    def __init__(self, send: Send) -> None:
        self.asgi_send = send
        self.queue: deque[bytes] = deque()
        self.size = 0
        self.wake = asyncio.Event()
        self.closing: tuple[int, str] | None = None
        self.task = asyncio.create_task(self._writer())

    def write(self, frames: list[bytes]) -> None:
        for frame in frames:
            payload = frame_payload(frame)
            self.queue.append(payload)
            self.size += len(payload)
        self.wake.set()

    def send(self, frame: bytes) -> None:
        self.write([frame])

    def buffered(self) -> int:
        return self.size

    def close(self, code: int, reason: str) -> None:
        self.closing = (code, reason)
        self.queue.clear()
        self.wake.set()

    async def _writer(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue and self.closing is None:
                    payload = self.queue.popleft()
                    await self.asgi_send({"type": "websocket.send", "text": payload.decode()})
                    self.size -= len(payload)
                if self.closing is not None:
                    code, reason = self.closing
                    await self.asgi_send(
                        {"type": "websocket.close", "code": code, "reason": reason}
                    )
                    return

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
