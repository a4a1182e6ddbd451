"""Server-Sent Events (SPEC section 10): a stream is a ``Session`` with a fixed watch set.

``GET /v1/apps/{app}/sse?user=bob&user=carol`` with the client token as ``Authorization:
Bearer`` or ``?token=``. Everything is checked before the stream begins (token, origin,
watch policy, max_watch, the per-user cap, the snapshot read), so a refusal is a plain 4xx
(503 when the store cannot be read) with ``{"error": code, "message": ...}``.

The stream then runs through the hub and a session's ``Outbox`` unchanged: the
same gap-free snapshot, ``v`` order, latest unsent state per user, slow-client bound and
per-user cap. The outbox holds WebSocket frames (the hub frames each published state once for
every watcher); ``EventSink`` turns each into its event as it writes it, by slicing, since
every server message starts ``{"type":"<name>",``. Bytes that are no frame (``retry``, the
ping comment) pass through. Events go out as chunks of the HTTP response, written
synchronously through ``gateway.transport``'s ``presence.stream`` extension.

A stream ends with its connection: the client went away, its token expired, the node shuts
down (the client reconnects after ``retry``), or it stayed behind (cut, like 4008).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from gateway import tokens
from gateway.api import MAX_QUERY_USERS, USER_ID, USER_ID_MAX, BadQuery, query_values
from gateway.config import AppConfig
from gateway.edge import redact_path
from gateway.errors import CloseCode, StoreUnavailable
from gateway.hub import Hub
from gateway.protocol import Snapshot, encode, frame_payload
from gateway.session import Session
from gateway.transport import STREAM

access_log = logging.getLogger("gateway.access")

PING = b": ping\n\n"
ALLOWED_HEADERS = "authorization, cache-control, last-event-id"  # for a preflight
_TYPE = b'{"type":"'
_SNAPSHOT_ID = b'"id":null,'
_FRAME = 0x81  # the first byte of every frame text_frame builds


class StreamError(msgspec.Struct):
    """A refused stream: a SPEC error code and a short reason."""

    error: str
    message: str


_encoder = msgspec.json.Encoder()


def event(payload: bytes) -> bytes:
    """A server message's JSON as an event: ``{"type":"x",...}`` → ``event: x / data: {...}``.

    A snapshot's ``id`` (always null here) is dropped: ``data`` is ``{"presence":[...]}``.
    """
    name, _, rest = payload[len(_TYPE) :].partition(b'",')
    if name == b"snapshot":
        rest = rest.removeprefix(_SNAPSHOT_ID)
    return b"event: %b\ndata: {%b\n\n" % (name, rest)


class EventSink:
    """A session's frames as events, written as chunks of the streamed response."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw  # gateway.transport.EdgeHTTPProtocol

    def write(self, frames: list[bytes]) -> None:
        data = b"".join(event(frame_payload(f)) if f[0] == _FRAME else f for f in frames)
        self.raw.stream_write(data)

    def send(self, frame: bytes) -> None:
        self.write([frame])

    def buffered(self) -> int:
        return self.raw.buffered()  # type: ignore[no-any-return]

    def close(self, code: int, reason: str) -> None:
        self.raw.stream_end(cut=code == CloseCode.TOO_SLOW)  # a slow one would never read it


class EventStream(Session):
    """A session whose client only listens: no messages in, a ping comment out."""

    __slots__ = ("_ping", "heartbeat_s")

    def __init__(self, receive: Receive, app: AppConfig, hub: Hub) -> None:
        super().__init__(receive, app, hub)
        self._ping: asyncio.TimerHandle | None = None
        self.heartbeat_s = self.config.heartbeat_ms / 1000

    def idle_for(self, now: float) -> float:
        """Never idle for the hub's sweep: the client sends nothing (pings find it gone)."""
        return 0.0

    def begin(self, raw: Any, presence: list[Any]) -> None:
        """Start writing: ``retry``, the snapshot, then what was published since the read."""
        self.sink = EventSink(raw)
        # anything queued before now is a resync of none of these users (all were pending)
        outbox = self.outbox
        retry = b"retry: %d\n\n" % self.config.sse_retry_ms
        outbox.control = [retry, encode(Snapshot(id=None, presence=presence))]
        outbox.control_bytes = sum(map(len, outbox.control))
        self.hub.mark_dirty(self)
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        loop = asyncio.get_running_loop()
        self._ping = loop.call_later(self.heartbeat_s, self._send_ping)

    def _send_ping(self) -> None:
        if self.closed:
            return
        if self.queue_control(PING):  # counted like any reply: bounded while behind
            self.hub.mark_dirty(self)
            self._schedule_ping()

    def finish(self) -> None:
        super().finish()
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None


