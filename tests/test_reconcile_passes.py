"""Who the scheduler checks and when (SPEC 8): startup and requested full passes, the online
round's order, watched users, and ``max_silence_s`` (SPEC 2), against the loopback fakes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.backends.memory import MemoryStore
from gateway.metrics import Metrics
from gateway.model import PresenceEvent, state_decoder
from gateway.providers.standard import StandardConfig
from gateway.reconcile import rules
from gateway.reconcile.scheduler import Reconciler
from gateway.reconcile.targets import Target, make_client, targets
from gateway.reconcile.worker import Worker
from tests.conftest import Backend
from tests.pullapi import FakeOpenIM, FakeRongCloud, FakeServer, FakeTencent, serve
from tests.test_reconcile_heal import APP, DEVICE, FAST, fake, now_ms, table, user_id


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """One loopback server with a fake of each provider."""
    async with serve(FakeTencent(), FakeRongCloud(), FakeOpenIM()) as running:
        yield running


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail the test after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def status_of(store: PresenceStore, user: str) -> str:
    return (await store.get(APP, [user]))[0].status


def reconciler(
    server: FakeServer, store: PresenceStore, provider: str = "tencent", **options: object
) -> Reconciler:
    found = targets({APP: {provider: table(server, provider)}}, FAST)
    return Reconciler(found, store, Metrics(), lease_ttl_ms=600, tick_s=0.02, **options)  # type: ignore[arg-type]


async def test_startup_full_pass_heals_known_offline_users(server: FakeServer) -> None:
    """At startup every user the store knows is checked, offline ones included."""
    store = MemoryStore(PresenceSettings())
    user = user_id("known")
    await store.apply(APP, [PresenceEvent(user, "ios", "ios", False, now_ms())])
    fake(server, "tencent").online(user, "ios")
    rec = reconciler(server, store)
    await rec.start()
    try:
        await until(lambda: _is(store, user, "online"))
        status = await rec.status(APP)
        await until(lambda: _passed(rec))
        assert status.keys() == {"tencent"}
    finally:
        await rec.stop()


async def _is(store: PresenceStore, user: str, status: str) -> bool:
    return await status_of(store, user) == status


async def _passed(rec: Reconciler) -> bool:
    return (await rec.status(APP))["tencent"].last_pass_at is not None


async def test_requested_full_pass_checks_offline_users_again(server: FakeServer) -> None:
    """A full pass asked for later (a 503, a feed loss) checks offline users the online round
    does not look at."""
    store = MemoryStore(PresenceSettings())
    user = user_id("later")
    await store.apply(APP, [PresenceEvent(user, "ios", "ios", False, now_ms())])
    f = fake(server, "tencent")
    f.offline(user)
    rec = reconciler(server, store)
    await rec.start()
    try:
        await until(lambda: _asked(f, user))  # the startup pass
        await until(lambda: _no_full(store, rec))
        f.online(user, "web")
        rec.request_full(APP)
        await until(lambda: _is(store, user, "online"))
    finally:
        await rec.stop()


async def _asked(f: FakeTencent | object, user: str) -> bool:
    assert isinstance(f, FakeTencent)
    return any(user in seen.users for seen in f.queries)


async def _no_full(store: PresenceStore, rec: Reconciler) -> bool:
    worker = rec.workers[0]
    return worker.full is None and await store.get_note(worker.full_note) is None


async def test_watched_offline_user_is_healed_once_per_interval(server: FakeServer) -> None:
    """A watched user shown unknown whose Login was lost is checked and shown online; queued
    again within interval_s it is not asked about again."""
    store = MemoryStore(PresenceSettings())
    user = user_id("watched")
    f = fake(server, "tencent")
    f.online(user, "ios")
    rec = reconciler(server, store, watched=lambda app: [user] if app == APP else [])
    await rec.start()
    try:
        await until(lambda: _is(store, user, "online"))
    finally:
        await rec.stop()
    worker = rec.workers[0]
    worker.open()
    asked = sum(1 for seen in f.queries if user in seen.users)
    await store.push_work(worker.watched, [user], 10)
    worker.next_round = float("inf")
    assert await worker._step() is True  # popped, and skipped: checked within interval_s
    assert sum(1 for seen in f.queries if user in seen.users) == asked
    assert worker.client is not None
    await worker.client.aclose()


async def test_online_round_checks_least_recently_checked_first(server: FakeServer) -> None:
    """The online round asks about the user checked longest ago first."""
    store = MemoryStore(PresenceSettings())
    fresh, stale = user_id("fresh"), user_id("stale")
    for u in (fresh, stale):
        await store.apply(APP, [PresenceEvent(u, "session-1", "ios", True, now_ms())])
    f = fake(server, "rongcloud")
    f.online(fresh)
    f.online(stale)
    target = Target(
        APP, "rongcloud", 300.0, 0, make_client("rongcloud", table(server, "rongcloud"), FAST)
    )
    worker = Worker(target, store, Metrics(), "n1", max_age_ms=600_000)
    worker.open()
    worker.chunk = 1
    worker.checked_at = {fresh: time.monotonic(), stale: time.monotonic() - 100}
    assert await worker._step() is True
    assert [seen.users for seen in f.queries] == [(stale,)]
    assert await worker._step() is True
    assert [seen.users for seen in f.queries] == [(stale,), (fresh,)]
    assert worker.client is not None
    await worker.client.aclose()


def silence_worker(store: PresenceStore, server: FakeServer | None, silence_ms: int) -> Worker:
    factory = make_client("tencent", table(server, "tencent"), FAST) if server else None
    target = Target(APP, "tencent", 300.0, silence_ms, factory)
    worker = Worker(target, store, Metrics(), "n1", max_age_ms=600_000)
    worker.open()
    return worker


async def test_silent_device_goes_offline_once_across_nodes(backend: Backend) -> None:
    """A device online with no event for max_silence_s goes offline (reason silence, at its
    last event + max_silence_s); two nodes sweeping at once publish exactly one state."""
    a = await backend.store()
    b = await backend.store() if backend.is_redis else a
    user = user_id("quiet")
    heard = now_ms() - 5000
    await a.apply(APP, [PresenceEvent(user, DEVICE["tencent"], "ios", True, heard)])
    inbox = await backend.listen(a, APP, user)
    swept = await asyncio.gather(
        silence_worker(a, None, 3000).sweep_silence(), silence_worker(b, None, 3000).sweep_silence()
    )
    assert sum(swept) >= 1
    state = state_decoder.decode(await inbox.next())
    assert state.status == "offline" and state.since == heard + 3000
    record = (await a.records(APP, user))[DEVICE["tencent"]]
    assert not record.online and record.time == heard + 3000
    at = now_ms()
    await a.apply(APP, [PresenceEvent(user, "marker", "web", True, at)])
    assert state_decoder.decode(await inbox.next()).since == at  # nothing in between


async def test_device_heard_recently_stays_online(backend: Backend) -> None:
    """A device whose last event is younger than max_silence_s is left alone."""
    store = await backend.store()
    user = user_id("chatty")
    await store.apply(APP, [PresenceEvent(user, "ios", "ios", True, now_ms() - 1000)])
    assert await silence_worker(store, None, 60_000).sweep_silence() == 0
    assert await status_of(store, user) == "online"


async def test_confirming_check_counts_as_an_event(backend: Backend, server: FakeServer) -> None:
    """With max_silence_s on, a check that confirms a device refreshes its last-heard time
    (publishing nothing), so it does not go silent."""
    store = await backend.store()
    user = user_id("confirmed")
    await store.apply(APP, [PresenceEvent(user, "ios", "ios", True, now_ms() - 5000)])
    before = (await store.get(APP, [user]))[0]
    fake(server, "tencent").online(user, "ios")
    worker = silence_worker(store, server, 3000)
    assert await worker.check([user]) == 0
    assert (await store.get(APP, [user]))[0] == before  # nothing published
    assert await worker.sweep_silence() == 0
    assert await status_of(store, user) == "online"
    assert worker.client is not None
    await worker.client.aclose()


async def test_silence_alone_needs_no_pull_api() -> None:
    """A provider table with max_silence_s and no reconcile table still expires silent
    devices (the Standard Webhooks provider here)."""
    store = MemoryStore(PresenceSettings())
    cfg = StandardConfig(secret="whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", max_silence_s=1)
    found = targets({APP: {"standard": cfg}})
    assert [(t.provider, t.silence_ms, t.make_client) for t in found] == [("standard", 1000, None)]
    user = user_id("std")
    await store.apply(APP, [PresenceEvent(user, "s-1", "web", True, now_ms())])
    rec = Reconciler(found, store, Metrics(), lease_ttl_ms=600, tick_s=0.02)
    await rec.start()
    try:
        await until(lambda: _is(store, user, "offline"))
    finally:
        await rec.stop()
    assert (await store.records(APP, user))["s-1"].online is False
    assert await rec.status(APP) == {}  # not reconciled: no pass to show


def test_rules_keep_other_providers_checks() -> None:
    """A check of one provider never judges the devices another provider's checks put online."""
    from gateway.model import DeviceRecord
    from gateway.reconcile.base import OFFLINE

    theirs = rules.check_device("openim", "ios")
    records = {
        theirs: DeviceRecord(1, True, "ios", (1,)),
        "ios": DeviceRecord(1, True, "ios", (1,)),
    }
    events, corrected = rules.from_answer("u", records, OFFLINE, "tencent", 5)
    assert corrected and [e.device for e in events] == ["ios"]
