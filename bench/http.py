"""A minimal HTTP/1.1 keep-alive client for pre-built requests (asyncio Protocol, callbacks).

One request in flight per connection; the response is parsed just enough to get the status and
skip the body (``Content-Length``). Callbacks instead of awaits: a closed-loop driver writes the
next request from inside ``data_received``, with no task switch per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from bench.procs import LOOPBACK

# on_response(conn, status): status is the HTTP status, or 0 when the connection was lost.
ResponseHandler = Callable[["HttpConn", int], None]


class HttpConn(asyncio.Protocol):
    """One keep-alive connection."""

    __slots__ = ("buf", "busy", "closed", "k", "on_response", "sent_ns", "transport")

    def __init__(self, on_response: ResponseHandler) -> None:
        self.on_response = on_response
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.k = -1  # the event (or first event of the batch) in flight
        self.sent_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, request: bytes) -> None:
        assert self.transport is not None and not self.busy
        self.busy = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError("response without Content-Length")  # not from our servers
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop > 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                return
            status = int(head[9:12])
            del buf[:total]
            self.busy = False
            self.on_response(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            self.busy = False
            self.on_response(self, 0)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int, on_response: ResponseHandler) -> HttpConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: HttpConn(on_response), LOOPBACK, port)
    return conn


async def connect_many(port: int, count: int, on_response: ResponseHandler) -> list[HttpConn]:
    return list(await asyncio.gather(*(connect(port, on_response) for _ in range(count))))
