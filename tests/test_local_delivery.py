"""States a node's own webhook published reach its watchers from the apply's result (issue 14).

The broker's copy (the Redis pub/sub echo) still comes; it must change nothing for a watcher
that already got the state, and other nodes still depend on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.backends.memory import MemoryBroker, MemoryStore
from gateway.config import AppConfig, ConnectionsConfig
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.model import PresenceEvent, state_decoder, state_encoder
from tests.live import serve
from tests.test_custom_status import put_custom
from tests.test_e2e_webhooks import app_of, make_settings, now_ms, query, tencent
from tests.test_hub import APP, FakeClient, online, until, watch
from tests.wsclient import Watcher


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    """A started hub over a memory store, its flush tick long enough to notice waiting."""
    broker = MemoryBroker()
    store = MemoryStore(PresenceSettings(), broker)
    hub = Hub(store, broker, Metrics(), ConnectionsConfig(flush_tick_s=0.5))
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def test_deliver_writes_at_once_and_the_echo_adds_nothing(hub: Hub) -> None:
    """``deliver`` writes the state before returning; the same bytes from the broker after
    it are not queued again."""
    client = FakeClient(hub)
    hub.attach(client)
    await watch(hub, client, "bob")
    assert isinstance(hub.store, MemoryStore)
    await online(hub.store, "bob", 0)  # the memory broker delivers it (and flushes soon)
    await until(lambda: client.written, "the first state")
    written = len(client.written)
    (state,) = await hub.store.get(APP, ["bob"])
    newer = state_encoder.encode(
        type(state)(user="bob", status="offline", since=state.since, devices=[], v=state.v + 1)
    )
    hub._last_flush = 0.0  # the last flush was a tick ago
    hub.deliver(APP, [("bob", newer)])
    assert len(client.written) == written + 1  # written in the call, no loop turn needed
    hub.on_message(APP, "bob", newer)  # the broker's echo of the very same state
    await asyncio.sleep(0.01)
    assert len(client.written) == written + 1 and hub.sent == written + 1


async def test_deliver_ignores_users_nobody_watches(hub: Hub) -> None:
    """States of unwatched users cost nothing: no frame, no entry in ``latest``."""
    client = FakeClient(hub)
    hub.attach(client)
    await watch(hub, client, "bob")
    hub.deliver(APP, [("carol", b'{"user":"carol","status":"online","v":3}')])
    assert client.written == [] and (APP, "carol") not in hub.latest


async def final_v(client: httpx.AsyncClient, app: AppConfig, user: str) -> int:
    """The user's ``v`` as the query API shows it (the store's last published state)."""
    (state,) = await query(client, app, user)
    v: int = state["v"]
    return v


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_a_watcher_on_the_same_node_needs_no_pubsub_echo(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """With the broker's feed to the hub cut, a local watcher still gets the states its
    node's webhooks and custom-status PUTs publish, up to the last one, in ``v`` order."""
    url = request.getfixturevalue("redis_cluster_url" if backend == "cluster" else "redis_url")
    settings = make_settings(url, cluster=backend == "cluster")
    app = app_of(settings)
    async with serve(settings) as gw:
        node = gw.app.state.gateway
        echoes: list[tuple[str, str]] = []
        node.broker.set_handlers(lambda a, u, p: echoes.append((a, u)), lambda: None)
        watcher = await Watcher.login(gw.ws_url, app.id, app.client_secret, "alice")
        try:
            await watcher.watch("bob")
            async with httpx.AsyncClient(base_url=gw.url) as client:
                t0 = now_ms()
                for i, action in enumerate(["Login", "Disconnect", "Login"]):
                    r = await tencent(client, app.id, "bob", action, event_time=t0 + i)
                    assert r.status_code == 200
                r = await put_custom(client, app, "bob", {"custom": "In a meeting"})
                assert r.status_code == 200
                last = await final_v(client, app, "bob")
            await until(lambda: watcher.view["bob"]["v"] == last, "the last state")
            await until(lambda: len(echoes) == 4, "the broker's four echoes")
            assert watcher.view["bob"]["status"] == "online" and watcher.violations == []
            assert watcher.view["bob"]["custom"] == "In a meeting"  # PUT .../custom too
        finally:
            await watcher.close()


async def test_local_and_broker_delivery_together_send_each_state_once(redis_url: str) -> None:
    """On Redis, the local delivery and the pub/sub echo together never give a watcher a
    state twice: every frame the hub sent is one the watcher took as new (``v`` rising)."""
    settings = make_settings(redis_url)
    app = app_of(settings)
    async with serve(settings) as gw:
        hub = gw.app.state.gateway.hub
        watcher = await Watcher.login(gw.ws_url, app.id, app.client_secret, "alice")
        try:
            await watcher.watch("bob", "carol")
            async with httpx.AsyncClient(base_url=gw.url) as client:
                t0 = now_ms()
                for i in range(20):
                    user = "bob" if i % 2 else "carol"
                    action = "Login" if (i // 2) % 2 == 0 else "Disconnect"
                    r = await tencent(client, app.id, user, action, event_time=t0 + i)
                    assert r.status_code == 200
                    await asyncio.sleep(0.003)  # past the flush tick: no coalescing
                bob, carol = await final_v(client, app, "bob"), await final_v(client, app, "carol")
            await until(
                lambda: watcher.view["bob"]["v"] == bob and watcher.view["carol"]["v"] == carol,
                "the last states",
            )
            await asyncio.sleep(0.2)  # any duplicate from the echo would arrive meanwhile
            frames = len(watcher.history["bob"]) + len(watcher.history["carol"]) - 2
            assert watcher.violations == [] and hub.sent == frames == 20
        finally:
            await watcher.close()


async def test_a_control_reply_flush_does_not_hold_back_the_next_state(hub: Hub) -> None:
    """The flush tick paces presence flushes only: right after a flush that wrote just a
    control reply (a pong), a published state is written on the next loop turn."""
    client = FakeClient(hub)
    hub.attach(client)
    await watch(hub, client, "bob")
    assert client.outbox.queue_control(b"pong", 0)
    hub.mark_dirty(client)
    await until(lambda: client.written, "the control reply")
    written = len(client.written)
    assert isinstance(hub.store, MemoryStore)
    await online(hub.store, "bob", 0)  # published to the hub by the memory broker
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(client.written) == written + 1  # not 0.5 s (the tick) later


async def test_an_apply_hands_back_the_published_bytes_or_the_states(store: PresenceStore) -> None:
    """Every backend's apply says what it published: Redis as the very bytes its broker
    carries (decoded to the same states on demand), memory as states (its broker already
    delivered them)."""
    when = now_ms()
    events = [
        PresenceEvent(user=u, device="d1", platform="ios", online=True, time=when)
        for u in ("bob", "carol")
    ]
    result = await store.apply(APP, events)
    assert result.count == 2 and [s.user for s in result.published] == ["bob", "carol"]
    if isinstance(store, MemoryStore):
        assert result.payloads == []
    else:
        assert [(u, state_decoder.decode(p)) for u, p in result.payloads] == [
            (s.user, s) for s in result.published
        ]
        assert all(isinstance(p, bytes) for _, p in result.payloads)
        assert result.payloads[0][1] == state_encoder.encode(result.published[0])
