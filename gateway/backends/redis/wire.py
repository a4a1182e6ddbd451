"""``Wire``: pre-encoded commands routed to ``Lane``s, one lane per Redis node.

What it does: standalone Redis is one lane; Redis Cluster one lane per primary, by hash slot,
following MOVED and ASK (and waiting out TRYAGAIN while a slot migrates), and re-reading the
topology after a MOVED, CLUSTERDOWN, or a failed or timed-out connection. Every lane, to a node
known at startup or one met later (added, promoted, moved), connects with the client's
connection class and settings (TLS, AUTH, timeouts), host and port aside; the lane of a node
that no longer serves slots is closed once its calls are answered. Error replies come back as
exception values (``ResponseError`` and subclasses), in place. ``safe_url`` and ``redact`` keep
a URL's password out of logs and errors.

Why it exists: redis-py's Cluster client opens a connection per call in flight; past
``max_connections`` (100) per node it raises ``MaxConnectionsError``, on which its pipeline
retries after ``aclose()`` of the whole client, disconnecting the other calls in flight, and
its pipeline costs ~100 µs of CPU per call (see ``lane``). The wire takes from the redis-py
client only its connection settings and the Cluster topology.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backends.redis.lane import Lane, command, lane_factory

MAX_REDIRECTS = 3
TRYAGAIN_WAITS_S = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)  # a migrating slot's multi-key call


def safe_url(url: str) -> str:
    """``url`` fit for logs and error messages: any password shown as ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # unparseable (a bad port): keep nothing of it
        return "<redis url>"


