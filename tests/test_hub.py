"""The hub (gateway.hub) over the real memory store and broker, with fake clients: no sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from gateway.backends.base import PresenceSettings
from gateway.backends.memory import MemoryBroker, MemoryStore
from gateway.config import ConnectionsConfig
from gateway.errors import CloseCode
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.model import PresenceEvent, UserState
from gateway.outbox import Outbox
from gateway.protocol import Resync, encode, frame_payload
from gateway.types import Key

APP = "a"


class FakeClient:
    """A client that records every frame the hub has it write."""

    def __init__(self, hub: Hub) -> None:
        config = hub.config
        self.outbox = Outbox(config.high_water_bytes, config.slow_close_after_s)
        self.written: list[bytes] = []
        self.held_back = False  # flush says "behind" while set
        self.closed_with: tuple[int, str] | None = None
        self.idle = 0.0

    def flush(self) -> int | None:
        if self.held_back:
            return None
        frames, sent = self.outbox.take()
        self.written += frames
        return sent

    def resync(self, states: Mapping[Key, UserState]) -> bool:
        present = self.outbox.rebase(APP, states)
        return self.outbox.queue_control(encode(Resync(presence=present)), 0)

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)
        self.outbox.closed = True

    def idle_for(self, now: float) -> float:
        return self.idle

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(frame_payload(f)) for f in self.written]


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Hub, MemoryStore, MemoryBroker]]:
    """A started hub over a memory store and broker, stopped after the test."""
    broker = MemoryBroker()
    store = MemoryStore(PresenceSettings(), broker)
    config = ConnectionsConfig(unsubscribe_delay_s=0.01, idle_limit_s=0.1)
    hub = Hub(store, broker, Metrics(), config)
    await hub.start()
    try:
        yield hub, store, broker
    finally:
        await hub.stop()


async def until(check: Callable[[], object], what: str, within: float = 5.0) -> None:
    """Poll ``check`` until it holds, against a deadline."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def online(store: MemoryStore, user: str, at: int, on: bool = True) -> None:
    """``user``'s device goes online (or off) ``at`` ms after now: published by the store."""
    when = time.time_ns() // 1_000_000 + at
    event = PresenceEvent(user=user, device="d1", platform="ios", online=on, time=when)
    assert (await store.apply(APP, [event])).published


async def watch(hub: Hub, client: FakeClient, *users: str) -> None:
    """Watch ``users`` as a session does: mark, index and subscribe, read, settle."""
    client.outbox.begin_read(users)
    await hub.watch(client, APP, users)
    states = await hub.store.get(APP, list(users))
    hub.note_read(APP, states)
    for state in states:
        client.outbox.settle(state)


async def test_a_published_state_reaches_every_watcher_as_the_same_bytes(
    parts: tuple[Hub, MemoryStore, MemoryBroker],
) -> None:
    """One publish is framed once: every watcher writes the very same frame object."""
    hub, store, _ = parts
    one, two, other = FakeClient(hub), FakeClient(hub), FakeClient(hub)
    for client in (one, two, other):
        hub.attach(client)
    await watch(hub, one, "bob")
    await watch(hub, two, "bob", "carol")
    await watch(hub, other, "carol")
    await online(store, "bob", 0)
    await until(lambda: one.written and two.written, "the state to be flushed")
    assert one.written[0] is two.written[0]
    assert one.messages()[0]["user"] == "bob" and one.messages()[0]["status"] == "online"
    assert other.written == [] and hub.sent == 2


async def test_interest_is_refcounted_and_unsubscribed_after_the_last_watcher(
    parts: tuple[Hub, MemoryStore, MemoryBroker],
) -> None:
    """The broker is subscribed while anyone watches a user and unsubscribed once nobody does."""
    hub, store, broker = parts
    one, two = FakeClient(hub), FakeClient(hub)
    await watch(hub, one, "bob")
    await watch(hub, two, "bob")
    subscribed = broker._subs  # the memory broker's interest set
    assert (APP, "bob") in subscribed
    hub.unwatch(one, APP, ["bob"])
    assert hub.index[(APP, "bob")] == {two}
    hub.unwatch(two, APP, ["bob"])
    assert (APP, "bob") not in hub.index and (APP, "bob") not in hub.latest
    await until(lambda: (APP, "bob") not in subscribed, "the unsubscribe")
    await online(store, "bob", 0)  # nobody is told
    assert one.outbox.pending == {} and two.outbox.pending == {}


async def test_a_held_back_client_gets_only_the_latest_state_once_it_catches_up(
    parts: tuple[Hub, MemoryStore, MemoryBroker],
) -> None:
    """While flush says behind, the hub retries on its tick; the client then gets the latest."""
    hub, store, _ = parts
    slow, quick = FakeClient(hub), FakeClient(hub)
    await watch(hub, slow, "bob")
    await watch(hub, quick, "bob")
    slow.held_back = True
    for i in range(1, 4):
        await online(store, "bob", i, on=i % 2 == 1)
        await until(lambda: len(quick.written) == i, "the quick client's state")  # noqa: B023
    assert slow.written == [] and len(slow.outbox.pending) == 1
    slow.held_back = False
    await until(lambda: slow.written, "the slow client's flush")
    assert slow.messages() == [quick.messages()[-1]]


async def test_a_reset_resyncs_every_attached_client_from_the_store(
    parts: tuple[Hub, MemoryStore, MemoryBroker],
) -> None:
    """on_reset reads the index and hands each client a resync of its watch set."""
    hub, _, _ = parts
    client = FakeClient(hub)
    hub.attach(client)
    await watch(hub, client, "bob", "carol")
    hub.on_reset()
    await until(lambda: client.written, "the resync")
    (resync,) = client.messages()
    assert resync["type"] == "resync"
    assert sorted(st["user"] for st in resync["presence"]) == ["bob", "carol"]


async def test_idle_clients_are_closed_going_away(
    parts: tuple[Hub, MemoryStore, MemoryBroker],
) -> None:
    """The hub's sweep closes a client silent past idle_limit_s with 1001, not a chatty one."""
    hub, _, _ = parts
    silent, chatty = FakeClient(hub), FakeClient(hub)
    silent.idle = 1.0
    hub.attach(silent)
    hub.attach(chatty)
    await until(lambda: silent.closed_with, "the idle close")
    assert silent.closed_with is not None and silent.closed_with[0] == CloseCode.GOING_AWAY
    assert chatty.closed_with is None


def test_admit_caps_connections_per_user_and_counts_refusals() -> None:
    """admit counts up to the cap, refuses (and counts) the next; release frees a slot."""
    broker = MemoryBroker()
    hub = Hub(MemoryStore(PresenceSettings(), broker), broker, Metrics())
    assert hub.admit(APP, "bob", 2) and hub.admit(APP, "bob", 2)
    assert not hub.admit(APP, "bob", 2) and hub.refused == 1
    hub.release(APP, "bob")
    assert hub.admit(APP, "bob", 2) and hub.connections == {(APP, "bob"): 2}
