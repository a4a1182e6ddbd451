"""The PresenceStore contract (SPEC section 4), run against memory, Redis and Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from redis.crc import key_slot

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.backends.redis.keys import user_key
from gateway.model import DeviceView, PresenceEvent, UserState, state_decoder, state_encoder
from tests.conftest import Backend

NOW = 1_763_700_000_000
S = 1000  # one second in ms


def new_app() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def on(user: str, device: str, platform: str, time: int) -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform=platform, online=True, time=time)


def off(user: str, device: str, platform: str, time: int, reason: str = "") -> PresenceEvent:
    return PresenceEvent(user, device, platform, online=False, time=time, reason=reason)


async def test_unknown_user_is_offline_since_null_v0(store: PresenceStore) -> None:
    """A user the store never heard of comes back as the default state."""
    app = new_app()
    assert await store.get(app, ["ghost"]) == [UserState("ghost")]
    assert await store.records(app, "ghost") == {}


async def test_online_then_offline(store: PresenceStore) -> None:
    """One device going online then offline shows online since its time, then last seen."""
    app = new_app()
    first = await store.apply(app, [on("bob", "d1", "ios", NOW - 10 * S)], now_ms=NOW)
    assert first.applied == 1 and first.ignored == 0
    online = UserState("bob", "online", NOW - 10 * S, [DeviceView("ios", NOW - 10 * S)], NOW)
    assert first.published == [online]
    second = await store.apply(app, [off("bob", "d1", "ios", NOW - 5 * S)], now_ms=NOW + 1)
    assert second.published == [UserState("bob", "offline", NOW - 5 * S, [], NOW + 1)]
    assert await store.get(app, ["bob"]) == second.published


async def test_logout_is_offline(store: PresenceStore) -> None:
    """A logout event (offline with reason) takes the device offline like any offline."""
    app = new_app()
    await store.apply(app, [on("bob", "d1", "web", NOW - 2 * S)], now_ms=NOW)
    result = await store.apply(app, [off("bob", "d1", "web", NOW - S, "logout")], now_ms=NOW)
    assert [s.status for s in result.published] == ["offline"]
    assert result.published[0].since == NOW - S


async def test_multi_device_since_and_devices(store: PresenceStore) -> None:
    """Online while any device is; since is when the first came online; devices sorted."""
    app = new_app()
    result = await store.apply(
        app,
        [on("bob", "d1", "web", NOW - 3 * S), on("bob", "d2", "android", NOW - 7 * S)],
        now_ms=NOW,
    )
    state = result.published[-1]
    assert state.status == "online" and state.since == NOW - 7 * S
    assert state.devices == [DeviceView("android", NOW - 7 * S), DeviceView("web", NOW - 3 * S)]
    result = await store.apply(app, [off("bob", "d2", "android", NOW - S)], now_ms=NOW)
    assert result.published[0].since == NOW - 7 * S  # online all along: since does not move
    assert result.published[0].devices == [DeviceView("web", NOW - 3 * S)]


async def test_platform_dedup_keeps_earliest(store: PresenceStore) -> None:
    """Two online devices of one platform show as one entry with the earliest time."""
    app = new_app()
    result = await store.apply(
        app,
        [on("bob", "phone-a", "ios", NOW - 2 * S), on("bob", "phone-b", "ios", NOW - 9 * S)],
        now_ms=NOW,
    )
    assert result.published[-1].devices == [DeviceView("ios", NOW - 9 * S)]
    assert len(await store.records(app, "bob")) == 2


async def test_offline_since_is_latest_offline(store: PresenceStore) -> None:
    """With every device offline, since is the latest offline time (last seen)."""
    app = new_app()
    await store.apply(
        app,
        [
            on("bob", "d1", "ios", NOW - 20 * S),
            on("bob", "d2", "web", NOW - 19 * S),
            off("bob", "d2", "web", NOW - 4 * S),
            off("bob", "d1", "ios", NOW - 8 * S),
        ],
        now_ms=NOW,
    )
    assert await store.get(app, ["bob"]) == [UserState("bob", "offline", NOW - 4 * S, [], NOW)]


async def test_one_publish_per_user_per_call(store: PresenceStore) -> None:
    """Several events of one user in one call publish at most one state: the final one."""
    app = new_app()
    result = await store.apply(
        app,
        [on("bob", "d1", "ios", NOW - 3 * S), off("bob", "d1", "ios", NOW - 2 * S)],
        now_ms=NOW,
    )
    assert result.applied == 2
    assert result.published == [UserState("bob", "offline", NOW - 2 * S, [], NOW)]


async def test_duplicates_publish_nothing(backend: Backend) -> None:
    """Applying the same events again changes nothing and sends nothing to subscribers."""
    store, app = await backend.store(), new_app()
    inbox = await backend.listen(store, app, "bob")
    batch = [on("bob", "d1", "ios", NOW - 3 * S), on("bob", "d2", "web", NOW - 2 * S)]
    first = await store.apply(app, batch, now_ms=NOW)
    assert state_decoder.decode(await inbox.next()) == first.published[0]
    again = await store.apply(app, batch + batch, now_ms=NOW + 5)
    assert (again.applied, again.ignored, again.published) == (0, 4, [])
    # A later real change is the very next message: nothing was published in between.
    later = await store.apply(app, [off("bob", "d1", "ios", NOW - S)], now_ms=NOW + 9)
    assert state_decoder.decode(await inbox.next()) == later.published[0]


async def test_version_strictly_increases(store: PresenceStore) -> None:
    """Every publish has v = max(previous v + 1, now), so v strictly increases."""
    app = new_app()
    seen: list[int] = []
    for i, now in enumerate([NOW, NOW, NOW - 50 * S, NOW + 3]):
        event = on if i % 2 == 0 else off
        result = await store.apply(app, [event("bob", "d1", "ios", NOW - 100 * S + i)], now)
        assert len(result.published) == 1
        seen.append(result.published[0].v)
    assert seen == [NOW, NOW + 1, NOW + 2, NOW + 3]


async def test_publish_only_on_visible_change(store: PresenceStore) -> None:
    """A record change that watchers cannot see (same platform, later time) publishes nothing."""
    app = new_app()
    await store.apply(app, [on("bob", "d1", "ios", NOW - 9 * S)], now_ms=NOW)
    hidden = await store.apply(app, [on("bob", "d2", "ios", NOW - 5 * S)], now_ms=NOW + 1)
    assert hidden.applied == 1 and hidden.published == []
    hidden = await store.apply(app, [off("bob", "d2", "ios", NOW - 4 * S)], now_ms=NOW + 2)
    assert hidden.applied == 1 and hidden.published == []
    visible = await store.apply(app, [on("bob", "d3", "web", NOW - 3 * S)], now_ms=NOW + 3)
    assert [s.v for s in visible.published] == [NOW + 3]
    assert (await store.get(app, ["bob"]))[0].devices == [
        DeviceView("ios", NOW - 9 * S),
        DeviceView("web", NOW - 3 * S),
    ]


async def test_events_outside_max_age_ignored(backend: Backend) -> None:
    """Events further than max_event_age from now, past or future, are ignored."""
    store = await backend.store(PresenceSettings(max_event_age_s=60))
    app = new_app()
    result = await store.apply(
        app,
        [
            on("bob", "d1", "ios", NOW - 60 * S - 1),
            on("bob", "d2", "web", NOW + 60 * S + 1),
            on("carol", "d1", "ios", NOW - 60 * S),
        ],
        now_ms=NOW,
    )
    assert (result.applied, result.ignored) == (1, 2)
    assert [s.user for s in result.published] == ["carol"]
    assert await store.get(app, ["bob"]) == [UserState("bob")]
    assert await store.records(app, "bob") == {}


async def test_tombstone_beats_older_late_online(store: PresenceStore) -> None:
    """A late online older than the device's offline cannot resurrect the device."""
    app = new_app()
    await store.apply(app, [off("bob", "d1", "ios", NOW - 5 * S)], now_ms=NOW)
    late = await store.apply(app, [on("bob", "d1", "ios", NOW - 6 * S)], now_ms=NOW + 1)
    assert late.published == []  # kept as history (an interval that ended), never shown
    assert (await store.get(app, ["bob"]))[0].status == "offline"
    assert not (await store.records(app, "bob"))["d1"].online


