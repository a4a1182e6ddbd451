"""Client dialects: how a watcher talks to a server under test, one session per connection.

``gateway`` is SPEC section 5: ``hello`` with a JWT -> ``welcome`` -> ``watch`` -> ``snapshot``,
then ``presence`` frames. A peer's dialect (socket.io rooms, a bare pub/sub ceiling) is another
class with the same four methods, registered in ``DIALECTS``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import msgspec

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


class SessionFactory(Protocol):
    def __call__(self, conn_no: int, users: list[int], rec: Recorder) -> WatcherSession: ...


DIALECTS: dict[str, SessionFactory] = {"gateway": GatewaySession}
