"""One WebSocket connection (SPEC section 5): hello, watch/unwatch, and a coalescing outbox.

Outbox: control replies (welcome, snapshot, ok, error, …) in order, then at most one unsent
``presence`` frame per user, the latest. ``watching[user]`` is the highest ``v`` queued for
the client, so a state with a lower or equal ``v`` is never sent after it.

No gap between snapshot and live feed: a user being watched is first indexed in the hub and
subscribed (so every later publish reaches this session), *then* read from the store. States
that arrive in between are held and sent after the snapshot only when newer than it. A user
already watched is not read again: the snapshot carries the hub's newest state of it.

Abuse bounds, all per connection:

- Queue: while the socket holds more than HIGH_WATER unsent bytes the client is behind. Its
  next request waits until it catches up (so a client that does not read its replies cannot
  make the node queue more of them, or read the store for them), and control replies queue
  behind the socket up to HIGH_WATER bytes; past either bound (SLOW_CLOSE_AFTER seconds, or
  one more reply) it is closed with 4008. ``queued()`` is what it holds, presence aside (at
  most one coalesced frame per watched user).
- Store reads: max(max_watch, READ_BURST) users at once, refilled over READ_REFILL seconds; a
  watch past the allowance waits for it, so unwatching and re-watching cannot read faster.
- Connections: at most ``max_connections_per_user`` per user and app on this node; the next
  one is refused after hello with 4009 (SPEC: too many).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

import msgspec
from starlette.types import Receive, Scope, Send

from gateway import tokens
from gateway.config import AppConfig
from gateway.errors import StoreUnavailable
from gateway.model import UserState, state_encoder
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
    presence_frame,
)
from gateway.transport import EXTENSION

if TYPE_CHECKING:
    from gateway.hub import Hub, Key

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
HEARTBEAT_MS = 25_000
IDLE_LIMIT = 3 * HEARTBEAT_MS / 1000  # seconds without a message before the client is dropped
HIGH_WATER = 256 * 1024  # bytes buffered for a client before it counts as behind
SLOW_CLOSE_AFTER = 10.0  # seconds continuously behind before closing with 4008
CATCH_UP_POLL = 0.02  # seconds between checks while a request waits for the client to read
RATE = 20.0  # client messages per second, sustained
BURST = 40.0  # client messages allowed in a burst
QUERY_CHUNK = 1000
READ_BURST = 100  # users a connection may read from the store at once, at least (or max_watch)
READ_REFILL = 10.0  # seconds for that allowance to refill
PENDING = -1  # watching[user] while its snapshot is being read


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
        "_control_bytes",
        "_expiry",
        "_read_at",
        "_reads",
        "app",
        "behind_since",
        "claims",
        "closed",
        "control",
        "held",
        "hub",
        "pending",
        "receive",
        "sink",
        "watching",
    )

    def __init__(self, receive: Receive, app: AppConfig, hub: Hub) -> None:
        self.receive = receive
        self.app = app
        self.hub = hub
        self.sink: Sink | None = None
        self.claims: tokens.Claims | None = None
        self.watching: dict[str, int] = {}
        self.held: dict[str, tuple[int, bytes]] | None = None
        # the latest unsent presence frame per user; its v is watching[user]
        self.pending: dict[str, bytes] = {}
        self.control: list[bytes] = []
        self._control_bytes = 0  # the size of ``control``
        self.behind_since: float | None = None
        self.closed = False
        self._allowance = BURST
        self._checked = time.monotonic()
        self._expiry: asyncio.TimerHandle | None = None
        self._admitted = False  # counted in hub.connections
        self._reads = float(max(app.max_watch, READ_BURST))
        self._read_at = self._checked

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
                self.close(4003, "origin not allowed")
                return
            if await self._authenticate():
                self.hub.sessions.add(self)
                await self._serve()
        finally:
            self.finish()
            if isinstance(sink, AsgiSink):
                await sink.stop()

    def finish(self) -> None:
        """Leave the hub: uncount the connection, unwatch everything (once it is over)."""
        self.closed = True
        self.hub.sessions.discard(self)
        if self._admitted and self.claims is not None:
            self._admitted = False
            self.hub.release(self.app.id, self.claims.sub)
        self.hub.unwatch(self, self.app.id, list(self.watching))
        if self._expiry is not None:
            self._expiry.cancel()

    def origin_allowed(self, origin: str) -> bool:
        allowed = self.app.allowed_origins
        return "*" in allowed or origin in allowed

    async def _authenticate(self) -> bool:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                text = await self._receive()
        except TimeoutError:
            self.close(4001, f"no hello within {HELLO_TIMEOUT:g} s")
            return False
        if text is None:
            return False
        hello: object = None
        if isinstance(text, str):
            with contextlib.suppress(BadMessage):
                hello = decode(text)
        if not isinstance(hello, Hello):
            self.close(4001, "the first message must be hello")
            return False
        try:
            claims = tokens.verify(hello.token, self.app.client_secret, self.app.id)
        except tokens.TokenError as exc:
            self.close(4001, str(exc))
            return False
        if not self.admit(claims):
            self.close(4009, "too many connections for this user")
            return False
        self.send(Welcome(user=claims.sub, max_watch=self.app.max_watch, heartbeat_ms=HEARTBEAT_MS))
        return True

    def admit(self, claims: tokens.Claims) -> bool:
        """Count the connection of a verified user (False, counted as refused, over the cap)
        and close it when its token expires."""
        self.claims = claims
        if not self.hub.admit(self.app.id, claims.sub, self.app.max_connections_per_user):
            self.hub.refused += 1
            return False
        self._admitted = True
        loop = asyncio.get_running_loop()
        left = max(0.0, claims.deadline() - time.time())
        self._expiry = loop.call_at(loop.time() + left, self.close, 4001, "token expired")
        return True

    async def _receive(self) -> str | bytes | None:
        """The next message (bytes for a binary one); None once the connection is gone."""
        if self.closed:
            return None
        message = await self.receive()
        if message["type"] == "websocket.disconnect":
            self.closed = True
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
        if text is not None and self.queued() > HIGH_WATER and not await self._catch_up():
            return None
        return text

    async def _catch_up(self) -> bool:
        """Wait until at most HIGH_WATER is queued for the client; False once it is closed.

        The transport reads nothing more meanwhile, so the client's requests wait in the
        kernel's buffers, not in ours.
        """
        while not self.closed and self.queued() > HIGH_WATER:
            now = time.monotonic()
            if self.behind_since is None:
                self.behind_since = now
            elif now - self.behind_since > SLOW_CLOSE_AFTER:
                self._close_slow()
                break
            await asyncio.sleep(CATCH_UP_POLL)
        else:
            self.behind_since = None  # caught up: a later fall behind starts a fresh count
        return not self.closed

    async def _handle(self, text: str | bytes | None) -> bool:
        """Handle one client frame; False when the connection is done."""
        if text is None:
            return False
        if not self._take_token():  # every frame counts, binary ones included
            self.close(4009, "too many messages")
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
        self._allowance = min(BURST, self._allowance + (now - self._checked) * RATE)
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
        self.flush(force=True)
        self.closed = True
        self.sink.close(code, reason)

    def _close_slow(self) -> None:
        """Close a client that stayed behind with 4008, dropping what it did not read."""
        self.hub.slow_closes += 1
        log.info("closing a client that stayed behind (4008)")
        self.pending.clear()
        self.control.clear()
        self._control_bytes = 0
        self.close(4008, "client too slow")

    def queued(self) -> int:
        """Bytes queued for the client: in the socket's buffer and as control replies."""
        sink = self.sink
        return self._control_bytes + (sink.buffered() if sink is not None else 0)

    # requests

    async def _watch(self, req: Watch) -> None:
        users = list(dict.fromkeys(req.users))
        refusal = self.refusal(users)
        if refusal is not None:
            self.send(Error(id=req.id, code=refusal[0], message=refusal[1]))
            return
        await self._pace_reads(sum(u not in self.watching for u in users))
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
        if len(self.watching) + sum(u not in self.watching for u in users) > app.max_watch:
            return "limit", f"at most {app.max_watch} watched users per connection"
        return None

    async def add(self, users: list[str]) -> list[UserState | msgspec.Raw] | None:
        """Watch ``users`` (distinct, allowed) and return their snapshot: the live feed of
        each is on before it is read, and what arrives meanwhile follows the snapshot.

        None once the session is closed; StoreUnavailable (nothing added) when the store
        or the broker fails.
        """
        app = self.app
        new = [u for u in users if u not in self.watching]
        for user in new:
            self.watching[user] = PENDING
        try:
            await self.hub.watch(self, app.id, new)
            states: list[UserState] = []
            for i in range(0, len(new), QUERY_CHUNK):
                states += await self.hub.store.get(app.id, new[i : i + QUERY_CHUNK])
        except StoreUnavailable:
            for user in new:
                del self.watching[user]
                if self.held is not None:
                    self.held.pop(user, None)
            self.hub.unwatch(self, app.id, new)
            raise
        if self.closed:
            return None
        self.hub.note_read(app.id, states)
        fresh = {st.user: st for st in states if self._settle(st)}
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
        last = self.watching.get(user, PENDING)
        if known is None or last == PENDING or known[0] < last:
            return None
        v, state = known
        self.pending.pop(user, None)  # older or equal: the snapshot goes first and replaces it
        self.watching[user] = v
        return msgspec.Raw(state) if isinstance(state, bytes) else state

    async def _pace_reads(self, users: int) -> None:
        """Take ``users`` store reads from the allowance, first waiting for it if short."""
        burst = float(max(self.app.max_watch, READ_BURST))
        rate = burst / READ_REFILL
        now = time.monotonic()
        self._reads = min(burst, self._reads + (now - self._read_at) * rate) - users
        self._read_at = now
        if self._reads < 0:
            await asyncio.sleep(-self._reads / rate)

    def _settle(self, state: UserState) -> bool:
        """Make ``state`` (read from the store) the client's baseline for its user.

        False when the client already has, or has queued, a newer state of an already
        watched user (the read raced a publish): ``state`` must then not be sent at all.
        """
        user = state.user
        last = self.watching.get(user, PENDING)
        held = self.held.pop(user, None) if self.held else None
        if last != PENDING and state.v < last:
            return False
        if held is not None and held[0] > state.v:  # published after the read: send it next
            self.pending[user] = held[1]
            self.watching[user] = held[0]
        else:
            self.pending.pop(user, None)  # anything queued is older: the state replaces it
            self.watching[user] = state.v
        return True

    def _unwatch(self, req: Unwatch) -> None:
        gone = [u for u in dict.fromkeys(req.users) if u in self.watching]
        for user in gone:
            del self.watching[user]
            self.pending.pop(user, None)
        self.hub.unwatch(self, self.app.id, gone)
        self.send(Ok(id=req.id))

    # outbox (called by the hub; never awaits)

    def send(self, message: ServerMessage) -> None:
        """Queue a control reply behind the ones already queued."""
        if not self.closed and self._queue_control(encode(message)):
            self.hub.mark_dirty(self)

    def _queue_control(self, frame: bytes) -> bool:
        """Queue a control frame; False (closed with 4008) when it would pass the bound:
        while the socket is behind, at most HIGH_WATER bytes of them (one, whatever its size)."""
        size = self._control_bytes + len(frame)
        if size > HIGH_WATER and self.control and self.sink and self.sink.buffered() > HIGH_WATER:
            self._close_slow()
            return False
        self.control.append(frame)
        self._control_bytes = size
        return True

    def deliver(self, user: str, v: int, frame: bytes) -> bool:
        """Queue a published state; True when the session has something new to flush.

        The hub inlines the common case (watched, not pending, newer) in its fan-out loop;
        keep the two in step.
        """
        last = self.watching.get(user)
        if last is None or self.closed:
            return False
        if last == PENDING:
            if self.held is None:
                self.held = {}
            held = self.held.get(user)
            if held is None or v > held[0]:
                self.held[user] = (v, frame)
            return False
        if v <= last:
            return False
        self.watching[user] = v
        self.pending[user] = frame
        return True

    def resync(self, states: dict[Key, UserState]) -> bool:
        """Queue a ``resync`` of the whole watch set from freshly read states."""
        if self.closed:
            return False
        present = []
        for user, last in list(self.watching.items()):
            state = states.get((self.app.id, user))
            if state is None:
                continue
            if last == PENDING:  # its snapshot read may predate the reset: hold this one
                self.deliver(user, state.v, presence_frame(state_encoder.encode(state)))
                continue
            # the hub's states are the newest it knows (see Hub._resync_all): the baseline,
            # even below ``last`` when the store lost its data; what is queued is older
            self.pending.pop(user, None)
            self.watching[user] = state.v
            present.append(state)
        return self._queue_control(encode(Resync(presence=present)))

    def flush(self, force: bool = False) -> bool:
        """Write everything queued in one send; False while the client is behind."""
        sink = self.sink
        if self.closed or sink is None:
            return True
        if not force and sink.buffered() > HIGH_WATER:
            now = time.monotonic()
            if self.behind_since is None:
                self.behind_since = now
            elif now - self.behind_since > SLOW_CLOSE_AFTER:
                self._close_slow()
                return True
            return False
        self.behind_since = None
        frames = self.control
        if self.pending:
            self.hub.sent += len(self.pending)
            frames += self.pending.values()
            self.pending = {}
        if frames:
            self.control = []
            self._control_bytes = 0
            sink.write(frames)
        return True
