"""The node's fan-out: a local index user → sessions, interest-based subscriptions, one flush.

- Interest (``gateway.interest``): the node subscribes in the broker only to users some local
  session watches, refcounted (first watcher subscribes, the last one leaving schedules an
  unsubscribe); one subscribe call per watch request and one batched unsubscribe per tick.
- Fan-out: a published state is framed once and the same bytes are queued in the outbox
  (``gateway.outbox``) of every watching client without awaiting anything; an outbox keeps
  only the latest unsent state per user.
- Flush: dirty sessions are flushed together, at once when the node is idle and on a short
  tick under load, so a busy connection gets many states in one write.
- Feed loss: when the broker reports a reset, every session gets a ``resync``.
- Latest: the newest state known of every indexed user (published, read for a snapshot, or
  resynced), so a session re-watching a user it already watches answers from memory, not from
  the store. One entry per distinct watched user of the node, gone when nobody watches it.
- Connections: open connections per (app, user) on this node, for the per-user cap.

A client is anything with an outbox and the few methods of ``Client`` (``gateway.client``: a
WebSocket session, an SSE stream, a test's fake); the hub never imports them. Tunables:
``[connections]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.backends.base import Broker, PresenceStore
from gateway.client import Client
from gateway.config import ConnectionsConfig
from gateway.errors import CloseCode, StoreUnavailable
from gateway.interest import Interest
from gateway.metrics import Metrics
from gateway.model import UserState, state_decoder
from gateway.outbox import fan_out
from gateway.protocol import presence_frame
from gateway.types import Key

log = logging.getLogger(__name__)

__all__ = ["Client", "Hub", "Key"]


class _Version(msgspec.Struct):
    v: int


_version = msgspec.json.Decoder(_Version)


class Hub(Interest):
    """Everything this node knows about who watches whom."""

    def __init__(
        self,
        store: PresenceStore,
        broker: Broker,
        metrics: Metrics,
        config: ConnectionsConfig | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.metrics = metrics
        self.config = config or ConnectionsConfig()  # read by the sessions too
        super().__init__()  # the index and the subscriptions (gateway.interest)
        self.sessions: set[Client] = set()
        self._dirty: set[Client] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = 0.0
        self._batch_start: float | None = None  # receipt of the oldest state not yet flushed
        self._task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._resyncs: set[asyncio.Task[None]] = set()
        self._recording: list[dict[Key, tuple[int, bytes | UserState]]] = []  # see resync
        # newest state of every indexed key: a published payload or a state read or resynced
        self.latest: dict[Key, tuple[int, bytes | UserState]] = {}
        self.connections: dict[Key, int] = {}  # open sessions per (app, user)
        self._resyncs_started = 0
        self._resync_applied = 0  # the newest resync handed to sessions
        # plain counters, exported by a collector at scrape time (no locks on the hot path)
        self.sent = 0
        self.slow_closes = 0
        self.refused = 0  # connections over max_connections_per_user
        broker.set_handlers(self.on_message, self.on_reset)
        metrics.registry.register(_HubCollector(self))

    # lifecycle

    async def start(self) -> None:
        self._task = asyncio.create_task(self._unsubscriber(), name="hub-unsubscriber")
        self._reaper = asyncio.create_task(self._reap_idle(), name="hub-reaper")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._reaper, *self._resyncs) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._flush_handle is not None:
            self._flush_handle.cancel()

    # connections

    def attach(self, client: Client) -> None:
        """Count ``client`` as open: it gets resyncs and the idle sweep."""
        self.sessions.add(client)

    def detach(self, client: Client) -> None:
        """Forget ``client`` (closed); its watches go with ``unwatch``."""
        self.sessions.discard(client)
        self._dirty.discard(client)

    def admit(self, app: str, user: str, cap: int) -> bool:
        """Count a new connection of ``user``; False (nothing counted, counted as refused)
        when it has ``cap``."""
        key = (app, user)
        count = self.connections.get(key, 0)
        if count >= cap:
            self.refused += 1
            return False
        self.connections[key] = count + 1
        return True

    def release(self, app: str, user: str) -> None:
        """Uncount a connection counted by ``admit`` (exactly once per admitted one)."""
        key = (app, user)
        count = self.connections.get(key, 0) - 1
        if count > 0:
            self.connections[key] = count
        else:
            self.connections.pop(key, None)

    # idle clients and counters

    async def _reap_idle(self) -> None:
        """Close clients silent for longer than idle_limit_s (they ping every heartbeat_ms).

        One sweep for every connection replaces a keepalive timer per connection: a peer
        that vanished without a FIN is found here, not by the transport.
        """
        limit = self.config.idle_limit_s
        reason = f"no message for {limit:.0f} s; ping every heartbeat_ms"
        while True:
            await asyncio.sleep(max(0.05, limit / 5))
            now = time.monotonic()
            for session in [s for s in self.sessions if s.idle_for(now) > limit]:
                session.close(CloseCode.GOING_AWAY, reason)

    def note_slow_close(self) -> None:
        """Count a client closed with 4008 for staying behind."""
        self.slow_closes += 1

    def note_sent(self, count: int) -> None:
        """Count presence frames a client wrote outside the hub's flush (as it closed)."""
        self.sent += count

    # fan-out

    def on_message(self, app: str, user: str, payload: bytes) -> None:
        """A state was published: frame it once and queue it on every watcher."""
        if self._fan(app, user, payload):
            self.schedule_flush()

    def deliver(self, app: str, published: Iterable[tuple[str, bytes]]) -> None:
        """States this node's own apply just published (``ApplyResult.payloads``): fan
        them out and write them now, not when the broker's echo comes back.

        The echo then finds the same bytes in ``latest`` and stops there; other nodes get
        the states from the broker as before. Written at once unless the last flush was
        less than a tick ago (then the tick coalesces, as for the broker's states). Never
        raises: the caller's events are applied whatever happens here, and the echo follows.
        """
        try:
            fanned = False
            for user, payload in published:
                fanned = self._fan(app, user, payload) or fanned
            if fanned:
                self.schedule_flush(at_once=True)
        except Exception:
            log.exception("local delivery failed")
            self.schedule_flush()  # what was queued still goes

    def _fan(self, app: str, user: str, payload: bytes) -> bool:
        """Queue ``payload`` on every watcher that lacks it; False if nobody watches or it
        is the very state fanned out last (a local delivery's echo)."""
        key = (app, user)
        watchers = self.index.get(key)
        if not watchers:
            return False
        known = self.latest.get(key)
        if known is not None and known[1] == payload:
            return False  # fanned out already, to every watcher there was (``deliver``)
        try:
            v = _version.decode(payload).v
        except msgspec.DecodeError:
            log.error("dropped a malformed published state for %s/%s", app, user)
            return False
        for seen in self._recording:
            if v > seen.get(key, (-1, b""))[0]:
                seen[key] = (v, payload)
        if known is None or v > known[0]:
            self.latest[key] = (v, payload)
        if self._batch_start is None:
            self._batch_start = time.perf_counter()
        fan_out(watchers, user, v, presence_frame(payload), self._dirty.add)  # the hot loop
        return True

    def note_read(self, app: str, states: Iterable[UserState]) -> None:
        """States a session just read for its snapshot: a resync reading meanwhile may have
        read older ones, and must not send those to anyone; ``latest`` keeps the newest."""
        latest = self.latest
        for st in states:
            key = (app, st.user)
            if key in self.index:
                known = latest.get(key)
                if known is None or st.v > known[0]:
                    latest[key] = (st.v, st)
            for seen in self._recording:
                if st.v > seen.get(key, (-1, b""))[0]:
                    seen[key] = (st.v, st)

    def known(self, app: str, user: str) -> tuple[int, bytes | UserState] | None:
        """The newest state this node has of an indexed user: ``(v, payload or state)``.

        For a session that watches the user, never older than what it was sent or queued.
        """
        return self.latest.get((app, user))

    def schedule_flush(self, *, at_once: bool = False) -> None:
        """Flush dirty sessions soon (this loop turn; ``at_once``: right here) if the last
        flush of presence states was a tick ago, else on the tick."""
        if not self._dirty:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_flush + self.config.flush_tick_s - loop.time()
        if at_once and wait <= 0:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()
        elif self._flush_handle is not None:
            return
        elif wait <= 0:
            self._flush_handle = loop.call_soon(self._flush)
        else:
            self._flush_handle = loop.call_later(wait, self._flush)

    def mark_dirty(self, session: Client) -> None:
        self._dirty.add(session)
        self.schedule_flush()

    def _flush(self) -> None:
        self._flush_handle = None
        if self._batch_start is not None:
            # The tick paces flushes of presence states only: a flush of control replies
            # alone (a pong, a watch's snapshot) must not hold back the next state.
            self._last_flush = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, set()
        sent = 0
        for session in dirty:
            written = session.flush()
            if written is None:
                self._dirty.add(session)  # held back by a slow reader: retry on the tick
            else:
                sent += written
        self.sent += sent
        if self._batch_start is not None:
            self.metrics.publish_to_send_seconds.observe(time.perf_counter() - self._batch_start)
            self._batch_start = None
        if self._dirty:
            self.schedule_flush()

    # feed loss

    def on_reset(self) -> None:
        """The broker lost its feed and is back: send every session a resync."""
        self.metrics.feed_resets.inc()
        task = asyncio.create_task(self._resync_all(), name="hub-resync")
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _resync_all(self) -> None:
        """Read the whole index and hand every session its part as the new baseline.

        The states are authoritative (after data loss they may carry a lower ``v`` than
        what clients hold). What any session got while they were being read (a published
        state, a snapshot read) may be newer than the read, so it replaces what was read
        when newer; anything a session got before the read began is older or equal. A
        resync that finishes after a later one (resets in a row) is dropped: it read older.
        """
        self._resyncs_started += 1
        generation = self._resyncs_started
        by_app: dict[str, list[str]] = {}
        for app, user in list(self.index):
            by_app.setdefault(app, []).append(user)
        states: dict[Key, UserState] = {}
        seen: dict[Key, tuple[int, bytes | UserState]] = {}
        self._recording.append(seen)
        try:
            for app, users in by_app.items():
                for chunk in _chunks(users, self.config.store_read_chunk):
                    for attempt in range(10):
                        try:
                            for st in await self.store.get(app, chunk):
                                states[(app, st.user)] = st
                            break
                        except StoreUnavailable:
                            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        finally:
            self._recording.remove(seen)
        for key, (v, newer) in seen.items():
            read = states.get(key)
            if read is not None and v > read.v:
                states[key] = newer if isinstance(newer, UserState) else state_decoder.decode(newer)
        if generation < self._resync_applied:
            return
        self._resync_applied = generation
        for key, st in states.items():  # authoritative, even below what was known
            if key in self.index:
                self.latest[key] = (st.v, st)
        log.info("feed restored: resyncing %d sessions", len(self.sessions))
        for session in list(self.sessions):
            if session.resync(states):
                self._dirty.add(session)
        self.schedule_flush()


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _HubCollector(Collector):
    """Exports the hub's plain counters when Prometheus scrapes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hub = self.hub
        yield GaugeMetricFamily(
            "presence_connections",
            "Open client connections (WebSocket and SSE)",
            value=len(hub.sessions),
        )
        yield GaugeMetricFamily(
            "presence_watched_users", "Distinct users watched on this node", value=len(hub.index)
        )
        yield CounterMetricFamily(
            "presence_messages_sent", "Presence messages handed to sockets", value=hub.sent
        )
        yield CounterMetricFamily(
            "presence_slow_consumer_closes", "Clients closed with 4008", value=hub.slow_closes
        )
        yield CounterMetricFamily(
            "presence_connections_refused",
            "Connections refused with 4009: the user had max_connections_per_user open",
            value=hub.refused,
        )
