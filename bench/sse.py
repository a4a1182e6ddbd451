"""SSE watchers (SPEC section 10): one streaming GET per connection instead of a WebSocket.

``SseConn`` is the ``asyncio.Protocol`` (HTTP/1.1 request, response head, chunked body, events
split on blank lines); ``SseSession`` the dialect ``sse``: the watch set and token are in the
request, the snapshot event makes it ready, every ``presence`` event is recorded like the
WebSocket dialect's frames. The server pings (``: ping``); the client sends nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

import msgspec

from bench.procs import LOOPBACK
from bench.target import APP_ID, CLIENT_SECRET
from bench.ws import CLOCK, CLOSE_ABNORMAL
from gateway import tokens

if TYPE_CHECKING:
    from bench.dialects import Recorder

_PRESENCE = b"event: presence\ndata: "
_SNAPSHOT = b"event: snapshot\ndata: "
_RESYNC = b"event: resync\ndata: "


class _State(msgspec.Struct):
    user: str
    since: int | None = None
    v: int = 0


class _States(msgspec.Struct):
    presence: list[_State] = []


_decode_state = msgspec.json.Decoder(_State).decode
_decode_states = msgspec.json.Decoder(_States).decode


class SseConn(asyncio.Protocol):
    """One stream: ``GET path?user=…`` with a Bearer token; events go to ``session``."""

    __slots__ = (
        "buf",
        "chunk_left",
        "close_code",
        "open",
        "path",
        "port",
        "session",
        "text",
        "transport",
    )

    def __init__(self, port: int, path: str, session: Any) -> None:
        self.port = port
        self.path = path
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()  # raw bytes not parsed yet
        self.text = bytearray()  # the body (chunk framing removed) not split into events yet
        self.chunk_left = 0  # bytes of the current chunk still to come (+2 for its CRLF)
        self.open = False
        self.close_code = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = cast(asyncio.Transport, transport)
        self.session.stage = "response"
        query = "&".join(f"user=u{u}" for u in self.session.users)
        tr.write(
            b"GET %s?%s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
            b"Accept: text/event-stream\r\nOrigin: http://%s:%d\r\n\r\n"
            % (
                self.path.encode(),
                query.encode(),
                LOOPBACK.encode(),
                self.port,
                self.session.token.encode(),
                LOOPBACK.encode(),
                self.port,
            )
        )

    def send_text(self, payload: bytes) -> None:
        """Nothing goes from client to server on a stream."""

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        CLOCK.rx_ns = time.monotonic_ns()
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
                self.close_code = int(head[9:12]) if head[9:12].isdigit() else CLOSE_ABNORMAL
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            self.session.on_open(self)
        text = self.text
        while buf:
            if self.chunk_left == 0:
                line = buf.find(b"\r\n")
                if line < 0:
                    break
                size = int(buf[:line], 16)
                del buf[: line + 2]
                if size == 0:  # the last chunk: the server ended the stream
                    self.close_code = 1000
                    assert self.transport is not None
                    self.transport.close()
                    return
                self.chunk_left = size + 2
            take = min(self.chunk_left, len(buf))
            text += buf[:take]
            del buf[:take]
            self.chunk_left -= take
            if self.chunk_left == 0:
                del text[-2:]  # the chunk's CRLF
        start = 0
        while (end := text.find(b"\n\n", start)) >= 0:
            self.session.on_event(bytes(text[start:end]))
            start = end + 2
        if start:
            del text[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.session.on_close(self.close_code or CLOSE_ABNORMAL)


class SseSession:
    """The ``sse`` dialect: a stream per connection, ready at its snapshot."""

    __slots__ = (
        "closed_code",
        "lastv",
        "maxk",
        "ready_ns",
        "rec",
        "stage",
        "token",
        "users",
        "waiter",
        "ws",
    )

    def __init__(self, conn_no: int, users: list[int], rec: Recorder) -> None:
        self.token = tokens.issue(CLIENT_SECRET, APP_ID, f"w{conn_no}", ttl_s=6 * 3600)
        self.users = users
        self.rec = rec
        self.maxk: dict[int, int] = {}
        self.lastv: dict[int, int] = {}
        self.ready_ns = 0
        self.closed_code = 0
        self.stage = "tcp"
        self.ws: Any = None  # the SseConn once its response began
        self.waiter: asyncio.Future[None] | None = None

    def on_open(self, ws: Any) -> None:
        self.ws = ws
        self.stage = "snapshot"

    def on_text(self, payload: bytes) -> None:
        raise AssertionError("a stream has no frames")

    def on_event(self, block: bytes) -> None:
        if block.startswith(_PRESENCE):
            st = _decode_state(block[len(_PRESENCE) :])
            self.rec.state(self, int(st.user[1:]), st.since, st.v)
        elif block.startswith(_SNAPSHOT):
            for st in _decode_states(block[len(_SNAPSHOT) :]).presence:
                u = int(st.user[1:])
                self.lastv[u] = max(st.v, self.lastv.get(u, 0))
            self.stage = "ready"
            self.rec.ready(self)
        elif block.startswith(_RESYNC):
            for st in _decode_states(block[len(_RESYNC) :]).presence:
                self.rec.resync(self, int(st.user[1:]), st.since, st.v)
        elif not block.startswith((b":", b"retry:")):
            self.rec.error(self, f"unexpected {block[:40]!r}")

    def on_close(self, code: int) -> None:
        self.closed_code = code
        self.ws = None
        self.rec.closed(self, code)

    def ping(self) -> None:
        """No client ping: the server sends ``: ping`` every heartbeat_ms."""
