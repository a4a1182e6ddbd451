"""One WebSocket connection (SPEC section 5): hello, watch/unwatch; owns an ``Outbox``.

The outbox (``gateway.outbox``) holds control replies in order, then at most one unsent
``presence`` frame per user, the latest; the hub fans published states into it.

No gap between snapshot and live feed: a user being watched is first indexed in the hub and
subscribed (so every later publish reaches this session), *then* read from the store. States
that arrive in between are held and sent after the snapshot only when newer than it. A user
already watched is not read again: the snapshot carries the hub's newest state of it.

Abuse bounds, all per connection:

- Queue: while the socket holds more than high_water_bytes unsent the client is behind. Its
  next request waits until it catches up (so a client that does not read its replies cannot
  make the node queue more of them, or read the store for them), and control replies queue
  behind the socket up to high_water_bytes; past either bound (slow_close_after_s, or one
  more reply) it is closed with 4008. ``queued()`` is what it holds, presence aside (at
  most one coalesced frame per watched user).
- Messages: messages_per_s sustained, message_burst at once; past them 4009.
- Store reads: max(max_watch, store_read_burst) users at once, refilled over
  store_read_refill_s; a watch past the allowance waits for it, so unwatching and
  re-watching cannot read faster.
- Connections: at most ``max_connections_per_user`` per user and app on this node; the next
  one is refused after hello with 4009 (SPEC: too many).

The tunables are the ``[connections]`` table (``ConnectionsConfig``), as the hub has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Protocol

import msgspec
from starlette.types import Receive, Scope, Send

from gateway import tokens
from gateway.config import AppConfig
from gateway.errors import CloseCode, StoreUnavailable
from gateway.hub import Hub
from gateway.model import UserState
from gateway.outbox import Outbox
from gateway.protocol import (
    BadMessage,
    Error,
    Hello,
    Ok,
    Ping,
    Pong,
    Resync,
    ServerMessage,
    Snapshot,
    Unwatch,
    Watch,
    Welcome,
    decode,
    encode,
    frame_payload,
)
from gateway.transport import EXTENSION
from gateway.types import Key

log = logging.getLogger(__name__)

CATCH_UP_POLL = 0.02  # seconds between checks while a request waits for the client to read


class Sink(Protocol):
    """Where a session's frames go."""

    def write(self, frames: list[bytes]) -> None: ...

    def buffered(self) -> int: ...

    def close(self, code: int, reason: str) -> None: ...


