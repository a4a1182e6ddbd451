"""What a WebSocket session and an SSE stream share: the hub's side of a connection.

A ``Watcher`` owns an ``Outbox`` (``gateway.outbox``): it holds control replies in order, then
at most one unsent ``presence`` frame per user, the latest; the hub fans published states
into it, and ``flush`` writes it to the ``Sink`` (``gateway.sinks``) in one send.

No gap between snapshot and live feed: a user being watched is first indexed in the hub and
subscribed (so every later publish reaches this session), *then* read from the store. States
that arrive in between are held and sent after the snapshot only when newer than it. A user
already watched is not read again: the snapshot carries the hub's newest state of it.

Bounds kept here (the WebSocket's own are listed in ``gateway.session``): control replies
queue behind the socket up to high_water_bytes, past it 4008 (``queue_control``, ``flush``);
at most ``max_connections_per_user`` per user and app on this node (``admit``); the
connection closes when its token expires. ``gateway.session.Session`` (WebSocket) and
``gateway.sse.EventStream`` (through ``Session``) are the watchers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Mapping

import msgspec

from gateway import tokens
from gateway.config import AppConfig
from gateway.errors import CloseCode, StoreUnavailable
from gateway.hub import Hub
from gateway.model import UserState
from gateway.outbox import Outbox
from gateway.protocol import Resync, ServerMessage, encode
from gateway.sinks import Sink
from gateway.types import Key

log = logging.getLogger(__name__)


class Watcher:
    """A client of the hub, whatever its transport; its methods called by the hub never await."""

    __slots__ = (
        "_admitted",
        "_expiry",
        "app",
        "claims",
        "config",
        "hub",
        "outbox",
        "sink",
    )

    def __init__(self, app: AppConfig, hub: Hub) -> None:
        self.app = app
        self.hub = hub
        self.config = config = hub.config
        self.sink: Sink | None = None
        self.claims: tokens.Claims | None = None
        self.outbox = Outbox(config.high_water_bytes, config.slow_close_after_s)
        self._expiry: int | None = None  # its token's expiry second (_Expiries)
        self._admitted = False  # counted in hub.connections

    @property
    def closed(self) -> bool:
        """The connection is over (or closing): nothing more is queued or read."""
        return self.outbox.closed

    def idle_for(self, now: float) -> float:
        """Seconds since the client's last message (time.monotonic() clock)."""
        raise NotImplementedError  # each transport has its own (the hub's idle sweep)

    # connection lifecycle

    def finish(self) -> None:
        """Leave the hub: uncount the connection, unwatch everything (once it is over)."""
        self.outbox.closed = True
        self.hub.detach(self)
        if self._admitted and self.claims is not None:
            self._admitted = False
            self.hub.release(self.app.id, self.claims.sub)
        self.hub.unwatch(self, self.app.id, list(self.outbox.watching))
        if self._expiry is not None:
            _expiries().discard(self, self._expiry)
            self._expiry = None

    def admit(self, claims: tokens.Claims) -> bool:
        """Count the connection of a verified user (False, counted as refused, over the cap)
        and close it when its token expires."""
        self.claims = claims
        if not self.hub.admit(self.app.id, claims.sub, self.app.max_connections_per_user):
            return False
        self._admitted = True
        self._expiry = _expiries().add(self, claims.deadline())
        return True

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

    # watching

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
        # one string per watched user on the node, not one per connection watching it
        new = [sys.intern(u) for u in users if u not in outbox.watching]
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
        outbox = self.outbox
        if outbox.closed or sink is None:
            return 0
        if not force:
            behind = outbox.behind(sink.buffered())
            if behind is None:
                self._close_slow()
                return 0
            if behind:
                return None
        else:
            outbox.behind_since = None
        frame = outbox.take_one()
        if frame is not None:
            sink.send(frame)
            return 1
        frames, sent = outbox.take()
        if frames:
            sink.write(frames)
        return sent


class _Expiries:
    """The token expiries of one event loop's connections: one timer per second in which
    some expire, not one per connection (a timer handle, its arguments and its context are
    ~500 bytes a connection). A connection is closed in the first second at or after its
    deadline: a token's ``exp`` is usually whole seconds, so at the deadline. A second whose
    connections all closed before it goes with its timer (else, with hours-long tokens and
    connections coming and going, a set and a timer per second would wait for hours)."""

    __slots__ = ("loop", "seconds", "timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.seconds: dict[int, set[Watcher]] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}

    def add(self, watcher: Watcher, deadline: float) -> int:
        """Close ``watcher`` at ``deadline`` (epoch seconds); the second to ``discard``."""
        second = math.ceil(deadline)
        due = self.seconds.get(second)
        if due is None:
            due = self.seconds[second] = set()
            loop = self.loop
            self.timers[second] = loop.call_at(
                loop.time() + max(0.0, second - time.time()), self._expire, second
            )
        due.add(watcher)
        return second

    def discard(self, watcher: Watcher, second: int) -> None:
        """``watcher`` closed before its token expired."""
        due = self.seconds.get(second)
        if due is None:
            return
        due.discard(watcher)
        if not due:
            del self.seconds[second]
            timer = self.timers.pop(second, None)
            if timer is not None:
                timer.cancel()

    def _expire(self, second: int) -> None:
        self.timers.pop(second, None)
        for watcher in list(self.seconds.pop(second, ())):
            watcher.close(CloseCode.UNAUTHORIZED, "token expired")


_current: _Expiries | None = None


def _expiries() -> _Expiries:
    """The running loop's ``_Expiries`` (a new one for a new loop: tests run several)."""
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or _current.loop is not loop:
        _current = _Expiries(loop)
    return _current
