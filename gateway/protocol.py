"""The WebSocket wire protocol (SPEC section 5): tagged messages and pre-built frames.

Client messages decode strictly (our own clients send them); server messages are encoded once
and framed once, so a state published to a thousand watchers is turned into bytes once.
"""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec

from gateway.errors import BadMessage as BadMessage
from gateway.model import UserState
from gateway.types import UserId

MAX_MESSAGE = 64 * 1024
RequestId = int | str | None
UserList = Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=100_000)]


class _Client(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    pass


class Hello(_Client, tag="hello", frozen=True):
    token: str


class Watch(_Client, tag="watch", frozen=True):
    users: UserList
    id: RequestId = None


class Unwatch(_Client, tag="unwatch", frozen=True):
    users: UserList
    id: RequestId = None


class Ping(_Client, tag="ping", frozen=True):
    id: RequestId = None


ClientMessage = Hello | Watch | Unwatch | Ping
KNOWN_TYPES = frozenset({"hello", "watch", "unwatch", "ping"})


class _Envelope(msgspec.Struct):
    type: str | None = None
    id: RequestId = None


_decoder = msgspec.json.Decoder(ClientMessage)
_envelope = msgspec.json.Decoder(_Envelope)


def decode(data: str | bytes) -> ClientMessage:
    """Decode one client frame; raise ``BadMessage`` (bad_request or unknown_type)."""
    try:
        message: ClientMessage = _decoder.decode(data)
        return message
    except msgspec.DecodeError as exc:
        try:
            env = _envelope.decode(data)
        except msgspec.DecodeError:
            raise BadMessage("bad_request", "not a JSON object with a string type") from None
        if env.type is None:
            raise BadMessage("bad_request", "missing type", env.id) from None
        if env.type not in KNOWN_TYPES:
            raise BadMessage(
                "unknown_type", f"unknown type {str(env.type)[:32]!r}", env.id
            ) from None
        raise BadMessage("bad_request", str(exc)[:200], env.id) from None


class _Server(msgspec.Struct, tag_field="type"):
    pass


class Welcome(_Server, tag="welcome"):
    user: str
    max_watch: int
    heartbeat_ms: int


class Snapshot(_Server, tag="snapshot"):
    id: RequestId
    presence: list[UserState | msgspec.Raw]  # Raw: a state's JSON as published


class Resync(_Server, tag="resync"):
    presence: list[UserState]


class Ok(_Server, tag="ok"):
    id: RequestId


class Pong(_Server, tag="pong"):
    id: RequestId


class Error(_Server, tag="error"):
    id: RequestId
    code: str
    message: str


ServerMessage = Welcome | Snapshot | Resync | Ok | Pong | Error
_encoder = msgspec.json.Encoder()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server text frame carrying ``payload`` (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame built by ``text_frame``."""
    n = frame[1]
    return frame[2 + (2 if n == 126 else 8 if n == 127 else 0) :]


def encode(message: ServerMessage) -> bytes:
    """A server message as a ready-to-write frame."""
    return text_frame(_encoder.encode(message))


def presence_frame(state_json: bytes) -> bytes:
    """A ``presence`` frame from a published state's JSON, without decoding it."""
    return text_frame(b'{"type":"presence",' + state_json[1:])