class RawSink:
    """Frames written straight to the socket (``PresenceWebSocketProtocol``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: object) -> None:
        self.raw = raw

    def write(self, frames: list[bytes]) -> None:
        self.raw.write(frames[0] if len(frames) == 1 else b"".join(frames))  # type: ignore[attr-defined]

    def buffered(self) -> int:
        return self.raw.buffered()  # type: ignore[attr-defined, no-any-return]

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


class Session:
    """A client connection; its methods called by the hub never await."""

    __slots__ = (
        "_admitted",
        "_allowance",
        "_checked",
        "_expiry",
        "_read_at",
        "_reads",
        "app",
        "claims",
        "config",
        "hub",
        "outbox",
        "receive",
        "sink",
    )

    def __init__(self, receive: Receive, app: AppConfig, hub: Hub) -> None:
        self.receive = receive
        self.app = app
        self.hub = hub
        self.config = config = hub.config
        self.sink: Sink | None = None
        self.claims: tokens.Claims | None = None
        self.outbox = Outbox(config.high_water_bytes, config.slow_close_after_s)
        self._allowance = float(config.message_burst)
        self._checked = time.monotonic()
        self._expiry: asyncio.TimerHandle | None = None
        self._admitted = False  # counted in hub.connections
        self._reads = float(max(app.max_watch, config.store_read_burst))
        self._read_at = self._checked

    @property
    def closed(self) -> bool:
        """The connection is over (or closing): nothing more is queued or read."""
        return self.outbox.closed

    # connection lifecycle

    async def run(self, scope: Scope, send: Send) -> None:
        """Serve the connection (plain ASGI ``websocket`` scope) until it closes."""
        origin = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
        scope["headers"] = []  # an idle connection need not keep its handshake
        if (await self.receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        raw = scope.get("extensions", {}).get(EXTENSION)
        self.sink = sink = RawSink(raw) if raw is not None else AsgiSink(send)
        try:
            if origin is not None and not self.origin_allowed(origin):
                self.close(CloseCode.ORIGIN_NOT_ALLOWED, "origin not allowed")
                return
            if await self._authenticate():
                self.hub.attach(self)
                await self._serve()
        finally:
            self.finish()
            if isinstance(sink, AsgiSink):
                await sink.stop()

    def finish(self) -> None:
        """Leave the hub: uncount the connection, unwatch everything (once it is over)."""
        self.outbox.closed = True
        self.hub.detach(self)
        if self._admitted and self.claims is not None:
            self._admitted = False
            self.hub.release(self.app.id, self.claims.sub)
        self.hub.unwatch(self, self.app.id, list(self.outbox.watching))
        if self._expiry is not None:
            self._expiry.cancel()

    def origin_allowed(self, origin: str) -> bool:
        allowed = self.app.allowed_origins
        return "*" in allowed or origin in allowed

    async def _authenticate(self) -> bool:
        timeout = self.config.hello_timeout_s
        try:
            async with asyncio.timeout(timeout):
                text = await self._receive()
        except TimeoutError:
            self.close(CloseCode.UNAUTHORIZED, f"no hello within {timeout:g} s")
            return False
        if text is None:
            return False
        hello: object = None
        if isinstance(text, str):
            with contextlib.suppress(BadMessage):
                hello = decode(text)
        if not isinstance(hello, Hello):
            self.close(CloseCode.UNAUTHORIZED, "the first message must be hello")
            return False
        try:
            claims = tokens.verify(hello.token, self.app.client_secret, self.app.id)
        except tokens.TokenError as exc:
            self.close(CloseCode.UNAUTHORIZED, str(exc))
            return False
        if not self.admit(claims):
            self.close(CloseCode.TOO_LARGE_OR_TOO_MANY, "too many connections for this user")
            return False
        heartbeat_ms = self.config.heartbeat_ms
        self.send(Welcome(user=claims.sub, max_watch=self.app.max_watch, heartbeat_ms=heartbeat_ms))
        return True

    def admit(self, claims: tokens.Claims) -> bool:
        """Count the connection of a verified user (False, counted as refused, over the cap)
        and close it when its token expires."""
        self.claims = claims
        if not self.hub.admit(self.app.id, claims.sub, self.app.max_connections_per_user):
            return False
        self._admitted = True
        loop = asyncio.get_running_loop()
        left = max(0.0, claims.deadline() - time.time())
        self._expiry = loop.call_at(
            loop.time() + left, self.close, CloseCode.UNAUTHORIZED, "token expired"
        )
        return True

    async def _receive(self) -> str | bytes | None:
        """The next message (bytes for a binary one); None once the connection is gone."""
        if self.closed:
            return None
        message = await self.receive()
        if message["type"] == "websocket.disconnect":
            self.outbox.closed = True
            return None
        text = message.get("text")
        return str(text) if text is not None else bytes(message.get("bytes") or b"")

    async def _serve(self) -> None:
        # each frame is handled in its own call, so an idle connection keeps no old request
        while await self._handle(await self._next()):
            pass

    async def _next(self) -> str | bytes | None:
        """The next client frame, handed over once the client has caught up (see module)."""
        text = await self._receive()
        if (
            text is not None
            and self.queued() > self.config.high_water_bytes
            and not await self._catch_up()
        ):
            return None
        return text

    async def _catch_up(self) -> bool:
        """Wait until at most high_water_bytes is queued for the client; False once closed.

        The transport reads nothing more meanwhile, so the client's requests wait in the
        kernel's buffers, not in ours.
        """
        outbox = self.outbox
        while not self.closed:
            behind = outbox.behind(self.queued(), time.monotonic())
            if behind is None:
                self._close_slow()
                break
            if not behind:
                break  # caught up: a later fall behind starts a fresh count
            await asyncio.sleep(CATCH_UP_POLL)
        return not self.closed

    async def _handle(self, text: str | bytes | None) -> bool:
        """Handle one client frame; False when the connection is done."""
        if text is None:
            return False
        if not self._take_token():  # every frame counts, binary ones included
            self.close(CloseCode.TOO_LARGE_OR_TOO_MANY, "too many messages")
            return False
        if isinstance(text, bytes):
            self.send(Error(id=None, code="bad_request", message="text frames only"))
            return True
        try:
            message = decode(text)
        except BadMessage as exc:
            self.send(Error(id=exc.request_id, code=exc.code, message=exc.message))
            return True
        if isinstance(message, Watch):
            await self._watch(message)
        elif isinstance(message, Unwatch):
            self._unwatch(message)
        elif isinstance(message, Ping):
            self.send(Pong(id=message.id))
        else:
            self.send(Error(id=None, code="bad_request", message="already authenticated"))
        return True

    def _take_token(self) -> bool:
        now = time.monotonic()
        config = self.config
        allowance = self._allowance + (now - self._checked) * config.messages_per_s
        self._allowance = min(float(config.message_burst), allowance)
        self._checked = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True

    def idle_for(self, now: float) -> float:
        """Seconds since the client's last message (time.monotonic() clock)."""
        return now - self._checked

    def close(self, code: int, reason: str) -> None:
        """Flush what is queued and close with ``code``; never waits for the client."""
        if self.closed or self.sink is None:
            return
        self.hub.note_sent(self.flush(force=True) or 0)
        self.outbox.closed = True
        self.sink.close(code, reason)

    def _close_slow(self) -> None:
        """Close a client that stayed behind with 4008, dropping what it did not read."""
        self.hub.note_slow_close()
        log.info("closing a client that stayed behind (4008)")
        self.outbox.drop()
        self.close(CloseCode.TOO_SLOW, "client too slow")

    def queued(self) -> int:
        """Bytes queued for the client: in the socket's buffer and as control replies."""
        return self.outbox.queued(self._buffered())

    def _buffered(self) -> int:
        sink = self.sink
        return sink.buffered() if sink is not None else 0

    # requests

    async def _watch(self, req: Watch) -> None:
        users = list(dict.fromkeys(req.users))
        refusal = self.refusal(users)
        if refusal is not None:
            self.send(Error(id=req.id, code=refusal[0], message=refusal[1]))
            return
        watching = self.outbox.watching
        await self._pace_reads(sum(u not in watching for u in users))
        if self.closed:
            return
        try:
            presence = await self.add(users)
        except StoreUnavailable:
            self.send(Error(id=req.id, code="unavailable", message="store unavailable, retry"))
            return
        if presence is not None:
            self.send(Snapshot(id=req.id, presence=presence))

    def refusal(self, users: list[str]) -> tuple[str, str] | None:
        """Why watching ``users`` (distinct) is refused, as ``(code, message)``; None if not."""
        app = self.app
        assert self.claims is not None
        if app.watch_policy == "token":
            allowed = self.claims.watch or frozenset()
            refused = [u for u in users if u not in allowed]
            if refused:
                return "forbidden", f"not allowed to watch {len(refused)} of these users"
        watching = self.outbox.watching
        if len(watching) + sum(u not in watching for u in users) > app.max_watch:
            return "limit", f"at most {app.max_watch} watched users per connection"
        return None

    async def add(self, users: list[str]) -> list[UserState | msgspec.Raw] | None:
        """Watch ``users`` (distinct, allowed) and return their snapshot: the live feed of
        each is on before it is read, and what arrives meanwhile follows the snapshot.

        None once the session is closed; StoreUnavailable (nothing added) when the store
        or the broker fails.
        """
        app = self.app
        outbox = self.outbox
        new = [u for u in users if u not in outbox.watching]
        outbox.begin_read(new)
        chunk = self.config.store_read_chunk
        try:
            await self.hub.watch(self, app.id, new)
            states: list[UserState] = []
            for i in range(0, len(new), chunk):
                states += await self.hub.store.get(app.id, new[i : i + chunk])
        except StoreUnavailable:
            outbox.abort_read(new)
            self.hub.unwatch(self, app.id, new)
            raise
        if self.closed:
            return None
        self.hub.note_read(app.id, states)
        fresh = {st.user: st for st in states if outbox.settle(st)}
        presence: list[UserState | msgspec.Raw] = []
        for user in users:
            state = fresh.get(user)
            if state is not None:
                presence.append(state)
            elif (known := self._known(user)) is not None:
                presence.append(known)
        return presence

    def _known(self, user: str) -> UserState | msgspec.Raw | None:
        """The hub's newest state of a user this session already watches, as its baseline.

        None when the session has (or has queued) a newer one: a repeated watch leaves out
        states older than what the client has.
        """
        known = self.hub.known(self.app.id, user)
        if known is None or not self.outbox.adopt(user, known[0]):
            return None
        state = known[1]  # older or equal queued frames were dropped: the snapshot replaces them
        return msgspec.Raw(state) if isinstance(state, bytes) else state

    async def _pace_reads(self, users: int) -> None:
        """Take ``users`` store reads from the allowance, first waiting for it if short."""
        burst = float(max(self.app.max_watch, self.config.store_read_burst))
        rate = burst / self.config.store_read_refill_s
        now = time.monotonic()
        self._reads = min(burst, self._reads + (now - self._read_at) * rate) - users
        self._read_at = now
        if self._reads < 0:
            await asyncio.sleep(-self._reads / rate)

    def _unwatch(self, req: Unwatch) -> None:
        gone = self.outbox.unwatch(dict.fromkeys(req.users))
        self.hub.unwatch(self, self.app.id, gone)
        self.send(Ok(id=req.id))

    # outbox (called by the hub; never awaits)

    def send(self, message: ServerMessage) -> None:
        """Queue a control reply behind the ones already queued."""
        if not self.closed and self.queue_control(encode(message)):
            self.hub.mark_dirty(self)

    def queue_control(self, frame: bytes) -> bool:
        """Queue a control frame; False (closed with 4008) when it would pass the bound:
        while the socket is behind, at most high_water_bytes of them (one, whatever its size)."""
        if self.outbox.queue_control(frame, self._buffered()):
            return True
        self._close_slow()
        return False

    def resync(self, states: Mapping[Key, UserState]) -> bool:
        """Queue a ``resync`` of the whole watch set from freshly read states."""
        if self.closed:
            return False
        present = self.outbox.rebase(self.app.id, states)
        return self.queue_control(encode(Resync(presence=present)))

    def flush(self, force: bool = False) -> int | None:
        """Write everything queued in one send: the presence frames written (0 once closed),
        None while the client is behind."""
        sink = self.sink
        if self.closed or sink is None:
            return 0
        if not force:
            behind = self.outbox.behind(sink.buffered(), time.monotonic())
            if behind is None:
                self._close_slow()
                return 0
            if behind:
                return None
        else:
            self.outbox.behind_since = None
        frames, sent = self.outbox.take()
        if frames:
            sink.write(frames)
        return sent
