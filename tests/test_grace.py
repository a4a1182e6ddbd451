"""Offline grace (SPEC section 4): flaps are hidden, and one offline is published per grace."""

from __future__ import annotations

import uuid

from gateway.backends.base import PresenceSettings
from gateway.backends.memory import MemoryBroker, MemoryStore
from gateway.model import PresenceEvent

T0 = 1_763_700_000_000
GRACE = 5_000


def ev(user: str, online: bool, t: int, device: str = "d1", platform: str = "ios") -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform=platform, online=online, time=t)


class Recorder:
    """Collects what a MemoryBroker delivers."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def __call__(self, app: str, user: str, payload: bytes) -> None:
        self.got.append(payload)


async def memory_store() -> tuple[MemoryStore, Recorder]:
    broker = MemoryBroker()
    rec = Recorder()
    broker.set_handlers(rec, lambda: None)
    store = MemoryStore(PresenceSettings(offline_grace_ms=GRACE), broker)
    return store, rec


async def test_offline_waits_out_the_grace() -> None:
    """The last device going offline publishes nothing until the grace ends, then once."""
    store, rec = await memory_store()
    app = uuid.uuid4().hex
    await store.broker.subscribe(app, ["bob"])
    await store.apply(app, [ev("bob", True, T0)], now_ms=T0)
    assert len(rec.got) == 1
    result = await store.apply(app, [ev("bob", False, T0 + 10)], now_ms=T0 + 10)
    assert result.published == [] and len(rec.got) == 1
    (bob,) = await store.get(app, ["bob"])
    assert bob.status == "online", "watchers still see online during the grace"
    assert await store.sweep(now_ms=T0 + 10 + GRACE - 1) == 0
    assert await store.sweep(now_ms=T0 + 10 + GRACE) == 1
    (bob,) = await store.get(app, ["bob"])
    assert bob.status == "offline" and bob.since == T0 + 10, "since is the real last-seen time"
    assert await store.sweep(now_ms=T0 + 10 * GRACE) == 0, "published once"
    assert len(rec.got) == 2


async def test_reconnect_inside_grace_publishes_nothing() -> None:
    """A device back within the grace cancels the offline: no publish now or later."""
    store, rec = await memory_store()
    app = uuid.uuid4().hex
    await store.broker.subscribe(app, ["bob"])
    await store.apply(app, [ev("bob", True, T0)], now_ms=T0)
    await store.apply(app, [ev("bob", False, T0 + 10)], now_ms=T0 + 10)
    await store.apply(app, [ev("bob", True, T0 + 20)], now_ms=T0 + 20)
    assert await store.sweep(now_ms=T0 + 10 * GRACE) == 0
    assert len(rec.got) == 1
    (bob,) = await store.get(app, ["bob"])
    assert bob.status == "online"


async def test_other_platform_inside_grace_publishes_the_change() -> None:
    """Coming back on another platform within the grace publishes the new device list."""
    store, _rec = await memory_store()
    app = uuid.uuid4().hex
    await store.broker.subscribe(app, ["bob"])
    await store.apply(app, [ev("bob", True, T0)], now_ms=T0)
    await store.apply(app, [ev("bob", False, T0 + 10)], now_ms=T0 + 10)
    result = await store.apply(app, [ev("bob", True, T0 + 20, "d2", "web")], now_ms=T0 + 20)
    assert [d.platform for d in result.published[0].devices] == ["web"]
    assert await store.sweep(now_ms=T0 + 10 * GRACE) == 0
