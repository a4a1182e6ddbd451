"""Merge semantics at the edges (SPEC section 4), on memory, Redis and Redis Cluster: the since of
a continuous online period, events stamped in the future, and the per-user device cap."""

from __future__ import annotations

import random
import uuid

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.model import MAX_MARKS, DeviceView, PresenceEvent, UserState, state_decoder
from tests.conftest import Backend

NOW = 1_763_700_000_000
S = 1000


def new_app() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def on(user: str, device: str, platform: str, time: int) -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform=platform, online=True, time=time)


def off(user: str, device: str, platform: str, time: int) -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform=platform, online=False, time=time)


# -- since: the start of the continuous online period ----------------------------------------


async def test_handover_between_devices_publishes_nothing(backend: Backend) -> None:
    """A second phone coming online and the first then going offline shows no change at all."""
    store, app = await backend.store(), new_app()
    inbox = await backend.listen(store, app, "bob")
    first = await store.apply(app, [on("bob", "old", "ios", NOW - 9 * S)], now_ms=NOW)
    assert state_decoder.decode(await inbox.next()) == first.published[0]
    second = await store.apply(app, [on("bob", "new", "ios", NOW - 5 * S)], now_ms=NOW + 1)
    gone = await store.apply(app, [off("bob", "old", "ios", NOW - 2 * S)], now_ms=NOW + 2)
    assert (second.published, gone.published) == ([], [])
    assert await store.get(app, ["bob"]) == first.published
    # The next real change is the very next message, since still the first phone's online.
    later = await store.apply(app, [on("bob", "pc", "web", NOW - S)], now_ms=NOW + 3)
    got = state_decoder.decode(await inbox.next())
    assert got == later.published[0] and got.since == NOW - 9 * S
    assert got.devices == [DeviceView("ios", NOW - 9 * S), DeviceView("web", NOW - S)]


async def test_other_device_keeps_the_user_since(store: PresenceStore) -> None:
    """Laptop online, phone online, laptop offline: the user stays online since the laptop."""
    app = new_app()
    await store.apply(app, [on("bob", "laptop", "mac", NOW - 9 * S)], now_ms=NOW)
    await store.apply(app, [on("bob", "phone", "ios", NOW - 5 * S)], now_ms=NOW)
    result = await store.apply(app, [off("bob", "laptop", "mac", NOW - 2 * S)], now_ms=NOW + 1)
    assert result.published == [
        UserState("bob", "online", NOW - 9 * S, [DeviceView("ios", NOW - 5 * S)], NOW + 2)
    ]


GRACE = 5 * S


async def test_gap_within_grace_keeps_since(backend: Backend) -> None:
    """An offline gap shorter than the grace (never shown) does not restart the period."""
    store, app = await backend.store(PresenceSettings(offline_grace_ms=GRACE)), new_app()
    await store.apply(app, [on("bob", "s1", "web", NOW - 60 * S)], now_ms=NOW - 60 * S)
    await store.apply(app, [off("bob", "s1", "web", NOW - 30 * S)], now_ms=NOW - 30 * S)
    back = await store.apply(app, [on("bob", "s2", "web", NOW - 27 * S)], now_ms=NOW - 27 * S)
    assert back.published == []
    assert await store.sweep(now_ms=NOW) == 0
    result = await store.apply(app, [on("bob", "d3", "ios", NOW)], now_ms=NOW)
    assert result.published == [
        UserState(
            "bob",
            "online",
            NOW - 60 * S,
            [DeviceView("ios", NOW), DeviceView("web", NOW - 60 * S)],
            NOW,
        )
    ]


async def test_since_survives_compaction(store: PresenceStore) -> None:
    """Laptop and phone overlapping for hours: since stays the first online after the history
    older than max_event_age has been compacted away."""
    app = new_app()
    step = 7 * 60 * S  # each device flaps every 14 minutes, the other one covering it
    start = NOW - 40 * step
    await store.apply(app, [on("bob", "laptop", "mac", start)], now_ms=start)
    for k in range(1, 40):
        t = start + k * step
        device, other = ("phone", "laptop") if k % 2 else ("laptop", "phone")
        platform = "ios" if device == "phone" else "mac"
        other_platform = "mac" if platform == "ios" else "ios"
        batch = [on("bob", device, platform, t)]
        if k > 1:
            batch.append(off("bob", other, other_platform, t + 1))
        result = await store.apply(app, batch, now_ms=t + 1)
        assert all(s.since == start for s in result.published)
    [bob] = await store.get(app, ["bob"])
    assert (bob.status, bob.since) == ("online", start)
    records = await store.records(app, "bob")
    assert all(len(r.ons) + len(r.offs) <= 2 for r in records.values())


