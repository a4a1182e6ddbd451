"""One outbound message: its type, id and body, the same on every backend and attempt."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import msgspec

ONLINE, OFFLINE, UPDATED = "user.online", "user.offline", "user.updated"
LETTERS = {ONLINE: "n", OFFLINE: "f", UPDATED: "u"}  # apply.lua's names of the types


def kind_of(was_online: bool, online: bool) -> str:
    """The type of a published change: a status change is online/offline, else updated."""
    if was_online == online:
        return UPDATED
    return ONLINE if online else OFFLINE


class Message(msgspec.Struct, frozen=True):
    """A queued change: ``state`` is the published JSON exactly as watchers got it."""

    app: str
    kind: str
    state: bytes
    at_ms: int  # when it was published (the gateway's clock)
    ref: str = ""  # the queue's handle (a stream entry id on Redis)

    @property
    def user(self) -> str:
        return _head.decode(self.state).user

    @property
    def v(self) -> int:
        return _head.decode(self.state).v

    def webhook_id(self) -> str:
        """``msg_`` + a hash of app, user and v: one per change, stable across retries."""
        head = _head.decode(self.state)
        digest = hashlib.sha256(f"{self.app}\0{head.user}\0{head.v}".encode()).hexdigest()
        return "msg_" + digest[:32]

    def body(self) -> bytes:
        """``{"type", "timestamp" (RFC 3339), "data": <state>}``."""
        stamp = datetime.fromtimestamp(self.at_ms / 1000, UTC).isoformat(timespec="milliseconds")
        return _body.encode(_Body(self.kind, stamp.replace("+00:00", "Z"), msgspec.Raw(self.state)))


class _Head(msgspec.Struct):
    user: str
    v: int = 0


class _Body(msgspec.Struct, array_like=False):
    type: str
    timestamp: str
    data: msgspec.Raw


_head = msgspec.json.Decoder(_Head)
_body = msgspec.json.Encoder()
