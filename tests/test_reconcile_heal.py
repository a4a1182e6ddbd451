"""Reconciliation checks applied to the store (SPEC 8), on memory, Redis and Redis Cluster,
against the loopback pull-API fakes of tests/pullapi.py."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.backends.base import PresenceStore
from gateway.metrics import Metrics
from gateway.model import PresenceEvent, state_decoder
from gateway.providers.base import ProviderConfig
from gateway.providers.openim import OpenIMConfig
from gateway.providers.rongcloud import RongCloudConfig
from gateway.providers.tencent import TencentConfig
from gateway.reconcile import rules
from gateway.reconcile.config import OpenIMReconcile, RongCloudReconcile, TencentReconcile
from gateway.reconcile.http import HttpSettings
from gateway.reconcile.targets import Target, make_client
from gateway.reconcile.worker import Worker
from gateway.webhooks import clear_checked
from tests.conftest import Backend, Inbox
from tests.pullapi import FakeOpenIM, FakePullApi, FakeRongCloud, FakeServer, FakeTencent, serve

APP = "rc"
FAST = HttpSettings(timeout_s=0.5, attempts=2, backoff_base_s=0.02, backoff_cap_s=0.05)
DEVICE = {"tencent": "ios", "rongcloud": "session-1", "openim": "conn-1"}
PROVIDERS = list(DEVICE)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """One loopback server with a fake of each provider."""
    async with serve(FakeTencent(), FakeRongCloud(), FakeOpenIM()) as running:
        yield running


def fake(server: FakeServer, provider: str) -> FakePullApi:
    kind = {"tencent": FakeTencent, "rongcloud": FakeRongCloud, "openim": FakeOpenIM}[provider]
    return next(f for f in server.fakes if isinstance(f, kind))


def table(server: FakeServer, provider: str, rate: float = 1000.0, **extra: Any) -> ProviderConfig:
    """The provider table of ``provider`` with a reconcile table aimed at the fake."""
    f = fake(server, provider)
    if isinstance(f, FakeTencent):
        rc = TencentReconcile(
            api_base=server.url, admin=f.admin, secret_key=f.secret_key, rate=rate
        )
        return TencentConfig(sdkappid=f.sdkappid, reconcile=rc, **extra)
    if isinstance(f, FakeRongCloud):
        rr = RongCloudReconcile(api_base=server.url, rate=rate)
        return RongCloudConfig(app_key=f.app_key, app_secret=f.app_secret, reconcile=rr, **extra)
    assert isinstance(f, FakeOpenIM)
    ro = OpenIMReconcile(api_base=server.url, admin_user=f.admin_user, secret=f.secret, rate=rate)
    return OpenIMConfig(reconcile=ro, **extra)


_made: list[Worker] = []


@pytest.fixture(autouse=True)
async def _close_workers() -> AsyncIterator[None]:
    """Every worker made by a test has its client closed at teardown."""
    yield
    while _made:
        made = _made.pop()
        if made.client is not None:
            await made.client.aclose()


def worker(
    server: FakeServer,
    provider: str,
    store: PresenceStore,
    *,
    rate: float = 1000.0,
    silence_ms: int = 0,
    metrics: Metrics | None = None,
    node: str = "n1",
    **options: Any,
) -> Worker:
    cfg = table(server, provider, rate)
    target = Target(APP, provider, 300.0, silence_ms, make_client(provider, cfg, FAST))
    made = Worker(target, store, metrics or Metrics(), node, max_age_ms=600_000, **options)
    made.open()
    _made.append(made)
    return made


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def user_id(tag: str) -> str:
    return f"{tag}-{time.time_ns()}"


async def login(store: PresenceStore, user: str, provider: str, at: int | None = None) -> None:
    """A webhook's online for ``user`` on ``provider``'s usual device key (platform ios)."""
    at = now_ms() if at is None else at
    await store.apply(APP, [PresenceEvent(user, DEVICE[provider], "ios", True, at)])


async def marker(store: PresenceStore, user: str) -> int:
    """Publish a distinguishable state (a web device online) and return its time: the next
    state an inbox gets is this one only if nothing was published before it."""
    at = now_ms()
    await store.apply(APP, [PresenceEvent(user, "marker", "web", True, at)])
    return at


async def next_state(inbox: Inbox) -> Any:
    return state_decoder.decode(await inbox.next())


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_lost_disconnect_is_healed(
    backend: Backend, server: FakeServer, provider: str
) -> None:
    """A user shown online whose Disconnect was lost goes offline when the provider says so."""
    store = await backend.store()
    user = user_id("gone")
    await login(store, user, provider)
    inbox = await backend.listen(store, APP, user)
    fake(server, provider).offline(user)
    w = worker(server, provider, store)
    assert await w.check([user]) == 1
    state = await next_state(inbox)
    assert state.status == "offline"
    assert (await store.get(APP, [user]))[0].status == "offline"
    records = await store.records(APP, user)
    assert records[DEVICE[provider]].online is False
    assert w.stats.checked == 1 and w.stats.corrected == 1 and w.stats.errors == 0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_lost_login_is_healed_on_the_named_platforms(
    backend: Backend, server: FakeServer, provider: str
) -> None:
    """A user shown offline (or unknown) whose Login was lost goes online on the platforms the
    provider names, on a device marked as the check's."""
    store = await backend.store()
    user = user_id("back")
    inbox = await backend.listen(store, APP, user)
    fake(server, provider).online(user, "android")
    w = worker(server, provider, store)
    assert await w.check([user]) == 1
    state = await next_state(inbox)
    assert state.status == "online"
    platforms = [d.platform for d in state.devices]
    # RongCloud names no platform: unknown
    assert platforms == (["unknown"] if provider == "rongcloud" else ["android"])
    assert set(await store.records(APP, user)) == {rules.check_device(provider, platforms[0])}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_agreeing_answer_changes_and_publishes_nothing(
    backend: Backend, server: FakeServer, provider: str
) -> None:
    """An answer that agrees with what is shown writes no record and publishes no state."""
    store = await backend.store()
    online, offline = user_id("on"), user_id("off")
    await login(store, online, provider)
    await store.apply(APP, [PresenceEvent(offline, DEVICE[provider], "ios", False, now_ms())])
    before = {u: await store.records(APP, u) for u in (online, offline)}
    inboxes = {u: await backend.listen(store, APP, u) for u in (online, offline)}
    fake(server, provider).online(online, "ios")
    fake(server, provider).offline(offline)
    w = worker(server, provider, store)
    assert await w.check([online, offline]) == 0
    assert w.stats.checked == 2
    for u in (online, offline):
        # drop the marker device from the comparison: only the check's writes matter
        assert await store.records(APP, u) == before[u]
        at = await marker(store, u)
        state = await next_state(inboxes[u])
        assert any(d.platform == "web" and d.since == at for d in state.devices)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_real_offline_clears_the_checks_devices(
    backend: Backend, server: FakeServer, provider: str
) -> None:
    """After a check put a user online, the provider's next real offline takes it offline."""
    store = await backend.store()
    user = user_id("clear")
    fake(server, provider).online(user, "web")
    w = worker(server, provider, store)
    await w.check([user])
    assert (await store.get(APP, [user]))[0].status == "online"
    off = PresenceEvent(user, DEVICE[provider], "ios", False, now_ms() + 1, "offline")
    await store.apply(APP, [off])
    await clear_checked(store, APP, provider, [off])
    assert (await store.get(APP, [user]))[0].status == "offline"


