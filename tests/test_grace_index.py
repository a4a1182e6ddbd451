"""The offline grace index on Redis and Cluster: written with the mark, spread over slots."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.backends.base import PresenceSettings
from gateway.backends.redis.keys import (
    grace_index,
    hint_key,
    slot_index,
    slot_tag,
    slot_tags,
    user_key,
    user_tag,
)
from gateway.backends.redis.store import RedisStore
from gateway.errors import StoreUnavailable
from gateway.model import PresenceEvent, UserState

pytestmark = pytest.mark.redis

NOW = 1_763_700_000_000
GRACE = 1000
WITH_GRACE = PresenceSettings(offline_grace_ms=GRACE)
TARGETS = [
    pytest.param(False, id="redis"),
    pytest.param(True, id="cluster", marks=pytest.mark.cluster),
]


def on(user: str, time: int) -> PresenceEvent:
    return PresenceEvent(user=user, device="d1", platform="ios", online=True, time=time)


def off(user: str, time: int) -> PresenceEvent:
    return PresenceEvent(user=user, device="d1", platform="ios", online=False, time=time)


class LosingWrites(RedisStore):
    """A store whose every ZADD sent on its own fails, as a write lost after the apply would.

    Script calls go through: only a grace write made outside apply.lua is lost (the index
    write of older versions, or the Cluster hint now).
    """

    async def _run_node(self, node: str, commands: list[bytes]) -> list[Any]:
        if any(b"\r\nZADD\r\n" in cmd[:24] for cmd in commands):
            raise RedisConnectionError("injected: connection lost before the write")
        return await super()._run_node(node, commands)


@pytest.fixture(params=TARGETS)
async def target(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, bool, str, Redis | RedisCluster]]:
    """(url, cluster, a fresh key prefix, a raw client) of standalone Redis or Cluster."""
    cluster: bool = request.param
    url: str = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    raw: Redis | RedisCluster = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    yield url, cluster, f"t{uuid.uuid4().hex[:12]}", raw
    await raw.aclose()


async def sweep_until(stores: Sequence[RedisStore], want: int, now: int) -> int:
    """Sweep with every store at once until ``want`` states were published (or 10 s passed)."""
    published = 0
    deadline = time.monotonic() + 10
    while published < want and time.monotonic() < deadline:
        published += sum(await asyncio.gather(*(s.sweep(now) for s in stores)))
        await asyncio.sleep(0.02)  # the next sweep tick, as the gateway's sweeper has
    return published


def test_slot_tags_hash_to_their_slot() -> None:
    """Every slot has a short tag of its own, so each slot's index lives in that slot."""
    tags = slot_tags()
    assert len(tags) == 16384 and max(map(len, tags)) <= 4
    assert all(key_slot(slot_index("pg", s).encode()) == s for s in (0, 1, 8000, 16383))
    assert key_slot(hint_key("pg", 5).encode()) == 5 and slot_tag(5) == tags[5]


async def test_grace_ends_though_the_write_after_the_apply_fails(
    target: tuple[str, bool, str, Redis | RedisCluster],
) -> None:
    """A grace whose post-apply write was lost still ends, once, with many nodes sweeping.

    The provider does not retry (Tencent by default, OpenIM always), so nothing re-sends the
    offline: the mark and its index entry must have been written in one step.
    """
    url, cluster, prefix, _ = target
    stores = [
        LosingWrites.from_url(url, cluster=cluster, settings=WITH_GRACE, prefix=prefix)
        for _ in range(3)
    ]
    for store in stores:
        store.full_pass_s = 0.2  # Cluster: the pass that finds slots whose hint was lost
    users = [f"u{i}" for i in range(20)]
    try:
        await stores[0].apply("app", [on(u, NOW) for u in users], NOW)
        with contextlib.suppress(StoreUnavailable):  # the provider would see a 503, or not
            await stores[0].apply("app", [off(u, NOW + 1) for u in users], NOW + 1)
        assert {s.status for s in await stores[0].get("app", users)} == {"online"}
        assert await sweep_until(stores, len(users), NOW + 1 + GRACE) == len(users)
        states = await stores[0].get("app", users)
        assert {(s.status, s.since) for s in states} == {("offline", NOW + 1)}
        assert sum(await asyncio.gather(*(s.sweep(NOW + 10 * GRACE) for s in stores))) == 0
    finally:
        for store in stores:
            await store.close()


