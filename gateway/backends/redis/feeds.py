"""``RedisBroker``'s node feeds: a pub/sub connection per node, the listener, the rerouting.

``NodeFeeds`` holds the feeds' part of ``RedisBroker`` (see its doc): routing channels to the
node they live on, the listener that connects, reads and reconnects with backoff, the rerouting
of channels a node dropped or lost, and the dispatch of what the nodes send.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException, RedisError, ResponseError

from gateway.backends.base import MessageHandler, ResetHandler
from gateway.backends.redis.keys import parse_channel
from gateway.backends.redis.routing import SlotRouting
from gateway.backends.redis.wire import redact
from gateway.errors import FeedLost, StoreUnavailable

log = logging.getLogger(__name__)

PING_EVERY_S = 5.0  # a feed silent this long gets a PING; silent twice as long is dead
SUBSCRIBE_TIMEOUT_S = 2.0
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 5.0


SlotOf = Callable[[bytes], int]


class _NodeFeed:
    """One pub/sub connection to one Redis node."""

    def __init__(self, name: str, conn: Connection) -> None:
        self.name = name
        self.conn = conn
        # SUNSUBSCRIBE replies still due per channel: a reply we asked for is not a drop,
        # even when the channel is wanted again by the time it arrives (unwatch, re-watch)
        self.unsubscribing: dict[bytes, int] = {}

    async def send(self, command: str, channels: Sequence[bytes], slot_of: SlotOf) -> None:
        """Send ``command`` for ``channels``: one command per hash slot, in one write.

        Redis Cluster refuses a sharded (un)subscribe whose channels span slots; standalone
        (``slot_of`` constant) takes them all in one command.
        """
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(slot_of(channel), []).append(channel)
        packed = self.conn.pack_commands([(command, *group) for group in by_slot.values()])
        await self.conn.send_packed_command(packed, check_health=False)


class NodeFeeds(SlotRouting):
    """``RedisBroker``'s node feeds: the listener, the rerouting, the dispatch of replies."""

    prefix: str
    ping_every: float
    resets: int
    _wanted: set[bytes]
    _feeds: dict[str, _NodeFeed]
    _where: dict[bytes, str]
    _confirm: dict[bytes, list[asyncio.Future[None]]]
    _pending: dict[bytes, str | None]
    _awaiting: set[bytes]
    _changed: asyncio.Event
    _missed: bool
    _setbacks: int
    _fresh: bool
    _options: dict[str, Any]
    _conn_class: type[Connection]
    _group: asyncio.TaskGroup | None
    _live: asyncio.Event
    _on_message: MessageHandler | None
    _on_reset: ResetHandler | None
    _failures: int
    _degraded: bool

    # routing

    def _repend(self, channels: Sequence[bytes], node: str | None) -> None:
        """Have the rerouting subscribe ``channels`` (at ``node`` if known) again."""
        for channel in channels:
            if channel in self._wanted:
                self._where.pop(channel, None)
                self._awaiting.discard(channel)
                self._pending[channel] = node
        self._changed.set()

    async def _feed(self, name: str) -> _NodeFeed:
        """The feed of node ``name`` ("host:port"), connected now if it was not."""
        feed = self._feeds.get(name)
        if feed is not None:
            return feed
        group = self._group
        if group is None:
            raise FeedLost("the feed is closing")
        conn = await self._open(name)
        feed = self._feeds.get(name)
        if feed is not None:  # opened meanwhile by another caller
            await conn.disconnect(nowait=True)
            return feed
        feed = self._feeds[name] = _NodeFeed(name, conn)
        group.create_task(self._read(feed), name=f"redis-feed {name}")
        return feed

    async def _open(self, name: str) -> Connection:
        """A pub/sub connection to node ``name``, with the URL's settings (TLS, AUTH)."""
        options = dict(self._options)
        if name != options.get("path"):
            host, _, port = name.rpartition(":")
            options.update(host=host, port=int(port))
        conn = self._conn_class(**options)
        try:
            async with asyncio.timeout(self.connect_timeout * 2):
                await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise FeedLost(f"timeout connecting to {name}") from None
            raise
        return conn

    # the listener

    async def _listen(self) -> None:
        """Connect, read, and on any loss reconnect with backoff, forever (until cancelled)."""
        first = True
        while True:
            try:
                await self._connect(first)
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    for feed in self._feeds.values():
                        group.create_task(self._read(feed), name=f"redis-feed {feed.name}")
                    group.create_task(self._reroute(), name="redis-feed-reroute")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                while isinstance(exc, ExceptionGroup):
                    exc = exc.exceptions[0]
                if self._failures == 0 and not self._degraded:
                    if isinstance(exc, FeedLost | RedisError | RedisClusterException | OSError):
                        self._log_lost(exc)
                    else:
                        log.error("redis feed listener failed; restarting it", exc_info=exc)
                self._degraded = True
                self._failures += 1
            finally:
                self._group = None
                await self._disconnect()
            first = False
            await asyncio.sleep(self._backoff(self._failures))

    @staticmethod
    def _backoff(failures: int) -> float:
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(failures, 16))
        return random.uniform(delay / 2, delay)

    def _log_lost(self, exc: BaseException, node: str = "") -> None:
        where = f" ({node})" if node else ""
        reason = redact(f"{type(exc).__name__}: {exc}", self.url)
        log.warning("redis feed lost%s: %s", where, reason)

    async def _connect(self, first: bool) -> None:
        """Read the topology and connect to every primary; every wanted channel is pending."""
        options: dict[str, Any] = dict(parse_url(self.url))
        self._conn_class = options.pop("connection_class", Connection)
        options.update(socket_connect_timeout=self.connect_timeout, socket_timeout=None)
        options["retry"] = Retry(NoBackoff(), 0)  # the listener does the reconnecting
        # RESP2: pub/sub replies are plain arrays read in order. (redis-py 8 speaks RESP3 by
        # default, where they are push frames that read_response does not return.)
        options["protocol"] = 2
        self._options = options
        if self.cluster:
            await self._read_topology()
            nodes = sorted(set(self._slots))
        else:
            host, port = options.get("host", "localhost"), options.get("port", 6379)
            self._standalone = options.get("path") or f"{host}:{port}"
            nodes = [self._standalone]
        for name in nodes:  # their readers start with the listener's task group
            self._feeds[name] = _NodeFeed(name, await self._open(name))
        self._pending = {channel: None for channel in sorted(self._wanted)}
        self._missed = not first
        self._fresh = True

    async def _reroute(self) -> None:
        """Subscribe the pending channels where they live, for as long as the feed runs.

        Rounds follow one another at once while they make progress and with capped jittered
        backoff after a setback (no node takes the channels yet: a failover in progress).
        """
        while True:
            self._changed.clear()
            if self._pending:
                if self._setbacks:
                    await asyncio.sleep(self._backoff(self._setbacks))
                await self._send_pending()
                continue
            if self._awaiting:
                try:
                    async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                        await self._changed.wait()
                except TimeoutError:  # sent, never confirmed: again, from the topology
                    self._setbacks += 1
                    self._repend(sorted(self._awaiting), None)
                continue
            if self._missed or not self._live.is_set():
                await self._restored()
            await self._changed.wait()

    async def _send_pending(self) -> None:
        pending = {c: n for c, n in self._pending.items() if c in self._wanted}
        self._pending = {}
        if self.cluster and not self._fresh and None in pending.values():
            try:
                await self._read_topology()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.debug("redis feed: topology unreadable: %s", redact(str(exc), self.url))
                self._setbacks += 1
                for channel, node in pending.items():
                    self._pending.setdefault(channel, node)
                return
        self._fresh = False
        by_node: dict[str, list[bytes]] = {}
        for channel, node in pending.items():
            by_node.setdefault(node or self._route(channel), []).append(channel)
        for name, group in by_node.items():
            try:
                feed = await self._feed(name)
                for channel in group:
                    self._where[channel] = name
                    self._awaiting.add(channel)
                await feed.send("SSUBSCRIBE", group, self._slot_of)
            except (FeedLost, RedisError, OSError) as exc:
                log.debug("redis feed: %s unreachable: %s", name, redact(str(exc), self.url))
                self._setbacks += 1
                self._repend(group, None)

    async def _restored(self) -> None:
        """Every wanted channel is subscribed: live, and after a loss, reset."""
        self._live.set()
        self._failures = self._setbacks = 0
        if self._degraded:
            self._degraded = False
            log.info("redis feed restored: %d channels subscribed", len(self._wanted))
        if self._missed:
            self._missed = False
            self.resets += 1
            await self._call(self._on_reset)

    async def _read(self, feed: _NodeFeed) -> None:
        """Read one node's feed until its connection fails (or the listener ends)."""
        pinged = False
        try:
            while True:
                try:
                    reply = await feed.conn.read_response(timeout=self.ping_every)
                except ResponseError as exc:  # an SSUBSCRIBE refused: the stream is in step
                    self._refused(feed, exc)
                    continue
                if reply is None:
                    if pinged:
                        raise FeedLost(f"node {feed.name} stopped answering")
                    await feed.conn.send_command("PING", check_health=False)
                    pinged = True
                    continue
                pinged = False
                await self._dispatch(feed, reply)
        except (FeedLost, RedisError, OSError) as exc:
            self._lose(feed, exc)
            with contextlib.suppress(Exception):
                await feed.conn.disconnect(nowait=True)

    def _lose(self, feed: _NodeFeed, exc: BaseException) -> None:
        """A node's connection failed: its channels go where the topology says, when it can."""
        if self._feeds.get(feed.name) is feed:
            del self._feeds[feed.name]
        lost = [channel for channel, name in self._where.items() if name == feed.name]
        if not lost:
            return  # nothing wanted there; a later subscribe connects again
        if not self._degraded:
            self._degraded = True
            self._log_lost(exc, feed.name)
        self._live.clear()
        self._missed = True
        self._setbacks += 1
        self._repend(lost, None)

    def _refused(self, feed: _NodeFeed, exc: ResponseError) -> None:
        """An SSUBSCRIBE refused: MOVED names the slot's node; else ask the topology again."""
        unconfirmed = [
            channel
            for channel, name in self._where.items()
            if name == feed.name and (channel in self._awaiting or channel in self._confirm)
        ]
        self._setbacks += 1
        if isinstance(exc, MovedError):
            node = f"{exc.host}:{exc.port}"
            if self.cluster:
                self._slots[exc.slot_id] = node
            self._repend([c for c in unconfirmed if key_slot(c) == exc.slot_id], node)
        else:  # CLUSTERDOWN and the like: the reply does not say which channels
            log.debug("redis feed: %s refused: %s", feed.name, exc)
            self._repend(unconfirmed, None)

    async def _dispatch(self, feed: _NodeFeed, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return  # +PONG before any subscription
        kind, channel = reply[0], reply[1]
        here = self._where.get(channel) == feed.name
        if kind == b"smessage":
            if here and channel in self._wanted and self._on_message is not None:
                parsed = parse_channel(self.prefix, channel)
                if parsed is not None:
                    await self._call(self._on_message, *parsed, reply[2])
        elif kind == b"ssubscribe":
            if here:
                for fut in self._confirm.pop(channel, []):
                    if not fut.done():
                        fut.set_result(None)
                if channel in self._awaiting:
                    self._awaiting.discard(channel)
                    self._setbacks = 0  # progress
                    self._changed.set()
        elif kind == b"sunsubscribe":
            due = feed.unsubscribing.get(channel, 0)
            if due > 1:
                feed.unsubscribing[channel] = due - 1
            elif due == 1:
                del feed.unsubscribing[channel]
            elif here and channel in self._wanted:
                # Not asked for: the slot moved to another node (resharding, failover).
                self._missed = True
                self._repend([channel], None)

    async def _call(self, handler: Callable[..., Any] | None, *args: Any) -> None:
        """Run a handler; its errors are logged, never allowed to stop the listener."""
        if handler is None:
            return
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("broker handler failed")

    async def _disconnect(self) -> None:
        self._live.clear()
        feeds, self._feeds = self._feeds, {}
        for feed in feeds.values():
            with contextlib.suppress(Exception):
                await feed.conn.disconnect(nowait=True)
        lost = StoreUnavailable("redis feed lost")
        for waiters in self._confirm.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(lost)
                    fut.exception()  # retrieved: no "never retrieved" log if nobody awaits
        self._confirm.clear()
        self._where.clear()
        self._pending.clear()
        self._awaiting.clear()
        topology, self._topology = self._topology, None
        if topology is not None:
            with contextlib.suppress(Exception):
                await topology.aclose()