async def test_tencent_unknown_account_is_offline(backend: Backend, server: FakeServer) -> None:
    """A user Tencent does not know (ErrorList 70107) is shown offline."""
    store = await backend.store()
    user = user_id("ghost")
    await login(store, user, "tencent")
    fake(server, "tencent").users.pop(user, None)
    w = worker(server, "tencent", store)
    assert await w.check([user]) == 1
    assert (await store.get(APP, [user]))[0].status == "offline"


# RongCloud signs each call afresh: it has no credential that can expire.
FAULTS = [
    (provider, fault)
    for provider in PROVIDERS
    for fault in ("http500", "ratelimit", "expired", "stall")
    if not (fault == "expired" and provider == "rongcloud")
]


@pytest.mark.parametrize(("provider", "fault"), FAULTS)
async def test_failures_change_nothing_and_are_retried(
    server: FakeServer, provider: str, fault: str
) -> None:
    """Errors, time-outs, rate limits and refused credentials leave presence alone, are
    counted, and the users are checked again after a backoff (and then healed)."""
    from gateway.backends.base import PresenceSettings
    from gateway.backends.memory import MemoryStore

    store = MemoryStore(PresenceSettings())
    user = user_id("flaky")
    await login(store, user, provider)
    before = await store.records(APP, user)
    f = fake(server, provider)
    f.offline(user)
    f.stall_s = 2.0
    f.faults[:] = [fault] * 8  # more than the client's retries (and a renewed credential)
    metrics = Metrics()
    w = worker(server, provider, store, metrics=metrics)
    assert await w.check([user]) == 0
    assert await store.records(APP, user) == before
    assert w.stats.errors >= 1 and user in w.retries
    errors = sum(
        s.value
        for m in metrics.reconcile_errors.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert errors >= 1
    f.faults.clear()
    f.release()
    w.retries[user] = (0.0, 1)  # due now
    w.paused_until = 0.0
    w.next_round = float("inf")  # only the retry is due
    assert await w._step() is True
    assert (await store.get(APP, [user]))[0].status == "offline"
    assert user not in w.retries


async def test_rate_is_respected(server: FakeServer) -> None:
    """Calls towards a provider are spaced by at least 1/rate (RongCloud: one user a call)."""
    from gateway.backends.base import PresenceSettings
    from gateway.backends.memory import MemoryStore

    store = MemoryStore(PresenceSettings())
    users = [user_id(f"r{i}") for i in range(8)]
    f = fake(server, "rongcloud")
    for u in users:
        f.offline(u)
    w = worker(server, "rongcloud", store, rate=20.0)
    await w.check(users)
    times = sorted(seen.at for seen in f.queries)
    assert len(times) == len(users)
    assert times[-1] - times[0] >= (len(users) - 1) / 20.0 * 0.9


def test_pass_stats_encode_as_the_api_shows_them() -> None:
    """The stored pass stats carry exactly the fields of the API's answer."""
    from gateway.reconcile.stats import PassStats

    raw = msgspec.json.encode(PassStats(5, 1, 2, 3))
    assert msgspec.json.decode(raw) == {
        "last_pass_at": 5,
        "checked": 1,
        "corrected": 2,
        "errors": 3,
    }


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_credentials_never_logged(
    server: FakeServer, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Failing checks of every provider log their errors without any credential."""
    from gateway.backends.base import PresenceSettings
    from gateway.backends.memory import MemoryStore

    caplog.set_level(logging.DEBUG)
    store = MemoryStore(PresenceSettings())
    user = user_id("quiet")
    f = fake(server, provider)
    f.online(user, "ios")
    w = worker(server, provider, store)
    await w.check([user])  # a good call first: the credential is made and used
    faults = ["ratelimit", "http500"] + ([] if provider == "rongcloud" else ["expired", "expired"])
    f.faults[:] = faults * 3
    await w.check([user])
    assert caplog.text and w.stats.errors >= 1
    cfg = table(server, provider)
    secrets = set(f.credentials)
    for name in ("secret_key", "secret"):
        value = getattr(getattr(cfg, "reconcile", None), name, None)
        if value:
            secrets.add(value)
    secrets.add(getattr(cfg, "app_secret", "") or "-no-secret-")
    for secret in secrets:
        assert secret not in caplog.text