async def test_cluster_index_is_one_per_slot(redis_cluster_url: str) -> None:
    """On Cluster each user's entry is in its slot's index, on its primary; no single key."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    store = RedisStore.from_url(redis_cluster_url, cluster=True, settings=WITH_GRACE, prefix=prefix)
    raw = RedisCluster.from_url(redis_cluster_url)
    try:
        users = [f"u{i}" for i in range(40)]
        await store.apply("app", [on(u, NOW) for u in users], NOW)
        await store.apply("app", [off(u, NOW + 1) for u in users], NOW + 1)
        slots = {key_slot(user_key(prefix, "app", u).encode()) for u in users}
        for user in users:
            slot = key_slot(user_key(prefix, "app", user).encode())
            score = await raw.zscore(slot_index(prefix, slot), user_tag("app", user))
            assert score == NOW + 1 + GRACE
        assert not await raw.exists(grace_index(prefix))
        owners = {raw.nodes_manager.get_node_from_slot(s).name for s in slots}
        assert len(owners) == 3, "the entries, and the sweeps' work, spread over every primary"
        assert await store.sweep(NOW + 1 + GRACE) == len(users)  # found through the hints
        for slot in slots:
            assert not await raw.exists(slot_index(prefix, slot))
    finally:
        await store.close()
        await raw.aclose()


async def test_index_follows_the_mark(target: tuple[str, bool, str, Redis | RedisCluster]) -> None:
    """A reconnect inside the grace removes the entry with the mark; a new grace adds it back."""
    url, cluster, prefix, raw = target
    store = RedisStore.from_url(url, cluster=cluster, settings=WITH_GRACE, prefix=prefix)
    slot = key_slot(user_key(prefix, "app", "bob").encode())
    index = slot_index(prefix, slot) if cluster else grace_index(prefix)
    try:
        await store.apply("app", [on("bob", NOW)], NOW)
        await store.apply("app", [off("bob", NOW + 1)], NOW + 1)
        assert await raw.zscore(index, "app/bob") == NOW + 1 + GRACE
        await store.apply("app", [on("bob", NOW + 2)], NOW + 2)
        assert await raw.zscore(index, "app/bob") is None
        assert await raw.hget(store.key("app", "bob"), "g") is None
        await store.apply("app", [off("bob", NOW + 3)], NOW + 3)
        assert await raw.zscore(index, "app/bob") == NOW + 3 + GRACE
        assert await store.sweep(NOW + 3 + GRACE) == 1
        assert not await raw.exists(index)
    finally:
        await store.close()


async def test_old_single_index_is_drained(
    target: tuple[str, bool, str, Redis | RedisCluster],
) -> None:
    """Entries an older version wrote to ``<prefix>:grace`` still end their grace (upgrades)."""
    url, cluster, prefix, raw = target
    store = RedisStore.from_url(url, cluster=cluster, settings=WITH_GRACE, prefix=prefix)
    slot = key_slot(user_key(prefix, "app", "bob").encode())
    index = slot_index(prefix, slot) if cluster else grace_index(prefix)
    try:
        await store.apply("app", [on("bob", NOW)], NOW)
        await store.apply("app", [off("bob", NOW + 1)], NOW + 1)
        # What an older node leaves: the mark, and its entry in the single index only.
        await raw.zrem(index, "app/bob")
        await raw.zadd(grace_index(prefix), {"app/bob": NOW + 1 + GRACE})
        assert await store.sweep(NOW + GRACE) == 0
        assert await store.sweep(NOW + 1 + GRACE) == 1
        assert (await store.get("app", ["bob"]))[0] == UserState(
            "bob", "offline", NOW + 1, [], NOW + 1 + GRACE
        )
        assert not await raw.exists(grace_index(prefix))
        assert await store.sweep(NOW + 10 * GRACE) == 0
    finally:
        await store.close()


async def test_retried_webhook_reindexes_a_lost_grace(redis_url: str) -> None:
    """If the grace index entry is lost, the provider's retry of the offline restores it."""
    store = RedisStore.from_url(
        redis_url,
        cluster=False,
        settings=PresenceSettings(offline_grace_ms=1000),
        prefix=f"t{uuid.uuid4().hex[:12]}",
    )
    raw = Redis.from_url(redis_url)
    try:
        await store.apply("app", [on("bob", NOW)], NOW)
        await store.apply("app", [off("bob", NOW + 1)], NOW + 1)
        assert await raw.zscore(f"{store.prefix}:grace", "app/bob") == NOW + 1001
        await raw.delete(f"{store.prefix}:grace")  # e.g. the process died before indexing
        assert await store.sweep(NOW + 5000) == 0
        retry = await store.apply("app", [off("bob", NOW + 1)], NOW + 2)
        assert (retry.applied, retry.published) == (0, [])
        assert await store.sweep(NOW + 5000) == 1
        assert (await store.get("app", ["bob"]))[0].status == "offline"
        assert await raw.zcard(f"{store.prefix}:grace") == 0
    finally:
        await store.close()
        await raw.aclose()
