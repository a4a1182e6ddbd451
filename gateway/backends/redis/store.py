"""``RedisStore``: the presence map in Redis or Redis Cluster, merged atomically in Lua.

The package, by role: ``keys`` (the layout: keys, channels, hash tags), ``codec`` (device
records), ``scripts`` (the Lua of ``lua/``), ``calls`` (apply.lua's packing, applies sharing a
call, commands by node), ``grace`` (the sweep, its indexes and hints), ``coordination``
(leases, notes, work sets), ``broker`` (the sharded pub/sub feed; ``feeds``: its node
connections, listener and rerouting; ``routing``: its slot map), ``timeouts`` (connecting and
reading), ``wire`` and ``lane`` (our own RESP over one connection per node).

Expiry: while a user has an online device the key never expires; once every device is offline
it expires ``last_seen_retention_s`` after the user's last-seen time (its latest offline
record), the published state and its last-seen with it; tombstones go before that, at the next
apply past ``session_retention_s``. ``MemoryStore`` forgets users at the same time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from time import monotonic
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.backends.base import ApplyResult, PresenceSettings
from gateway.backends.redis.calls import _Queued, _User, _wire, unavailable
from gateway.backends.redis.codec import decode_record
from gateway.backends.redis.coordination import RedisCoordination
from gateway.backends.redis.grace import FULL_PASS_S, GraceSweep
from gateway.backends.redis.keys import grace_index, user_key, user_tag
from gateway.backends.redis.lane import bulk, command
from gateway.backends.redis.scripts import GET
from gateway.backends.redis.timeouts import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S
from gateway.model import MAX_MARKS, DeviceRecord, PresenceEvent, UserState, state_decoder
from gateway.types import clock_ms

_PING = command(b"PING")


class RedisStore(GraceSweep, RedisCoordination):
    """The presence map in Redis (standalone or Cluster); the layout is in ``keys``' doc.

    Commands go over ``wire`` lanes, not redis-py's pipelines: see ``lane``'s doc for why. The
    redis-py ``client`` supplies the connection settings and the Cluster topology.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        settings: PresenceSettings,
        prefix: str = "pg",
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"key prefix must be non-empty without braces: {prefix!r}")
        self.client = client
        self.settings = settings
        self.prefix = prefix
        self._wire = _wire(client)
        self._index = grace_index(prefix).encode()
        max_age = settings.max_event_age_s * 1000
        retention = settings.session_retention_s * 1000
        windows = (
            max_age,
            retention,
            settings.last_seen_retention_s * 1000,
            settings.offline_grace_ms,
            MAX_MARKS,
            settings.future_skew_s * 1000,
            settings.max_devices_per_user,
        )
        self._windows = b"".join(bulk(b"%d" % n) for n in windows)  # apply.lua's ARGV[2..8]
        self._queue: list[_Queued] = []  # applies waiting for the next call (see _queued)
        self._senders: set[asyncio.Task[None]] = set()
        self._applying = 0  # apply calls sent and not answered yet
        self._closed = False
        self._cluster = isinstance(client, RedisCluster)
        self.full_pass_s = FULL_PASS_S  # see sweep
        self._pass_slot = random.randrange(REDIS_CLUSTER_HASH_SLOTS)  # the full pass's cursor
        self._pass_at = monotonic()  # when the full pass last advanced
        self._hint_cache: tuple[list[str], dict[str, bytes]] | None = None
        # webhooks out (gateway/outbound): app -> "<maxlen>,<types>,<groups>" for apply.lua
        self.webhooks: dict[str, bytes] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool,
        settings: PresenceSettings,
        prefix: str = "pg",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        socket_timeout: float = SOCKET_TIMEOUT_S,
    ) -> RedisStore:
        """A store on ``url``; with ``cluster`` the URL names any one node of the cluster.

        Connections are made lazily: constructing the store never fails on a down Redis.
        """
        return cls(
            connect(
                url, cluster=cluster, connect_timeout=connect_timeout, socket_timeout=socket_timeout
            ),
            settings=settings,
            prefix=prefix,
        )

    def key(self, app: str, user: str) -> str:
        return user_key(self.prefix, app, user)

    async def apply(
        self, app: str, events: Sequence[PresenceEvent], now_ms: int | None = None
    ) -> ApplyResult:
        now = clock_ms() if now_ms is None else now_ms
        by_user: dict[str, list[PresenceEvent]] = {}
        for ev in events:
            evs = by_user.get(ev.user)
            if evs is None:
                by_user[ev.user] = [ev]
            else:
                evs.append(ev)
        result = ApplyResult()
        if not by_user:
            return result
        users: list[_User] = [(now, user_tag(app, u), u, evs) for u, evs in by_user.items()]
        hints: dict[int, int] = {}  # Cluster: slot -> the earliest grace end begun there
        with unavailable("apply"):
            replies = await self._queued(users)
            payloads = result.payloads
            for (_, tag, user, _), (applied, ignored, state, grace_end) in zip(
                users, replies, strict=True
            ):
                result.applied += applied
                result.ignored += ignored
                if state is not None:
                    payloads.append((user, state))  # the bytes apply.lua SPUBLISHed
                if grace_end is not None and self._cluster:
                    slot = key_slot(tag.encode())  # the tag is the key's whole hash tag
                    hints[slot] = min(grace_end, hints.get(slot, grace_end))
        if hints:
            await self._hint(hints)
        if self.webhooks and self._cluster:
            await self._hint_webhooks(users, replies)
        return result

    async def get(self, app: str, users: Sequence[str]) -> list[UserState]:
        if not users:
            return []
        keys = [self.key(app, user).encode() for user in users]
        with unavailable("get"):
            groups = await self._groups(keys)
            # A key alone in its slot (the rule on Cluster) costs Redis less as a plain HGET.
            replies = await self._run_calls(
                [
                    (node, GET.call([keys[i] for i in idx]))
                    if len(idx) > 1
                    else (node, command(b"HGET", keys[idx[0]], b"s"))
                    for node, idx in groups
                ]
            )
        raw: list[bytes | None] = [None] * len(users)
        for (_, idx), states in zip(groups, replies, strict=True):
            if len(idx) == 1:
                raw[idx[0]] = states
                continue
            for i, state in zip(idx, states, strict=True):
                raw[i] = state
        return [
            UserState(user) if state is None else state_decoder.decode(state)
            for user, state in zip(users, raw, strict=True)
        ]

    async def records(self, app: str, user: str) -> dict[str, DeviceRecord]:
        key = self.key(app, user).encode()
        with unavailable("records"):
            [flat] = await self._run_node(await self._node(key), [command(b"HGETALL", key)])
        return {
            field[2:].decode(): decode_record(value)
            for field, value in zip(flat[::2], flat[1::2], strict=True)
            if field.startswith(b"d:")
        }

    async def ping(self) -> None:
        with unavailable("ping"):
            nodes = await self._wire.primaries()
            await self._run_calls([(node, _PING) for node in nodes])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        senders = list(self._senders)
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await self._wire.close()
        await self.client.aclose()

    async def claim_request(self, app: str, key: str, digest: bytes, ttl_ms: int) -> bool:
        """One ``SET NX GET PX`` (Redis >= 7.0) on ``<prefix>:n:{<app>/<key>}`` (its own slot)."""
        name = f"{self.prefix}:n:{{{app}/{key}}}".encode()
        claim = command(b"SET", name, digest, b"NX", b"GET", b"PX", b"%d" % max(ttl_ms, 1))
        with unavailable("claim"):
            [held] = await self._run_node(await self._node(name), [claim])
        return held is None or held == digest


def connect(
    url: str,
    *,
    cluster: bool,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    socket_timeout: float | None = SOCKET_TIMEOUT_S,
) -> Redis | RedisCluster:
    """A lazily connecting client for ``url``, with short timeouts and one quick retry."""
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        # One immediate retry on a dropped connection (a pooled connection that went stale in
        # a restart); none on a timeout: the webhook waiting has a 2 s budget.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)