async def test_online_wins_ties(store: PresenceStore) -> None:
    """Online and offline of one device at the same time end online, in either order."""
    app = new_app()
    t = NOW - 5 * S
    await store.apply(app, [off("a", "d1", "ios", t), on("a", "d1", "ios", t)], now_ms=NOW)
    await store.apply(app, [on("b", "d1", "ios", t), off("b", "d1", "ios", t)], now_ms=NOW)
    states = await store.get(app, ["a", "b"])
    assert [s.status for s in states] == ["online", "online"]
    assert [s.since for s in states] == [t, t]


async def test_tombstones_pruned_after_retention(backend: Backend) -> None:
    """Offline records older than session_retention are dropped at the next apply."""
    store = await backend.store(PresenceSettings(session_retention_s=100, max_event_age_s=50))
    app = new_app()
    await store.apply(
        app, [on("bob", "d1", "ios", NOW - 10 * S), off("bob", "d1", "ios", NOW)], now_ms=NOW
    )
    await store.apply(app, [on("bob", "d2", "web", NOW + 100 * S)], now_ms=NOW + 100 * S)
    assert set(await store.records(app, "bob")) == {"d1", "d2"}  # exactly at the cutoff: kept
    later = NOW + 100 * S + 1
    await store.apply(app, [off("bob", "d2", "web", later)], now_ms=later)
    records = await store.records(app, "bob")
    assert set(records) == {"d2"} and not records["d2"].online