class Endpoint:
    """The ASGI app of ``/v1/apps/{app}/sse`` (GET and its CORS preflight).

    ``gateway.app.WebSocketFront`` calls it past Starlette's middleware and router (an open
    stream keeps its call's frames for its lifetime), so it writes its own access line: the
    path, never the query string (the token may be in it).
    """

    def __init__(self, apps: dict[str, AppConfig], hub: Hub) -> None:
        self.apps = apps
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status = await self._answer(scope, receive, send)
        finally:
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                redact_path(scope["path"]),
                status,
                (time.perf_counter() - started) * 1000,
            )

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer the request; its status."""
        app = self.apps.get(scope["path_params"]["app"])
        if app is None:
            return await _reply(send, 404, "not_found", "unknown app")
        origin: str | None = None
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"origin" and origin is None:
                origin = value.decode("latin-1")
            elif name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
        cors: list[tuple[bytes, bytes]] = [(b"vary", b"origin")]
        if origin is not None:
            if not ("*" in app.allowed_origins or origin in app.allowed_origins):
                return await _reply(send, 403, "forbidden", "origin not allowed", cors)
            cors.append((b"access-control-allow-origin", origin.encode("latin-1")))
        if scope["method"] == "OPTIONS":
            return await _preflight(send, cors, self.hub.config.sse_preflight_max_age_s)
        if scope["method"] != "GET":
            return await _reply(send, 405, "bad_request", "GET or OPTIONS only", cors)
        try:
            stream, presence = await self._open(scope, receive, app, authorization)
        except _Refusal as refusal:
            return await _reply(send, refusal.status, refusal.code, refusal.message, cors)
        try:
            if presence is not None:
                await self._run(scope, receive, send, stream, presence, cors)
        finally:
            stream.finish()
        return 200

    async def _open(
        self, scope: Scope, receive: Receive, app: AppConfig, authorization: str | None
    ) -> tuple[EventStream, list[Any] | None]:
        """Check the request and read the snapshot: an admitted stream (its ``finish`` is
        the caller's) and its snapshot (None: closed meanwhile); _Refusal otherwise."""
        given, token_values = _query(scope)
        claims = _verify(app, authorization, token_values)
        users = _users(app, given)
        if scope.get("extensions", {}).get(STREAM) is None:
            raise _Refusal(503, "unavailable", "this server cannot stream events")
        stream = EventStream(receive, app, self.hub)
        stream.claims = claims
        refusal = stream.refusal(users)
        if refusal is not None:
            raise _Refusal(403 if refusal[0] == "forbidden" else 400, *refusal)
        if not stream.admit(claims):
            raise _Refusal(429, "limit", "too many connections for this user")
        self.hub.attach(stream)  # a resync meanwhile holds what it read (pending)
        try:
            return stream, await stream.add(users)
        except StoreUnavailable:
            stream.finish()
            raise _Refusal(503, "unavailable", "store unavailable, retry") from None
        except BaseException:
            stream.finish()
            raise

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        stream: EventStream,
        presence: list[Any],
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        """Stream until the connection ends."""
        await send({"type": "http.response.start", "status": 200, "headers": _HEAD + cors})
        raw = scope["extensions"][STREAM]
        raw.stream_open(
            lambda: stream.close(CloseCode.SERVICE_RESTART, "the node is shutting down")
        )
        stream.begin(raw, presence)
        del presence, cors, raw  # an idle stream keeps none of its request
        scope["headers"].clear()
        while (await receive())["type"] != "http.disconnect":
            pass


def _query(scope: Scope) -> tuple[list[str], list[str]]:
    """The ``user`` and ``token`` values of the query string; 400 when it is malformed."""
    request = Request(scope)
    try:
        return query_values(request, "user"), query_values(request, "token")
    except BadQuery as exc:
        raise _Refusal(400, "bad_request", str(exc)) from None


_HEAD = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: pass every event on at once
]


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _verify(app: AppConfig, authorization: str | None, token_values: list[str]) -> tokens.Claims:
    """The claims of the request's token (header first, else ``?token=``); 401 otherwise."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise _Refusal(401, "unauthorized", "Authorization must be Bearer <token>")
        token = token.strip()
    elif len(token_values) == 1:
        token = token_values[0]
    else:
        raise _Refusal(401, "unauthorized", "give one token: Authorization: Bearer or ?token=")
    try:
        return tokens.verify(token, app.client_secret, app.id)
    except tokens.TokenError as exc:
        raise _Refusal(401, "unauthorized", str(exc)) from None


def _users(app: AppConfig, given: list[str]) -> list[str]:
    """The distinct users asked for, checked; 400 otherwise."""
    if not given:
        raise _Refusal(400, "bad_request", "give at least one user=")
    if len(given) > MAX_QUERY_USERS:
        raise _Refusal(400, "bad_request", f"at most {MAX_QUERY_USERS} users per stream")
    if not all(USER_ID.match(u) for u in given):
        raise _Refusal(400, "bad_request", f"user ids are 1 to {USER_ID_MAX} characters")
    users = list(dict.fromkeys(given))
    if len(users) > app.max_watch:
        raise _Refusal(400, "limit", f"at most {app.max_watch} watched users per connection")
    return users


async def _reply(
    send: Send, status: int, code: str, message: str, cors: list[tuple[bytes, bytes]] | None = None
) -> int:
    body = _encoder.encode(StreamError(error=code, message=message))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
        *(cors or ()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if status == 429:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]], max_age_s: int) -> int:
    headers = [
        *cors,
        (b"access-control-allow-methods", b"GET, OPTIONS"),
        (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
        (b"access-control-max-age", b"%d" % max_age_s),
        (b"allow", b"GET, OPTIONS"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
    return 204
