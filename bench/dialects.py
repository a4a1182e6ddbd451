"""Client dialects: how a watcher talks to a server under test, one session per connection.

- ``gateway``: SPEC section 5: ``hello`` with a JWT -> ``welcome`` -> ``watch`` ->
  ``snapshot``, then ``presence`` frames; an application ping per ``heartbeat_ms``.
- ``ceiling``: ``{"watch": [...]}`` -> ``{"ok": n}``, then one bare state per frame.
- ``sse``: SPEC section 10, a Server-Sent Events stream per connection (``bench.sse``).
- ``socketio``: Engine.IO v4 over WebSocket: the server's open packet ``0{...}`` -> ``40``
  (connect) -> ``40{...}`` -> ``420["watch",[...]]`` (with ack id 0) -> ``430[n]``; then
  ``42["presence",{...}]`` events; the server pings (``2``), the client answers ``3``.

A session is ready (counted in the setup rate) when the server confirmed the watch set.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import msgspec

from bench.sse import SseConn, SseSession
from bench.target import APP_ID, CLIENT_SECRET
from gateway import tokens

if TYPE_CHECKING:
    from bench.ws import WsConn


class Recorder(Protocol):
    """Where sessions report (``bench.watchers.Recorder``)."""

    heartbeat_ms: int

    def state(self, sess: WatcherSession, user: int, since: int | None, v: int) -> None: ...

    def resync(self, sess: WatcherSession, user: int, since: int | None, v: int) -> None: ...

    def ready(self, sess: WatcherSession) -> None: ...

    def error(self, sess: WatcherSession, code: str) -> None: ...

    def closed(self, sess: WatcherSession, code: int) -> None: ...


class WatcherSession(Protocol):
    """One connection's session as the recorder sees it."""

    users: list[int]
    maxk: dict[int, int]  # per watched user: the highest event number received
    lastv: dict[int, int]  # per watched user: the highest v received
    ready_ns: int
    closed_code: int
    stage: str  # what setup step it waits for: tcp, handshake, welcome, snapshot, ready
    ws: WsConn | None
    waiter: asyncio.Future[None] | None

    def ping(self) -> None: ...

    def on_open(self, ws: WsConn) -> None: ...

    def on_text(self, payload: bytes) -> None: ...

    def on_close(self, code: int) -> None: ...


class _State(msgspec.Struct):
    user: str
    since: int | None = None
    v: int = 0


class _Msg(msgspec.Struct):
    type: str
    user: str = ""
    since: int | None = None
    v: int = 0
    presence: list[_State] = []
    heartbeat_ms: int = 0
    code: str = ""


_decode = msgspec.json.Decoder(_Msg).decode
_encode = msgspec.json.Encoder().encode


def user_index(name: str) -> int:
    """``u123`` -> 123 (bench users are named by ``bench.events.user_name``)."""
    return int(name[1:])


class GatewaySession:
    """SPEC section 5 client: hello, watch, then record every presence frame."""

    __slots__ = (
        "closed_code",
        "hello",
        "lastv",
        "maxk",
        "next_id",
        "ready_ns",
        "rec",
        "stage",
        "users",
        "waiter",
        "ws",
    )

    def __init__(self, conn_no: int, users: list[int], rec: Recorder) -> None:
        token = tokens.issue(CLIENT_SECRET, APP_ID, f"w{conn_no}", ttl_s=6 * 3600)
        self.hello: bytes | None = _encode({"type": "hello", "token": token})
        self.users = users
        self.rec = rec
        self.maxk: dict[int, int] = {}
        self.lastv: dict[int, int] = {}
        self.ready_ns = 0
        self.closed_code = 0
        self.stage = "tcp"
        self.next_id = 1
        self.ws: WsConn | None = None
        self.waiter: asyncio.Future[None] | None = None

    def on_open(self, ws: WsConn) -> None:
        self.ws = ws
        self.stage = "welcome"
        assert self.hello is not None
        ws.send_text(self.hello)
        self.hello = None

    def on_text(self, payload: bytes) -> None:
        msg = _decode(payload)
        kind = msg.type
        if kind == "presence":
            self.rec.state(self, int(msg.user[1:]), msg.since, msg.v)  # user_index, inlined
        elif kind == "pong":
            pass
        elif kind == "welcome":
            self.rec.heartbeat_ms = msg.heartbeat_ms
            self.stage = "snapshot"
            users = [f"u{u}" for u in self.users]
            self._send({"type": "watch", "id": self._id(), "users": users})
        elif kind == "snapshot":
            for st in msg.presence:
                u = user_index(st.user)
                self.lastv[u] = max(st.v, self.lastv.get(u, 0))
            self.stage = "ready"
            self.rec.ready(self)
        elif kind == "resync":
            for st in msg.presence:
                self.rec.resync(self, user_index(st.user), st.since, st.v)
        elif kind == "error":
            self.rec.error(self, msg.code or "?")
        else:
            self.rec.error(self, f"unexpected {kind}")

    def on_close(self, code: int) -> None:
        self.closed_code = code
        self.ws = None
        self.rec.closed(self, code)

    def ping(self) -> None:
        self._send({"type": "ping", "id": self._id()})

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _send(self, msg: dict[str, object]) -> None:
        if self.ws is not None:
            self.ws.send_text(_encode(msg))