# -- since: when the current status began ---------------------------------------------------

MIN = 60 * S


async def test_repeated_online_keeps_since_and_publishes_nothing(backend: Backend) -> None:
    """A later online of a device already online (OpenIM's re-send) publishes nothing."""
    store, app = await backend.store(), new_app()
    inbox = await backend.listen(store, app, "bob")
    first = await store.apply(app, [on("bob", "2", "android", NOW - 9 * MIN)], now_ms=NOW)
    assert state_decoder.decode(await inbox.next()) == first.published[0]
    resent = await store.apply(app, [on("bob", "2", "android", NOW)], now_ms=NOW + 1)
    assert (resent.applied, resent.published) == (1, [])
    assert await store.get(app, ["bob"]) == first.published
    assert (await store.records(app, "bob"))["2"].since() == NOW - 9 * MIN
    # The next real change is the very next message, and still shows the first online.
    later = await store.apply(app, [on("bob", "5", "web", NOW + 2)], now_ms=NOW + 2)
    got = state_decoder.decode(await inbox.next())
    assert got == later.published[0] and got.since == NOW - 9 * MIN
    assert got.devices == [DeviceView("android", NOW - 9 * MIN), DeviceView("web", NOW + 2)]


async def test_openim_resend_of_every_platform_keeps_each_since(store: PresenceStore) -> None:
    """OpenIM re-sends online for every connected platform on a change: only the change shows."""
    app = new_app()
    await store.apply(app, [on("bob", "1", "ios", NOW - 8 * MIN)], now_ms=NOW)
    await store.apply(app, [on("bob", "5", "web", NOW - 4 * MIN)], now_ms=NOW)
    resend = [
        on("bob", "1", "ios", NOW),
        on("bob", "5", "web", NOW),
        on("bob", "2", "android", NOW),
    ]
    result = await store.apply(app, resend, now_ms=NOW + 5)
    assert result.applied == 3
    assert result.published == [
        UserState(
            "bob",
            "online",
            NOW - 8 * MIN,
            [
                DeviceView("android", NOW),
                DeviceView("ios", NOW - 8 * MIN),
                DeviceView("web", NOW - 4 * MIN),
            ],
            NOW + 5,
        )
    ]


async def test_login_login_without_disconnect_keeps_since(store: PresenceStore) -> None:
    """Tencent's Login, Login with no Disconnect (a quick reconnect) keeps the first since."""
    app = new_app()
    await store.apply(app, [on("bob", "iOS", "ios", NOW - 3 * MIN)], now_ms=NOW)
    again = await store.apply(app, [on("bob", "iOS", "ios", NOW - MIN)], now_ms=NOW + 1)
    assert again.published == []
    [bob] = await store.get(app, ["bob"])
    assert (bob.status, bob.since, bob.devices) == (
        "online",
        NOW - 3 * MIN,
        [DeviceView("ios", NOW - 3 * MIN)],
    )


async def test_late_offline_moves_since_to_next_online(store: PresenceStore) -> None:
    """An offline arriving late, between two onlines, starts the streak at the online after it."""
    app = new_app()
    await store.apply(
        app, [on("bob", "d1", "ios", NOW - 5 * MIN), on("bob", "d1", "ios", NOW - MIN)], NOW
    )
    assert (await store.get(app, ["bob"]))[0].since == NOW - 5 * MIN
    late = await store.apply(app, [off("bob", "d1", "ios", NOW - 3 * MIN)], now_ms=NOW + 1)
    assert late.applied == 1
    assert late.published == [
        UserState("bob", "online", NOW - MIN, [DeviceView("ios", NOW - MIN)], NOW + 1)
    ]
    # The same offline again changes nothing; an online older than it shows nothing.
    again = await store.apply(
        app, [off("bob", "d1", "ios", NOW - 3 * MIN), on("bob", "d1", "ios", NOW - 4 * MIN)], NOW
    )
    assert (again.ignored, again.published) == (1, [])


