"""Properties of the merge, checked on real stores: order, duplication and replay don't matter.

Times are drawn from a few milliseconds (or seconds) around a fixed ``now`` so ties between
online and offline, and between devices, are common; some histories are long runs of one
device (repeated onlines, offlines landing between them late). Records are compared whole:
the winner and every online and offline time. The since of each state is checked against the
ms-by-ms oracle of ``tests/test_model.py``. Each example uses a fresh app id.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backends.base import ApplyResult, PresenceSettings, PresenceStore
from gateway.backends.memory import MemoryStore
from gateway.backends.redis.store import RedisStore
from gateway.model import (
    MAX_MARKS,
    CustomRecord,
    DeviceRecord,
    PresenceEvent,
    aggregate,
    custom_event,
    merge,
    merge_custom,
    record_of,
)
from tests.conftest import Backend, backend_url
from tests.test_model import oracle_since

NOW = 1_763_700_000_000
S = 1000

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def events(
    times: st.SearchStrategy[int], users: int = 3, devices: int = 3
) -> st.SearchStrategy[PresenceEvent]:
    return st.builds(
        PresenceEvent,
        user=st.sampled_from(["ann", "c{d}/e", "bob"][:users]),
        device=st.sampled_from(["d1", "d2", "d3"][:devices]),
        platform=st.sampled_from(["ios", "web", "android"]),
        online=st.booleans(),
        time=times,
    )


def customs(times: st.SearchStrategy[int], users: int = 3) -> st.SearchStrategy[PresenceEvent]:
    """Custom status events: a few texts (ties between them at one time are common), clears."""
    return st.builds(
        custom_event,
        user=st.sampled_from(["ann", "c{d}/e", "bob"][:users]),
        text=st.sampled_from(["", "Lunch", "In a meeting", "é", 'a"/\\']) | st.none(),
        time=times,
    )


# Streaks: one device, mostly onlines (OpenIM's re-sends, Tencent's Login with no Disconnect)
# with offlines among them, so offlines often arrive after later onlines.
STREAKS = st.lists(
    st.builds(
        PresenceEvent,
        user=st.just("ann"),
        device=st.just("d1"),
        platform=st.sampled_from(["ios", "web"]),
        online=st.sampled_from([True, True, False]),
        time=st.integers(NOW - 8, NOW + 8),
    ),
    min_size=2,
    max_size=16,
)
HISTORIES = (
    st.lists(
        events(st.integers(NOW - 4, NOW + 4)) | customs(st.integers(NOW - 4, NOW + 4)),
        min_size=1,
        max_size=16,
    )
    | STREAKS
)


def final_records(history: Sequence[PresenceEvent]) -> dict[str, dict[str, DeviceRecord]]:
    """The records the pure model gives (untrimmed): every device's events merged."""
    out: dict[str, dict[str, DeviceRecord]] = {}
    for ev in history:
        records = out.setdefault(ev.user, {})
        if ev.custom is None:
            records[ev.device] = merge(records.get(ev.device), record_of(ev))
    return out


def final_custom(history: Sequence[PresenceEvent], user: str) -> str | None:
    """The custom status the pure model gives ``user``: the max of its custom events."""
    custom: CustomRecord | None = None
    for ev in history:
        if ev.user == user and ev.custom is not None:
            custom = merge_custom(custom, (ev.time, ev.custom))
    return custom[1] or None if custom is not None else None


def devices_of(history: Sequence[PresenceEvent], user: str) -> list[PresenceEvent]:
    """``user``'s device events (the custom events left out)."""
    return [ev for ev in history if ev.user == user and ev.custom is None]


class Replayer:
    """Applies batches to one store, checking that ``v`` only ever goes up."""

    def __init__(self, store: PresenceStore) -> None:
        self.store = store
        self.app = f"p{uuid.uuid4().hex[:10]}"
        self.last_v: dict[str, int] = {}
        self.calls = 0

    async def apply(self, batch: Sequence[PresenceEvent], now: int | None = None) -> ApplyResult:
        self.calls += 1
        now = NOW + 10 + self.calls if now is None else now
        result = await self.store.apply(self.app, batch, now_ms=now)
        assert len({s.user for s in result.published}) == len(result.published)
        for state in result.published:
            assert state.v > self.last_v.get(state.user, 0)
            self.last_v[state.user] = state.v
        for state in await self.store.get(self.app, [ev.user for ev in batch]):
            assert state.v == self.last_v.get(state.user, 0)
        return result

    async def sweep(self, now: int) -> int:
        """End due offline graces; every user's ``v`` is then at least what it was."""
        published = await self.store.sweep(now)
        for state in await self.store.get(self.app, list(self.last_v)):
            assert state.v >= self.last_v[state.user]
            self.last_v[state.user] = state.v
        return published


