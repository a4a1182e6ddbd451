"""A minimal asyncio WebSocket client (RFC 6455) for tens of thousands of connections.

Handshake, masked text frames out, unmasked frames in (text, continuation, ping -> pong,
close); no extensions (permessage-deflate is not offered, so the server sends plain frames).
It is an ``asyncio.Protocol`` with callbacks into a per-connection *session* (the dialect), so
an idle connection costs one transport, one small object and its session; see README for why
not the ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from typing import Protocol, cast

from bench.procs import LOOPBACK

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_ABNORMAL = 1006


class Clock:
    """When the bytes being parsed were handed to Python (CLOCK_MONOTONIC ns).

    Receive times are taken once per read, before any parsing, so a read carrying many
    frames does not charge the later ones for the parsing of the earlier ones.
    """

    __slots__ = ("rx_ns",)

    def __init__(self) -> None:
        self.rx_ns = 0


CLOCK = Clock()


class Session(Protocol):
    """What a dialect implements for one connection."""

    stage: str

    def on_open(self, ws: WsConn) -> None: ...

    def on_text(self, payload: bytes) -> None: ...

    def on_close(self, code: int) -> None: ...


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (one big-int XOR: fast in CPython)."""
    n = len(payload)
    if not n:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + key + mask(payload, key)


class WsConn(asyncio.Protocol):
    """One client connection; frames go to ``session``."""

    __slots__ = (
        "buf",
        "close_code",
        "frags",
        "key",
        "open",
        "path",
        "port",
        "session",
        "transport",
    )

    def __init__(self, port: int, path: str, session: Session) -> None:
        self.port = port
        self.path = path
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.close_code = 0
        self.key = b""
        self.frags: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.session.stage = "handshake"
        self.key = base64.b64encode(os.urandom(16))
        tr.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: http://%s:%d\r\n\r\n"
            % (
                self.path.encode(),
                LOOPBACK.encode(),
                self.port,
                self.key,
                LOOPBACK.encode(),
                self.port,
            )
        )

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(0x1, payload))

    def close(self, code: int = 1000) -> None:
        """Start a clean close (the server's close frame ends it)."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.open:
            self.transport.write(frame(0x8, code.to_bytes(2, "big")))
        else:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _handshake(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end]).lower()
        del buf[: end + 4]
        accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest()).lower()
        if not head.startswith(b"http/1.1 101") or accept not in head:
            self.close_code = int(head[9:12]) if head[9:12].isdigit() else CLOSE_ABNORMAL
            assert self.transport is not None
            self.transport.close()
            return False
        self.open = True
        self.session.on_open(self)
        return True

    def data_received(self, data: bytes) -> None:
        CLOCK.rx_ns = time.monotonic_ns()
        if not self.open:
            self.buf += data
            if not self._handshake():
                return
            data = bytes(self.buf)
            self.buf.clear()
        elif self.buf:
            self.buf += data
            data = bytes(self.buf)
            self.buf.clear()
        # ``data`` is immutable here: slicing it is the only copy of a payload.
        pos = 0
        size = len(data)
        while size - pos >= 2:
            b0 = data[pos]
            n = data[pos + 1]
            if n & 0x80:
                self._fail(1002)  # a server must not mask
                return
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + n
            if end > size:
                break
            payload = data[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1 and b0 & 0x80:
                self.session.on_text(payload)
            elif opcode == 0x1 or opcode == 0x0:
                self._fragment(payload, bool(b0 & 0x80))
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(frame(0xA, payload))
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.transport is not None:
                    self.transport.write(frame(0x8, payload[:2]))
                    self.transport.close()
                return
        if pos < size:
            self.buf += data[pos:]

    def _fragment(self, payload: bytes, final: bool) -> None:
        if self.frags is None:
            self.frags = []
        self.frags.append(payload)
        if final:
            whole = b"".join(self.frags)
            self.frags = None
            self.session.on_text(whole)

    def _fail(self, code: int) -> None:
        self.close_code = code
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.session.on_close(self.close_code or CLOSE_ABNORMAL)