async def test_offline_then_online_starts_a_new_streak(store: PresenceStore) -> None:
    """Online, offline, then online later: since is the new online, in any arrival order."""
    app = new_app()
    history = [
        on("bob", "d1", "ios", NOW - 5 * MIN),
        off("bob", "d1", "ios", NOW - 3 * MIN),
        on("bob", "d1", "ios", NOW - 2 * MIN),
        on("bob", "d1", "ios", NOW - MIN),
    ]
    users = ["in-order", "reversed"]
    for user, events in zip(users, [history, history[::-1]], strict=True):
        for ev in events:
            await store.apply(app, [msgspec.structs.replace(ev, user=user)], now_ms=NOW)
    want = ("online", NOW - 2 * MIN, (DeviceView("ios", NOW - 2 * MIN),), None)
    assert [s.visible() for s in await store.get(app, users)] == [want, want]


async def test_hourly_resends_stay_small_and_exact(store: PresenceStore) -> None:
    """Re-sends every 10 minutes for hours keep since and a record of two online times."""
    app = new_app()
    every = 10 * MIN  # = max_event_age_s: each re-send is as old as the window allows
    start = NOW - 50 * every
    for k in range(50):
        result = await store.apply(
            app, [on("bob", "3", "windows", start + k * every)], start + k * every
        )
        assert len(result.published) == (k == 0)
    record = (await store.records(app, "bob"))["3"]
    assert (record.base, record.ons) == (start, (NOW - 2 * every, NOW - every))
    # A late offline inside the window still ends the streak where the full history would.
    late = off("bob", "3", "windows", NOW - every * 3 // 2)
    result = await store.apply(app, [late], now_ms=NOW - every)
    assert [s.since for s in result.published] == [NOW - every]


async def test_online_times_capped(store: PresenceStore) -> None:
    """A flood of onlines of one device keeps its since and the newest 32 online times."""
    app = new_app()
    times = [NOW - 100 * S + i * S for i in range(40)]
    result = await store.apply(app, [on("bob", "d1", "ios", t) for t in reversed(times)], NOW)
    assert result.applied == 40 and [s.since for s in result.published] == [times[0]]
    record = (await store.records(app, "bob"))["d1"]
    assert (record.base, record.ons) == (times[0], tuple(times[-32:]))


async def test_get_keeps_order_and_batches(store: PresenceStore) -> None:
    """get() answers many users at once, in the order asked, unknown ones included."""
    app = new_app()
    users = [f"user-{i}" for i in range(300)]
    await store.apply(
        app, [on(u, "d", "web", NOW - i) for i, u in enumerate(users) if i % 3 == 0], NOW
    )
    asked = [*reversed(users), "nobody", users[0]]
    states = await store.get(app, asked)
    assert [s.user for s in states] == asked
    assert [s.status for s in states[-2:]] == ["offline", "online"]
    assert all((s.status == "online") == (int(s.user[5:]) % 3 == 0) for s in states[:-2])
    assert len(await store.get(app, [f"x{i}" for i in range(1000)])) == 1000
    assert await store.get(app, []) == []


async def test_published_payload_decodes_to_returned_state(backend: Backend) -> None:
    """Subscribers receive the state's exact msgspec JSON bytes, equal to what apply returned."""
    store, app = await backend.store(), new_app()
    user = "we{ird}/us%7Der 用户"
    inbox = await backend.listen(store, app, user)
    result = await store.apply(
        app, [on(user, "s-1", "web", NOW - 2 * S), on(user, "s-2", "mac", NOW - S)], NOW
    )
    payload = await inbox.next()
    assert payload == state_encoder.encode(result.published[0])
    assert state_decoder.decode(payload) == result.published[0]
    assert await store.get(app, [user]) == result.published


async def test_subscriber_receives_each_publish_in_order(backend: Backend) -> None:
    """A subscriber gets every published state of the user, in v order."""
    store, app = await backend.store(), new_app()
    inbox = await backend.listen(store, app, "bob")
    published = []
    for i in range(5):
        event = on if i % 2 == 0 else off
        result = await store.apply(app, [event("bob", "d1", "ios", NOW - 10 * S + i)], NOW + i)
        published += result.published
    received = [state_decoder.decode(await inbox.next()) for _ in published]
    assert received == published
    assert [s.v for s in received] == sorted({s.v for s in received})


async def test_many_users_across_slots_in_one_call(backend: Backend) -> None:
    """One apply touching users on many cluster slots applies and publishes all of them."""
    store, app = await backend.store(), new_app()
    users = [f"u{i}" for i in range(200)]
    slots = {key_slot(user_key(backend.prefix, app, u).encode()) for u in users}
    assert len(slots) > 100  # spread over the slots, hence over every cluster node
    result = await store.apply(app, [on(u, "d", "ios", NOW - i) for i, u in enumerate(users)], NOW)
    assert result.applied == 200
    assert sorted(s.user for s in result.published) == sorted(users)
    states = await store.get(app, users)
    assert [s.since for s in states] == [NOW - i for i in range(200)]


async def test_apps_are_separate(store: PresenceStore) -> None:
    """The same user id in two apps has two independent states."""
    app1, app2 = new_app(), new_app()
    await store.apply(app1, [on("bob", "d1", "ios", NOW - S)], NOW)
    assert await store.get(app2, ["bob"]) == [UserState("bob")]


async def test_empty_apply(store: PresenceStore) -> None:
    """Applying no events does nothing."""
    result = await store.apply(new_app(), [], NOW)
    assert (result.applied, result.ignored, result.published) == (0, 0, [])


async def test_ping_and_close_idempotent(store: PresenceStore) -> None:
    """ping() succeeds on a live store and close() can be called twice."""
    await store.ping()
    await store.close()
    await store.close()


# -- offline grace ---------------------------------------------------------------------------

GRACE = 5 * S
WITH_GRACE = PresenceSettings(offline_grace_ms=GRACE)


async def test_offline_waits_out_the_grace(backend: Backend) -> None:
    """The last device going offline publishes nothing until the grace ends, then once."""
    store, app = await backend.store(WITH_GRACE), new_app()
    inbox = await backend.listen(store, app, "bob")
    await store.apply(app, [on("bob", "d1", "ios", NOW)], now_ms=NOW)
    online = state_decoder.decode(await inbox.next())
    result = await store.apply(app, [off("bob", "d1", "ios", NOW + 10)], now_ms=NOW + 10)
    assert result.applied == 1 and result.published == []
    assert await store.get(app, ["bob"]) == [online]  # watchers still see online
    assert await store.sweep(now_ms=NOW + 10 + GRACE - 1) == 0
    assert await store.sweep(now_ms=NOW + 10 + GRACE) == 1
    offline = UserState("bob", "offline", NOW + 10, [], NOW + 10 + GRACE)
    assert await store.get(app, ["bob"]) == [offline]  # since: the real last-seen time
    assert state_decoder.decode(await inbox.next()) == offline
    assert await store.sweep(now_ms=NOW + 10 * GRACE) == 0  # published once


async def test_grace_end_is_set_by_the_first_offline(backend: Backend) -> None:
    """More offlines during the grace do not push its end back."""
    store, app = await backend.store(WITH_GRACE), new_app()
    await store.apply(app, [on("bob", "d1", "ios", NOW), on("bob", "d2", "web", NOW)], NOW)
    await store.apply(app, [off("bob", "d1", "ios", NOW + 1)], now_ms=NOW + 1)  # still online
    await store.apply(app, [off("bob", "d2", "web", NOW + 2)], now_ms=NOW + 2)  # grace starts
    await store.apply(app, [off("bob", "d3", "mac", NOW + 3)], now_ms=NOW + 3)
    assert await store.sweep(now_ms=NOW + 2 + GRACE) == 1
    assert (await store.get(app, ["bob"]))[0].since == NOW + 3


async def test_reconnect_inside_grace_publishes_nothing(backend: Backend) -> None:
    """A device back on the same platforms within the grace cancels the offline silently."""
    store, app = await backend.store(WITH_GRACE), new_app()
    inbox = await backend.listen(store, app, "bob")
    await store.apply(app, [on("bob", "d1", "ios", NOW)], now_ms=NOW)
    online = state_decoder.decode(await inbox.next())
    await store.apply(app, [off("bob", "d1", "ios", NOW + 10)], now_ms=NOW + 10)
    back = await store.apply(app, [on("bob", "d2", "ios", NOW + 20)], now_ms=NOW + 20)
    assert back.applied == 1 and back.published == []
    assert await store.sweep(now_ms=NOW + 10 * GRACE) == 0
    assert await store.get(app, ["bob"]) == [online]
    # The next real change is the next message: nothing was published in between.
    later = await store.apply(app, [on("bob", "d3", "web", NOW + 30)], now_ms=NOW + 30)
    assert state_decoder.decode(await inbox.next()) == later.published[0]


async def test_same_device_back_inside_grace_publishes_nothing(backend: Backend) -> None:
    """A device back within the grace cancels the offline: no publish now or later."""
    store, app = await backend.store(WITH_GRACE), new_app()
    inbox = await backend.listen(store, app, "bob")
    await store.apply(app, [on("bob", "d1", "ios", NOW)], now_ms=NOW)
    await inbox.next()
    await store.apply(app, [off("bob", "d1", "ios", NOW + 10)], now_ms=NOW + 10)
    await store.apply(app, [on("bob", "d1", "ios", NOW + 20)], now_ms=NOW + 20)
    assert await store.sweep(now_ms=NOW + 10 * GRACE) == 0
    (bob,) = await store.get(app, ["bob"])
    assert bob.status == "online"
    # Nothing was published since the online: the next message is the next real change.
    later = await store.apply(app, [on("bob", "d3", "web", NOW + 30)], now_ms=NOW + 30)
    assert state_decoder.decode(await inbox.next()) == later.published[0]


async def test_other_platform_inside_grace_publishes_the_change(backend: Backend) -> None:
    """Coming back on another platform within the grace publishes the new device list."""
    store, app = await backend.store(WITH_GRACE), new_app()
    await store.apply(app, [on("bob", "d1", "ios", NOW)], now_ms=NOW)
    await store.apply(app, [off("bob", "d1", "ios", NOW + 10)], now_ms=NOW + 10)
    result = await store.apply(app, [on("bob", "d2", "web", NOW + 20)], now_ms=NOW + 20)
    assert result.published[0].devices == [DeviceView("web", NOW + 20)]
    assert await store.sweep(now_ms=NOW + 10 * GRACE) == 0


async def test_concurrent_sweeps_publish_each_offline_once(backend: Backend) -> None:
    """Many sweepers at once (nodes sharing the store) end each grace with one publish."""
    store, app = await backend.store(WITH_GRACE), new_app()
    users = [f"u{i}" for i in range(40)]
    await store.apply(app, [on(u, "d", "ios", NOW) for u in users], now_ms=NOW)
    await store.apply(app, [off(u, "d", "ios", NOW + 1) for u in users], now_ms=NOW + 1)
    sweepers = [store] * 4
    if backend.is_redis:  # separate clients, as separate gateway nodes would have
        sweepers = [await backend.store(WITH_GRACE) for _ in range(4)]
    counts = await asyncio.gather(*(s.sweep(now_ms=NOW + 1 + GRACE) for s in sweepers))
    assert sum(counts) == len(users)
    assert {s.status for s in await store.get(app, users)} == {"offline"}
    assert await store.sweep(now_ms=NOW + 1 + 2 * GRACE) == 0


async def test_concurrent_applies_each_get_their_own_result(store: PresenceStore) -> None:
    """Applies made at once (which Redis may send as one call) each return their own states."""
    app = new_app()
    users = [f"c{i}" for i in range(40)]
    results = await asyncio.gather(
        *(store.apply(app, [on(u, "d", "ios", NOW - i)], now_ms=NOW) for i, u in enumerate(users))
    )
    for i, (user, result) in enumerate(zip(users, results, strict=True)):
        assert (result.applied, result.ignored) == (1, 0)
        assert result.published == [
            UserState(user, "online", NOW - i, [DeviceView("ios", NOW - i)], NOW)
        ]
    # One user, many changes at once: every state published once, versions all distinct.
    flips = [(on if i % 2 == 0 else off)("bob", "d", "ios", NOW + i) for i in range(20)]
    results = await asyncio.gather(*(store.apply(app, [ev], now_ms=NOW + 20) for ev in flips))
    published = [s for r in results for s in r.published]
    assert sum(r.applied for r in results) == 20
    assert len({s.v for s in published}) == len(published)
    last = max(published, key=lambda s: s.v)
    assert (last.status, last.since) == ("offline", NOW + 19)
    assert await store.get(app, ["bob"]) == [last]