# -- future_skew_s ----------------------------------------------------------------------------


async def test_future_stamped_event_is_ignored(store: PresenceStore) -> None:
    """An event stamped more than future_skew_s ahead is ignored and cannot beat later events."""
    app = new_app()
    ahead = await store.apply(app, [off("bob", "d1", "ios", NOW + 590 * S)], now_ms=NOW)
    assert (ahead.applied, ahead.ignored, ahead.published) == (0, 1, [])
    assert await store.records(app, "bob") == {}
    genuine = await store.apply(app, [on("bob", "d1", "ios", NOW + 10 * S)], now_ms=NOW + 10 * S)
    assert [s.status for s in genuine.published] == ["online"]
    edge = await store.apply(app, [on("ann", "d1", "ios", NOW + 60 * S)], now_ms=NOW)
    assert (edge.applied, edge.ignored) == (1, 0)  # exactly future_skew_s ahead: accepted
    late = await store.apply(app, [off("bob", "d1", "ios", NOW + 5 * S)], now_ms=NOW + 11 * S)
    assert late.published == []  # older than the genuine online: bob stays online


# -- max_devices_per_user ---------------------------------------------------------------------


async def test_device_cap_keeps_newest_online_records(store: PresenceStore) -> None:
    """A batch with 1,000 devices of one user leaves 64 records: the online with the newest
    times, every offline one dropped first."""
    app = new_app()
    rng = random.Random(7)
    times = rng.sample(range(NOW - 500 * S, NOW), 1000)
    batch = [
        (on if i % 3 else off)("bob", f"s-{i}", ("ios", "web")[i % 2], t)
        for i, t in enumerate(times)
    ]
    result = await store.apply(app, batch, now_ms=NOW)
    assert result.applied == 1000
    records = await store.records(app, "bob")
    onlines = sorted((ev for ev in batch if ev.online), key=lambda ev: ev.time)
    assert set(records) == {ev.device for ev in onlines[-64:]}
    assert all(r.online for r in records.values())
    [bob] = await store.get(app, ["bob"])
    assert (bob.status, bob.since) == ("online", onlines[-64].time)
    assert bob.devices == [
        DeviceView(p, min(ev.time for ev in onlines[-64:] if ev.platform == p))
        for p in ("ios", "web")
    ]
    # A new device then drops the oldest online one, and only that one.
    await store.apply(app, [on("bob", "pc", "windows", NOW)], now_ms=NOW + 1)
    records = await store.records(app, "bob")
    assert set(records) == {"pc"} | {ev.device for ev in onlines[-63:]}


async def test_device_cap_drops_oldest_offline_first(backend: Backend) -> None:
    """Beyond the cap the oldest offline record goes first, then the oldest online."""
    store, app = await backend.store(PresenceSettings(max_devices_per_user=3)), new_app()
    batch = [
        on("bob", "a", "ios", NOW - 9 * S),
        off("bob", "b", "web", NOW - 8 * S),
        off("bob", "c", "web", NOW - 2 * S),
    ]
    await store.apply(app, batch, now_ms=NOW)
    await store.apply(app, [on("bob", "d", "mac", NOW - S)], now_ms=NOW)
    assert set(await store.records(app, "bob")) == {"a", "c", "d"}
    await store.apply(app, [on("bob", "e", "mac", NOW)], now_ms=NOW)
    assert set(await store.records(app, "bob")) == {"a", "d", "e"}
    await store.apply(app, [on("bob", "f", "pc", NOW)], now_ms=NOW)
    assert set(await store.records(app, "bob")) == {"d", "e", "f"}


async def test_flood_of_one_device_stays_bounded(store: PresenceStore) -> None:
    """15,000 events of one device in one batch, in any order, leave a record of few marks."""
    app = new_app()
    rng = random.Random(3)
    batch = [
        (on if rng.random() < 0.7 else off)("bob", "d1", "ios", NOW - rng.randrange(500 * S))
        for _ in range(15_000)
    ]
    await store.apply(app, batch, now_ms=NOW)
    record = (await store.records(app, "bob"))["d1"]
    assert len(record.ons) + len(record.offs) <= MAX_MARKS
    last = max(batch, key=lambda ev: (ev.time, ev.online))
    assert (record.time, record.online) == (last.time, last.online)
