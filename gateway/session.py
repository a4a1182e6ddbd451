"""One WebSocket connection (SPEC section 5): hello, watch/unwatch; owns an ``Outbox``.

The hub's side of it (outbox, flush, close, the gap-free watch) is ``gateway.watcher.Watcher``;
this module is the WebSocket: origin, hello, rate limits, watch/unwatch/ping.

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
import time

from starlette.types import Message, Receive, Scope, Send

from gateway import tokens
from gateway.config import AppConfig
from gateway.errors import CloseCode, StoreUnavailable
from gateway.hub import Hub
from gateway.protocol import (
    BadMessage,
    Error,
    Hello,
    Ok,
    Ping,
    Pong,
    Snapshot,
    Unwatch,
    Watch,
    Welcome,
    decode,
)
from gateway.sinks import AsgiSink, RawSink
from gateway.transport import EXTENSION
from gateway.watcher import Watcher

CATCH_UP_POLL = 0.02  # seconds between checks while a request waits for the client to read


class Session(Watcher):
    """A WebSocket client connection; its methods called by the hub never await."""

    __slots__ = (
        "_allowance",
        "_checked",
        "_read_at",
        "_reads",
        "receive",
    )

    def __init__(self, receive: Receive, app: AppConfig, hub: Hub) -> None:
        super().__init__(app, hub)
        config = self.config
        self.receive = receive
        self._allowance = float(config.message_burst)
        self._checked = time.monotonic()
        self._reads = float(max(app.max_watch, config.store_read_burst))
        self._read_at = self._checked

    # connection lifecycle

    async def run(self, scope: Scope, send: Send) -> None:
        """Serve the connection (plain ASGI ``websocket`` scope) until it closes."""
        allowed = self._origin_ok(scope["headers"])  # a helper: its locals go with it
        scope["headers"] = []  # an idle connection need not keep its handshake
        # read before accepting: once open, gateway.transport keeps only the scope's path
        raw = scope.get("extensions", {}).get(EXTENSION)
        if (await self.receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        self.sink = sink = RawSink(raw) if raw is not None else AsgiSink(send)
        try:
            if not allowed:
                self.close(CloseCode.ORIGIN_NOT_ALLOWED, "origin not allowed")
                return
            if await self._authenticate():
                self.hub.attach(self)
                # Each frame is handled in its own call, so an idle connection keeps no old
                # request, and waits in this frame alone (~200 bytes a coroutine level).
                receive = self.receive
                while not self.closed and await self._handle(self._content(await receive())):
                    pass
        finally:
            self.finish()
            if isinstance(sink, AsgiSink):
                await sink.stop()

    def _origin_ok(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the handshake's ``Origin`` (the last one), if any, is allowed."""
        origin = None
        for name, value in headers:
            if name == b"origin":
                origin = value.decode("latin-1")
        return origin is None or self.origin_allowed(origin)

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

    async def _receive(self) -> str | bytes | None:
        """The next message (bytes for a binary one); None once the connection is gone."""
        if self.closed:
            return None
        return self._content(await self.receive())

    def _content(self, message: Message) -> str | bytes | None:
        """A received ASGI message's text (bytes for a binary one); None for a disconnect."""
        if message["type"] == "websocket.disconnect":
            self.outbox.closed = True
            return None
        text = message.get("text")
        return str(text) if text is not None else bytes(message.get("bytes") or b"")

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
        """Handle one client frame, once the client has caught up (see module); False when
        the connection is done."""
        if text is None:
            return False
        if self.queued() > self.config.high_water_bytes and not await self._catch_up():
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