def batches(data: st.DataObject, items: list[PresenceEvent]) -> list[list[PresenceEvent]]:
    """Split ``items`` into consecutive non-empty batches at drawn points."""
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(items) - 1)), max_size=5)))
    bounds = [0, *(c for c in cuts if c < len(items)), len(items)]
    return [items[a:b] for a, b in itertools.pairwise(bounds) if a < b]


@EXAMPLES
@given(data=st.data())
async def test_any_order_and_duplication_same_outcome(
    store: PresenceStore, data: st.DataObject
) -> None:
    """A shuffled, duplicated, re-batched history (custom events among the device events) ends
    in the same records and visible state, custom included."""
    history = data.draw(HISTORIES)
    in_order, mixed = Replayer(store), Replayer(store)
    for ev in history:
        await in_order.apply([ev])
    extra = data.draw(st.lists(st.sampled_from(history), max_size=8))
    for batch in batches(data, data.draw(st.permutations(history + extra))):
        await mixed.apply(batch)

    expected = final_records(history)
    for user, records in expected.items():
        assert await store.records(in_order.app, user) == records
        assert await store.records(mixed.app, user) == records
        shown = aggregate(user, records.values())
        want = msgspec.structs.replace(shown, custom=final_custom(history, user)).visible()
        [a] = await store.get(in_order.app, [user])
        [b] = await store.get(mixed.app, [user])
        assert a.visible() == b.visible() == want
        if devices_of(history, user):
            assert (a.status == "online", a.since) == oracle_since(devices_of(history, user), 0)


@EXAMPLES
@given(data=st.data())
async def test_replayed_old_online_never_resurrects(
    store: PresenceStore, data: st.DataObject
) -> None:
    """After a device's offline, an older online never brings it back: replays (custom events
    included) change nothing, and new older onlines change neither status nor platforms (only
    history, maybe since)."""
    history = data.draw(HISTORIES)
    replayer = Replayer(store)
    await replayer.apply(history)
    before = {u: await store.records(replayer.app, u) for u in final_records(history)}
    replay = [
        PresenceEvent(user, device, data.draw(st.sampled_from(["ios", "web"])), True, t)
        for user, records in before.items()
        for device, rec in records.items()
        if not rec.online
        for t in {rec.time - 1, rec.time - 3}
    ] + [ev for ev in history if ev.online]
    if not replay:
        return
    states = await store.get(replayer.app, list(before))
    resent = [ev for ev in history if ev.online or ev.custom is not None]
    result = await replayer.apply(data.draw(st.permutations(resent)))
    assert (result.applied, result.published) == (0, [])
    result = await replayer.apply(data.draw(st.permutations(replay)))
    for state, (user, records) in zip(states, before.items(), strict=True):
        if not records:
            continue  # custom events only
        after = await store.records(replayer.app, user)
        assert {d: r.rank() for d, r in after.items()} == {d: r.rank() for d, r in records.items()}
        [now] = await store.get(replayer.app, [user])
        assert (now.status, [d.platform for d in now.devices]) == (
            state.status,
            [d.platform for d in state.devices],
        )
        if state.status == "offline":
            assert now == state


SHORT = PresenceSettings(max_event_age_s=3)


@pytest.fixture
async def short_window(backend: Backend) -> PresenceStore:
    """A store on the parametrized backend that accepts events up to 3 s from its clock."""
    return await backend.store(SHORT)


@EXAMPLES
@given(data=st.data())
async def test_trimmed_records_keep_the_full_since(
    short_window: PresenceStore, data: st.DataObject
) -> None:
    """With the clock moving on and every event fresh, trimming never changes what shows.

    (Each device keeps one platform here: compaction files a device's folded history under its
    platform at the time, the one approximation left for a device that changes platform.)"""
    replayer = Replayer(short_window)
    step = st.sampled_from([0, 1, 999, 1500, 3000])
    templates = st.lists(events(st.integers(-3000, 1000), 2, 2), min_size=1, max_size=3)
    plan = data.draw(
        st.lists(st.tuples(step, templates, st.lists(st.integers(0, 99))), max_size=12)
    )
    history: list[PresenceEvent] = []
    now = NOW
    for advance, template, replays in plan:
        now += advance
        batch = [
            msgspec.structs.replace(ev, time=now + ev.time, platform=f"p-{ev.device}")
            for ev in template
        ]
        # Re-sends of earlier events that are still inside the window.
        batch += [history[i % len(history)] for i in replays if history]
        batch = [ev for ev in batch if abs(ev.time - now) <= 3000]
        history += batch
        await replayer.apply(batch, now)
    for user, full in final_records(history).items():
        [state] = await short_window.get(replayer.app, [user])
        assert state.visible() == aggregate(user, full.values()).visible()
        records = await short_window.records(replayer.app, user)
        assert set(records) == set(full)
        for device, record in records.items():
            assert record.rank() == full[device].rank()
            assert record.since() == full[device].since()
            assert set(record.ons) <= set(full[device].ons)
            assert set(record.offs) <= set(full[device].offs)