def redact(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (and ``url`` itself) masked."""
    text = text.replace(url, safe_url(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    return text


ASKING = command(b"ASKING")


class Wire:
    """The lanes of one redis-py client: one for standalone Redis, one per Cluster primary."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        # Weakly: stores find their wire by client in a WeakKeyDictionary, whose entries
        # would never go if the value held its key.
        self._client = weakref.ref(client)
        self.cluster = isinstance(client, RedisCluster)
        self._lanes: dict[str, Lane] = {}
        self._retired: set[Lane] = set()  # closing once their calls are answered
        self._slots: list[str] = []  # Cluster: the primary's name for each hash slot
        self._stale = True
        self._refreshing: asyncio.Lock | None = None
        # Commands that load what a node lacks when it answers NOSCRIPT after a redirect
        # (a node added or promoted has an empty script cache); the store sets them.
        self.scripts: Sequence[bytes] = ()
        if isinstance(client, Redis):
            pool = client.connection_pool
            self._timeout = pool.connection_kwargs.get("socket_timeout")
            self._connect_timeout = pool.connection_kwargs.get("socket_connect_timeout")
        else:
            self._timeout = client.nodes_manager.connection_kwargs.get("socket_timeout")
            self._connect_timeout = client.nodes_manager.connection_kwargs.get(
                "socket_connect_timeout"
            )

    @property
    def client(self) -> Redis | RedisCluster:
        client = self._client()
        if client is None:
            raise RedisConnectionError("the redis-py client is gone")
        return client

    async def topology(self) -> list[str] | None:
        """For Cluster, the name of the primary serving each hash slot; None for standalone."""
        if not self.cluster:
            return None
        if self._stale:
            await self._refresh()
        return self._slots

    async def primaries(self) -> list[str]:
        """The names of every node that takes writes ("" alone for standalone)."""
        if not self.cluster:
            return [""]
        if self._stale:
            await self._refresh()
        return sorted(set(self._slots))

    def invalidate(self) -> None:
        """Have the next call re-read the Cluster topology."""
        self._stale = self.cluster

    async def run(self, node: str, commands: Sequence[bytes]) -> list[Any]:
        """Run encoded ``commands`` on ``node`` in one write; their replies, in order.

        One retry on a fresh connection when the connection failed (a stale connection after a
        restart); none on a timeout. On Cluster a MOVED or ASK reply is followed to its node,
        TRYAGAIN retried briefly, and any failure has the next call re-read the topology.
        """
        packed = commands[0] if len(commands) == 1 else b"".join(commands)
        try:
            try:
                replies = await self._lane(node).call(packed, len(commands))
            except RedisConnectionError:
                self.invalidate()
                replies = await self._lane(node).call(packed, len(commands))
        except (RedisConnectionError, RedisTimeoutError):
            self.invalidate()
            raise
        if self.cluster:
            for i, reply in enumerate(replies):
                if isinstance(reply, AskError | TryAgainError | ClusterDownError):
                    replies[i] = await self._follow(node, commands[i], reply)
        return replies

    async def close(self) -> None:
        lanes, self._lanes = self._lanes, {}
        retired, self._retired = self._retired, set()
        for lane in [*lanes.values(), *retired]:
            await lane.close()

    async def _follow(self, node: str, cmd: bytes, reply: Any) -> Any:
        """Run ``cmd`` where a MOVED or ASK reply sent it, as many times as it takes (few).

        TRYAGAIN (a multi-key call while its slot migrates) is sent again after a short wait;
        NOSCRIPT on a node redirected to loads the scripts there first.
        """
        asking = False
        redirects = waits = 0
        loaded = False
        while True:
            if isinstance(reply, MovedError):
                self._stale = True  # the slot moved for good: re-read the topology
                node, asking = f"{reply.host}:{reply.port}", False
                redirects += 1
            elif isinstance(reply, AskError):  # ASK: this command, once, on the importing node
                node, asking = f"{reply.host}:{reply.port}", True
                redirects += 1
            elif isinstance(reply, TryAgainError) and waits < len(TRYAGAIN_WAITS_S):
                await asyncio.sleep(TRYAGAIN_WAITS_S[waits])
                waits += 1
            elif isinstance(reply, NoScriptError) and redirects and self.scripts and not loaded:
                loaded = True
                await self._lane(node).call(b"".join(self.scripts), len(self.scripts))
            else:
                if isinstance(reply, ClusterDownError):
                    self._stale = True
                return reply
            if redirects > MAX_REDIRECTS:
                return reply
            if asking:
                [_, reply] = await self._lane(node).call(ASKING + cmd, 2)
            else:
                [reply] = await self._lane(node).call(cmd, 1)

    def _lane(self, node: str) -> Lane:
        lane = self._lanes.get(node)
        if lane is None:
            name = node
            client = self.client
            if isinstance(client, Redis):  # standalone: named by its address, for errors
                kwargs = client.connection_pool.connection_kwargs
                name = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            lane = self._lanes[node] = Lane(
                name,
                self._factory(node),
                timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )
        return lane

    def _factory(self, node: str) -> Callable[[], AbstractConnection]:
        """Connections to ``node`` as the client makes them (class, TLS, AUTH, timeouts).

        On Cluster every node, known at startup or not (added, promoted, readdressed), is
        configured the way redis-py configures the nodes it discovers: from the client's
        shared connection settings with only the address changed.
        """
        client = self.client
        if isinstance(client, Redis):
            pool = client.connection_pool
            return lane_factory(pool.connection_class, pool.connection_kwargs)
        host, _, port = node.rpartition(":")
        made = ClusterNode(host, int(port), **client.nodes_manager.connection_kwargs)
        return lane_factory(made.connection_class, made.connection_kwargs)

    async def _refresh(self) -> None:
        """Read the Cluster topology (once, however many callers want it).

        The lanes of nodes that no longer serve a slot (demoted, removed, readdressed) close
        once their calls are answered; a node met again later gets a fresh lane.
        """
        client = self.client
        assert isinstance(client, RedisCluster)
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if not self._stale:
                return
            if self._slots:  # a refresh: the client knows the nodes already
                await client.nodes_manager.initialize()
            else:
                await client.initialize()
            manager = client.nodes_manager
            self._slots = [
                manager.get_node_from_slot(slot).name for slot in range(REDIS_CLUSTER_HASH_SLOTS)
            ]
            self._stale = False
            serving = set(self._slots)
            self._retired = {lane for lane in self._retired if lane.busy}
            for name in [name for name in self._lanes if name not in serving]:
                lane = self._lanes.pop(name)
                lane.retire()
                if lane.busy:
                    self._retired.add(lane)
