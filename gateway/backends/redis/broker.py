"""``RedisBroker``: the feed of published states, from Redis sharded pub/sub (SSUBSCRIBE).

One node feed (a pub/sub connection and the task reading it) per node a wanted channel lives
on, under one listener that reconnects with backoff and resets; see ``RedisBroker``. This
module is the public face (subscribe, unsubscribe, start, close); the feeds, the listener and
the rerouting are ``feeds``, the slot map ``routing``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from gateway.backends.base import MessageHandler, ResetHandler
from gateway.backends.redis.feeds import PING_EVERY_S, SUBSCRIBE_TIMEOUT_S, NodeFeeds, _NodeFeed
from gateway.backends.redis.keys import user_channel
from gateway.backends.redis.timeouts import CONNECT_TIMEOUT_S
from gateway.backends.redis.wire import redact
from gateway.errors import StoreUnavailable


class RedisBroker(NodeFeeds):
    """The feed of published states from Redis sharded pub/sub (standalone or Cluster).

    One pub/sub connection per node (standalone: one; Cluster: one per primary a wanted
    channel lives on, opened as nodes appear), each read by its own task under the listener
    that ``start`` creates and ``close`` ends. Channels follow their slot: when a node drops
    channels (its slot moved: resharding, failover) or its connection fails, those channels
    are subscribed again where the re-read topology (or the node's MOVED reply) says they
    live, with capped jittered backoff while no node takes them, the other connections
    untouched; once all are confirmed, the reset handler runs, as publishes may have been
    missed meanwhile. Anything else goes wrong: every connection is made again, and resets.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: bool,
        prefix: str = "pg",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        ping_every: float = PING_EVERY_S,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self.ping_every = ping_every
        self._wanted: set[bytes] = set()
        self._feeds: dict[str, _NodeFeed] = {}
        self._where: dict[bytes, str] = {}  # channel -> the feed it is (being) subscribed on
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}  # SSUBSCRIBE awaited
        # channels to subscribe again, each with the node a MOVED reply named (or None: ask
        # the topology); ``_awaiting``: sent again, not confirmed yet
        self._pending: dict[bytes, str | None] = {}
        self._awaiting: set[bytes] = set()
        self._changed = asyncio.Event()  # pending or awaiting changed
        self._missed = False  # a subscribed channel was lost: reset once restored
        self._setbacks = 0  # rerouting rounds that failed since the last progress
        self._fresh = False  # the topology was just read: the next round need not again
        self._slots: list[str] = []  # Cluster: the node of each hash slot, as last read
        self._topology: RedisCluster | None = None
        self._options: dict[str, Any] = {}
        self._conn_class: type[Connection] = Connection
        self._standalone = ""  # standalone: the server's address, its feed's name
        self._group: asyncio.TaskGroup | None = None
        self._live = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_message: MessageHandler | None = None
        self._on_reset: ResetHandler | None = None
        self.resets = 0  # feed losses recovered from (tests; the metric is the hub's)
        self._failures = 0  # connection attempts failed in a row
        self._degraded = False  # a loss was logged; the next restore logs once too

    @classmethod
    def from_url(cls, url: str, *, cluster: bool, prefix: str = "pg") -> RedisBroker:
        """A broker on ``url``; with ``cluster`` the URL names any one node of the cluster."""
        return cls(url, cluster=cluster, prefix=prefix)

    @property
    def live(self) -> bool:
        """Whether every wanted channel's node is connected (channels moving aside)."""
        return self._live.is_set()

    def set_handlers(self, on_message: MessageHandler, on_reset: ResetHandler) -> None:
        self._on_message = on_message
        self._on_reset = on_reset

    async def start(self) -> None:
        """Start the listener; return once the feed is live or its first attempt failed."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="redis-broker-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await self._live.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wanted.clear()

    async def subscribe(self, app: str, users: Sequence[str]) -> None:
        """Subscribe ``users``; return once Redis confirmed every subscription.

        Raises ``StoreUnavailable`` when the feed is down or Redis does not confirm in time;
        the users stay wanted, so the next reconnect subscribes them (and resets).
        """
        channels = [user_channel(self.prefix, app, u).encode() for u in users]
        self._wanted.update(channels)
        if not self._live.is_set():
            raise StoreUnavailable("redis feed is down")
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        by_feed: dict[str, list[bytes]] = {}
        for channel in channels:
            by_feed.setdefault(self._route(channel), []).append(channel)
            fut: asyncio.Future[None] = loop.create_future()
            self._confirm.setdefault(channel, []).append(fut)
            waits.append(fut)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                for name, group in by_feed.items():
                    feed = self._feeds.get(name)
                    if feed is None:  # a node not connected yet: the rerouting opens it
                        self._repend(group, name)
                        continue
                    for channel in group:
                        self._where[channel] = name
                    await feed.send("SSUBSCRIBE", group, self._slot_of)
                await asyncio.gather(*waits)
        except (TimeoutError, RedisError, OSError, StoreUnavailable) as exc:
            for fut in waits:
                fut.cancel()
            for channel in channels:
                left = [f for f in self._confirm.get(channel, ()) if not f.done()]
                if left:
                    self._confirm[channel] = left
                else:
                    self._confirm.pop(channel, None)
            reason = redact(f"{type(exc).__name__}: {exc}", self.url)
            raise StoreUnavailable(f"redis subscribe: {reason}") from exc

    async def unsubscribe(self, app: str, users: Sequence[str]) -> None:
        """Stop delivering ``users`` at once; tell Redis without waiting for its answer."""
        channels = [user_channel(self.prefix, app, u).encode() for u in users]
        self._wanted.difference_update(channels)
        by_feed: dict[str, list[bytes]] = {}
        for channel in channels:
            self._pending.pop(channel, None)
            name = self._where.pop(channel, None)
            if name is not None:
                by_feed.setdefault(name, []).append(channel)
        try:
            for name, group in by_feed.items():
                feed = self._feeds.get(name)
                if feed is not None:
                    for channel in group:
                        feed.unsubscribing[channel] = feed.unsubscribing.get(channel, 0) + 1
                    await feed.send("SUNSUBSCRIBE", group, self._slot_of)
        except (RedisError, OSError) as exc:  # the reader notices the connection is gone
            reason = redact(f"{type(exc).__name__}: {exc}", self.url)
            raise StoreUnavailable(f"redis unsubscribe: {reason}") from exc