# Event times seconds apart, a 3 s event window (1 s ahead) and a 2 s retention: staleness and
# tombstone pruning happen often; a 1.5 s offline grace, swept at random times; and at most 2
# device records per user, of 3 devices.
WINDOWS = PresenceSettings(
    session_retention_s=2,
    max_event_age_s=3,
    offline_grace_ms=1500,
    future_skew_s=1,
    max_devices_per_user=2,
)


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
    ]
)
async def redis_store(request: pytest.FixtureRequest) -> AsyncIterator[RedisStore]:
    """A Redis store (standalone or cluster) with short windows, to compare with memory."""
    backend = Backend(request.param, backend_url(request, request.param))
    store = await backend.store(WINDOWS)
    assert isinstance(store, RedisStore)
    yield store
    await backend.aclose()


def by_user(result: ApplyResult) -> ApplyResult:
    """``result`` with its states sorted by user: publish order across users is unspecified."""
    return ApplyResult(
        result.applied, result.ignored, sorted(result.published, key=lambda s: s.user)
    )


@settings(EXAMPLES, max_examples=100)
@given(data=st.data())
async def test_memory_and_redis_agree(redis_store: RedisStore, data: st.DataObject) -> None:
    """Memory and Redis agree on every result: windows, pruning, offline grace and custom
    status events among the device events included."""
    # A prefix per example: the grace index is per prefix, and must hold this example only.
    fresh = RedisStore(redis_store.client, settings=WINDOWS, prefix=f"p{uuid.uuid4().hex[:10]}")
    memory, redis = Replayer(MemoryStore(WINDOWS)), Replayer(fresh)
    # The clock moves forward in steps around the grace; each batch's event times are whole
    # seconds around its now (ties are common), some outside the window.
    step = st.sampled_from([0, 1, 700, 1499, 1500, 2500])
    templates = st.lists(
        events(st.integers(-4, 2), 2, 3) | customs(st.integers(-4, 2), 2), min_size=1, max_size=4
    )
    plan = data.draw(st.lists(st.tuples(step, templates, st.none() | step), max_size=12))
    history: list[PresenceEvent] = []
    now = NOW
    for advance, template, sweep_after in plan:
        now += advance
        batch = [msgspec.structs.replace(ev, time=now + ev.time * S) for ev in template]
        history += batch
        assert by_user(await memory.apply(batch, now)) == by_user(await redis.apply(batch, now))
        if sweep_after is not None:
            now += sweep_after
            assert await memory.sweep(now) == await redis.sweep(now)
    for user in final_records(history):
        want = await memory.store.records(memory.app, user)
        assert await redis.store.records(redis.app, user) == want
        assert await redis.store.get(redis.app, [user]) == await memory.store.get(
            memory.app, [user]
        )


FLOODS = PresenceSettings(max_event_age_s=3, offline_grace_ms=1500, max_devices_per_user=3)


@settings(EXAMPLES, max_examples=30)
@given(data=st.data())
async def test_memory_and_redis_agree_on_floods(
    redis_store: RedisStore, data: st.DataObject
) -> None:
    """Batches past the caps (marks per record, records per user) are bounded alike."""
    fresh = RedisStore(redis_store.client, settings=FLOODS, prefix=f"p{uuid.uuid4().hex[:10]}")
    memory, redis = Replayer(MemoryStore(FLOODS)), Replayer(fresh)
    flood = st.builds(
        PresenceEvent,
        user=st.just("ann"),
        device=st.sampled_from([f"d{i}" for i in range(12)]) | st.just("d0"),
        platform=st.sampled_from(["ios", "web"]),
        online=st.booleans(),
        time=st.integers(-3000, 0),
    )
    # One device past twice the marks cap within a batch: unique times, online or not.
    burst = st.lists(st.tuples(st.integers(-3000, 0), st.booleans()), min_size=70, max_size=100)
    now = NOW
    for advance in data.draw(st.lists(st.sampled_from([0, 999, 2500]), min_size=1, max_size=3)):
        now += advance
        template = data.draw(st.lists(flood, min_size=20, max_size=160))
        template += [PresenceEvent("ann", "d0", "ios", o, t) for t, o in data.draw(burst)]
        template = data.draw(st.permutations(template))
        batch = [msgspec.structs.replace(ev, time=now + ev.time) for ev in template]
        assert by_user(await memory.apply(batch, now)) == by_user(await redis.apply(batch, now))
    records = await memory.store.records(memory.app, "ann")
    assert len(records) <= 3
    assert all(len(r.ons) + len(r.offs) <= 2 * MAX_MARKS for r in records.values())
    assert await redis.store.records(redis.app, "ann") == records
    assert await redis.store.get(redis.app, ["ann"]) == await memory.store.get(memory.app, ["ann"])