class _Bare(msgspec.Struct):
    user: str
    since: int | None = None
    v: int = 0


_decode_bare = msgspec.json.Decoder(_Bare).decode


class _BaseSession:
    """What the peers' sessions share: a watch set, the recorder, the connection."""

    __slots__ = (
        "closed_code",
        "lastv",
        "maxk",
        "ready_ns",
        "rec",
        "stage",
        "users",
        "waiter",
        "ws",
    )

    def __init__(self, conn_no: int, users: list[int], rec: Recorder) -> None:
        self.users = users
        self.rec = rec
        self.maxk: dict[int, int] = {}
        self.lastv: dict[int, int] = {}
        self.ready_ns = 0
        self.closed_code = 0
        self.stage = "tcp"
        self.ws: WsConn | None = None
        self.waiter: asyncio.Future[None] | None = None

    def on_open(self, ws: WsConn) -> None:
        raise NotImplementedError

    def on_text(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_close(self, code: int) -> None:
        self.closed_code = code
        self.ws = None
        self.rec.closed(self, code)

    def ping(self) -> None:
        """No application ping: these servers ping at the protocol level."""


class CeilingSession(_BaseSession):
    """The ceiling's protocol: ``{"watch": [...]}`` -> ``{"ok": n}``, then bare states."""

    __slots__ = ()

    def on_open(self, ws: WsConn) -> None:
        self.ws = ws
        self.stage = "ok"
        ws.send_text(_encode({"watch": [f"u{u}" for u in self.users]}))

    def on_text(self, payload: bytes) -> None:
        if payload[:5] == b'{"ok"':
            self.stage = "ready"
            self.rec.ready(self)
            return
        st = _decode_bare(payload)
        self.rec.state(self, int(st.user[1:]), st.since, st.v)


_EVENT = b'42["presence",'


class SocketIoSession(_BaseSession):
    """Engine.IO v4 / Socket.IO v5 over a WebSocket (no polling, no binary, namespace /)."""

    __slots__ = ()

    def on_open(self, ws: WsConn) -> None:
        self.ws = ws
        self.stage = "engine.io open"

    def on_text(self, payload: bytes) -> None:
        if payload[:14] == _EVENT:
            st = _decode_bare(payload[14:-1])
            self.rec.state(self, int(st.user[1:]), st.since, st.v)
            return
        ws = self.ws
        head = payload[:2]
        if payload == b"2":
            if ws is not None:
                ws.send_text(b"3")
        elif payload[:1] == b"0":
            self.stage = "socket.io connect"
            if ws is not None:
                ws.send_text(b"40")
        elif head == b"40":
            self.stage = "watch ack"
            if ws is not None:
                users = [f"u{u}" for u in self.users]
                ws.send_text(b"420" + _encode(["watch", users]))
        elif head == b"43":
            self.stage = "ready"
            self.rec.ready(self)
        elif head == b"44" or head == b"41":
            self.rec.error(self, f"socket.io {payload[:80]!r}")
        else:
            self.rec.error(self, f"unexpected {payload[:40]!r}")


class SessionFactory(Protocol):
    def __call__(self, conn_no: int, users: list[int], rec: Recorder) -> WatcherSession: ...


DIALECTS: dict[str, SessionFactory] = {
    "gateway": GatewaySession,
    "sse": SseSession,  # its ws is an SseConn
    "ceiling": CeilingSession,
    "socketio": SocketIoSession,
}

# The connection protocol of a dialect, where it is not a WebSocket (bench.ws.WsConn).
CONNECTIONS: dict[str, type[SseConn]] = {"sse": SseConn}
