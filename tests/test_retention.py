"""Last-seen retention (SPEC 4): an offline user's last-seen outlives its device records for
``last_seen_retention_s`` on every backend, then the user reads as unknown again."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis, RedisCluster

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.backends.memory import MemoryStore
from gateway.backends.redis.keys import user_key
from gateway.model import PresenceEvent, UserState
from gateway.types import clock_ms
from tests.conftest import Backend

NOW = 1_763_700_000_000
S = 1000
SHORT = PresenceSettings(session_retention_s=100, max_event_age_s=50, last_seen_retention_s=1000)


def on(user: str, device: str, time: int) -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform="ios", online=True, time=time)


def off(user: str, device: str, time: int) -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform="ios", online=False, time=time)


def raw_client(backend: Backend) -> Redis | RedisCluster:
    assert backend.url is not None
    if backend.name == "cluster":
        return RedisCluster.from_url(backend.url)
    return Redis.from_url(backend.url)


async def test_last_seen_outlives_records_then_user_is_unknown(backend: Backend) -> None:
    """Past session retention the last-seen still reads; past last-seen retention, unknown.

    Real (short) retentions, so Redis's own key expiry is what is checked; the version of
    the user's next state is still above every one published before (model.next_version).
    """
    settings = PresenceSettings(session_retention_s=1, max_event_age_s=1, last_seen_retention_s=3)
    store, app = await backend.store(settings), f"app-{uuid.uuid4().hex[:8]}"
    await store.apply(app, [on("bob", "d1", clock_ms() - 10)])
    seen = clock_ms()
    gone = await store.apply(app, [off("bob", "d1", seen)])
    [offline] = gone.published
    assert (offline.status, offline.since) == ("offline", seen)
    shown_at = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await store.sweep()  # the gateway's sweeper; on memory it also forgets users
        now = clock_ms()
        [state] = await store.get(app, ["bob"])
        if state == UserState("bob"):
            break
        assert state == offline, "last-seen reads unchanged until it expires"
        shown_at = now
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the user was never forgotten")
    assert now > seen + 3 * S - 50, "not forgotten before last_seen_retention"
    assert shown_at is not None and shown_at >= seen + 1 * S, "still there past session retention"
    assert await store.records(app, "bob") == {}
    back = await store.apply(app, [on("bob", "d2", clock_ms())])
    assert back.published[0].v > offline.v, "v stays monotonic after expiry"


async def test_online_user_never_expires(backend: Backend) -> None:
    """A user with a device online is kept whatever its other devices' tombstones say."""
    store, app = await backend.store(SHORT), f"app-{uuid.uuid4().hex[:8]}"
    await store.apply(app, [on("bob", "d1", NOW), off("bob", "d2", NOW)], now_ms=NOW)
    if isinstance(store, MemoryStore):
        await store.sweep(now_ms=NOW + 10 * 1000 * S)
        await store.apply(app, [on("carol", "d1", NOW + 10 * 1000 * S)], NOW + 10 * 1000 * S)
        assert (await store.get(app, ["bob"]))[0].status == "online"
        return
    raw = raw_client(backend)
    try:
        assert await raw.pttl(user_key(backend.prefix, app, "bob")) == -1
    finally:
        await raw.aclose()


async def test_key_ttl_counts_from_last_seen(backend: Backend) -> None:
    """The user goes last_seen_retention after its latest offline, not after the write."""
    if not backend.is_redis:
        return  # the memory store's side: test_memory_forgets_at_last_seen_plus_retention
    store, app = await backend.store(SHORT), f"app-{uuid.uuid4().hex[:8]}"
    raw = raw_client(backend)
    try:
        await store.apply(app, [on("bob", "d1", NOW - 40 * S)], now_ms=NOW)
        await store.apply(app, [off("bob", "d1", NOW - 30 * S)], now_ms=NOW)
        ttl = await raw.pttl(user_key(backend.prefix, app, "bob"))
        assert 1000 * S - 30 * S - 5 * S < ttl <= 1000 * S - 30 * S
    finally:
        await raw.aclose()


async def test_memory_forgets_at_last_seen_plus_retention() -> None:
    """Memory: the user reads until last_seen + retention (as Redis's TTL), unknown after."""
    store: PresenceStore = MemoryStore(SHORT)
    assert isinstance(store, MemoryStore)
    await store.apply("a", [on("bob", "d1", NOW - 40 * S)], now_ms=NOW)
    await store.apply("a", [off("bob", "d1", NOW - 30 * S)], now_ms=NOW)
    expires = NOW - 30 * S + 1000 * S
    await store.sweep(now_ms=NOW + 200 * S)  # past session retention: the last-seen stays
    assert (await store.get("a", ["bob"]))[0].since == NOW - 30 * S
    await store.sweep(now_ms=expires)
    assert (await store.get("a", ["bob"]))[0].since == NOW - 30 * S
    await store.sweep(now_ms=expires + 1)
    assert await store.get("a", ["bob"]) == [UserState("bob")]
    assert len(store) == 0


async def test_memory_expiry_is_exact_on_apply_and_bounded() -> None:
    """Memory: an expired user is new to the next apply; the expiry heap stays one per user."""
    store = MemoryStore(SHORT)
    users = [f"u{i}" for i in range(300)]
    await store.apply("a", [on(u, "d1", NOW) for u in users], now_ms=NOW)
    for i in range(1, 12):  # offline users seen again and again: no new heap entries
        t = NOW + i * S
        await store.apply("a", [off(u, f"d{i}", t) for u in users], now_ms=t)
        assert len(store._expiry) == len(users)
    assert len(store) == len(users)
    later = NOW + 11 * S + 1000 * S + 1
    fresh = await store.apply("a", [on("u0", "d9", later)], now_ms=later)
    assert fresh.published[0].since == later and fresh.published[0].v == later
    assert len(store) < len(users), "an apply drops some expired users too"
    await store.sweep(now_ms=later)
    assert len(store) == 1 and len(store._expiry) == 0  # u0, online: no heap entry left
