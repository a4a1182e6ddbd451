"""An authenticated client abusing its WebSocket, through a real gateway and real clients.

- Connections per user are capped per app and node; the next one is refused after hello.
- Watching users already watched reads nothing from the store; reads per connection are paced.
- A client that sends requests but never reads the replies is closed with 4008 while what the
  node queues for it stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from gateway.backends.base import PresenceSettings
from gateway.backends.memory import MemoryBroker, MemoryStore
from gateway.config import ServerConfig
from gateway.hub import Hub
from gateway.model import PresenceEvent, UserState
from gateway.protocol import Pong, Snapshot, encode
from gateway.session import Session
from tests.live import LiveGateway
from tests.test_e2e_webhooks import now_ms
from tests.test_fanout import eventually, parts, session_of, squeeze_send_buffer
from tests.test_ws_protocol import Live, running, tuned, with_app
from tests.wsclient import Client

# -- helpers ------------------------------------------------------------------------------


class CountingStore(MemoryStore):
    """The real memory store, counting every user a ``get`` is asked for."""

    def __init__(self, settings: PresenceSettings, broker: MemoryBroker) -> None:
        super().__init__(settings, broker)
        self.reads = 0

    async def get(self, app: str, users: Sequence[str]) -> list[UserState]:
        self.reads += len(users)
        return await super().get(app, users)


def counted(gw: LiveGateway) -> CountingStore:
    """Put a counting store under the running gateway (before any client watches)."""
    gateway_ = parts(gw)
    assert isinstance(gateway_.broker, MemoryBroker)
    store = CountingStore(gateway_.settings.presence, gateway_.broker)
    gateway_.store = gateway_.hub.store = store
    return store


async def go_online(store: MemoryStore, app: str, user: str, platform: str = "ios") -> None:
    """``user`` comes online on ``platform``: applied and published by the real store."""
    event = PresenceEvent(
        user=user, device=f"d-{platform}", platform=platform, online=True, time=now_ms()
    )
    assert (await store.apply(app, [event])).published


def hub_of(live: Live) -> Hub:
    return parts(live.gw).hub


@contextlib.asynccontextmanager
async def gateway_with(
    connections: dict[str, Any] | None = None, **app_changes: Any
) -> AsyncIterator[Live]:
    """A gateway whose one app has ``app_changes``, with ``connections`` tunables."""
    async with running(tuned(with_app(**app_changes), **(connections or {}))) as live:
        yield live


async def over_the_cap(live: Live, user: str) -> tuple[int | None, str]:
    """A hello of ``user`` that must be refused: the close code and reason (no welcome)."""
    client = await live.open()
    await client.send({"type": "hello", "token": live.token(user)})
    with pytest.raises(ConnectionClosed) as info:
        await client.recv()  # the close, and nothing before it
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, "")


# -- connections per user -----------------------------------------------------------------


async def test_connection_over_the_per_user_cap_is_refused_after_hello() -> None:
    """The connection past max_connections_per_user gets 4009 and no welcome; others are served."""
    async with gateway_with(max_connections_per_user=3) as live:
        alices = [await live.login("alice") for _ in range(3)]
        code, reason = await over_the_cap(live, "alice")
        assert code == 4009 and "too many connections" in reason, (code, reason)
        for alice in alices:  # the new one is refused; the open ones keep working
            assert (await alice.request("ping"))["type"] == "pong"
        bob = await live.login("bob")  # the cap is per user
        assert (await bob.request("ping"))["type"] == "pong"
        assert hub_of(live).connections == {(live.app.id, "alice"): 3, (live.app.id, "bob"): 1}
        metrics = (await live.http.get("/metrics")).text
        assert "presence_connections_refused_total 1.0" in metrics


async def test_a_capped_user_connects_again_after_any_close() -> None:
    """Every way a connection ends frees its slot: close, abort, a server close, a refusal."""
    limits = {"message_burst": 5, "messages_per_s": 1.0}
    async with gateway_with(limits, max_connections_per_user=2) as live:
        hub = hub_of(live)
        key = (live.app.id, "alice")
        first = await live.login("alice")
        second = await live.login("alice")
        assert (await over_the_cap(live, "alice"))[0] == 4009  # a refusal holds no slot…
        await first.close()  # …a clean close frees one…
        await eventually(lambda: hub.connections.get(key) == 1, 5, "the closed one to count off")
        third = await live.login("alice")
        third.ws.transport.abort()  # …so does a client that vanishes without a close frame…
        await eventually(lambda: hub.connections.get(key) == 1, 5, "the aborted one to count off")
        fourth = await live.login("alice")
        with contextlib.suppress(ConnectionClosed):  # …and one the server closes (4009)
            for i in range(20):
                await fourth.send({"type": "ping", "id": i})
        assert (await fourth.closed_with())[0] == 4009
        await eventually(lambda: hub.connections.get(key) == 1, 5, "the closed one to count off")
        fifth = await live.login("alice")
        assert (await fifth.request("ping"))["type"] == "pong"
        for client in (second, fifth):
            await client.close()
        await eventually(lambda: not hub.connections, 5, "every connection to count off")


# -- store reads --------------------------------------------------------------------------


async def test_watching_watched_users_reads_only_the_new_ones() -> None:
    """A repeated watch answers already-watched users from memory; only new users are read."""
    async with gateway_with() as live:
        store = counted(live.gw)
        users = [f"u{i}" for i in range(50)]
        await go_online(store, live.app.id, "u7")
        client = await live.login()
        first = await client.watch(*users)
        assert store.reads == 50
        again = await client.watch(*users)
        assert store.reads == 50  # nothing read again…
        assert again == first and again["u7"]["status"] == "online"  # …the same snapshot
        more = await client.watch(*users, "n1", "n2")
        assert store.reads == 52 and more.keys() == {*users, "n1", "n2"}


async def test_repeated_watch_carries_the_newest_state() -> None:
    """After a change, re-watching a user gives the changed state, without reading the store."""
    async with gateway_with() as live:
        store = counted(live.gw)
        client = await live.login()
        before = (await client.watch("bob"))["bob"]
        await go_online(store, live.app.id, "bob")
        delta = await client.next_presence("bob")
        assert delta["v"] > before["v"]
        client.next_id += 1
        await client.send({"type": "watch", "id": client.next_id, "users": ["bob", "carol"]})
        reply = await client.recv()
        assert reply["type"] == "snapshot", reply
        bob, carol = reply["presence"]
        assert bob == {k: v for k, v in delta.items() if k != "type"} and carol["v"] == 0
        assert store.reads == 2  # bob once, carol once
        await go_online(store, live.app.id, "bob", "web")  # still delivered after the re-watch
        assert (await client.next_presence("bob"))["v"] > bob["v"]


async def test_store_reads_per_connection_are_paced() -> None:
    """Unwatching and re-watching max_watch users cannot read faster than the read allowance."""
    limits = {
        "messages_per_s": 1000.0,  # the message limit is not under test
        "message_burst": 1000,
        "store_read_refill_s": 2.0,  # 200 users, 100 a second
    }
    async with gateway_with(limits, max_watch=200) as live:
        store = counted(live.gw)
        users = [f"u{i}" for i in range(200)]
        client = await live.login()
        started = time.monotonic()
        rounds = 0
        while time.monotonic() - started < 1.5:
            assert len(await client.watch(*users)) == 200
            assert (await client.request("unwatch", users=users))["type"] == "ok"
            rounds += 1
        elapsed = time.monotonic() - started
        # the burst, the refill over the time taken, and the one watch that waited for it
        assert store.reads <= 200 + 100 * elapsed + 200, (store.reads, rounds)
        assert rounds >= 2  # and it was paced, not refused


# -- a client that does not read its replies ------------------------------------------------


def queued_now(session: Session) -> int:
    """What the node holds for ``session``'s client besides its coalesced presence frames."""
    sink = session.sink
    return (sink.buffered() if sink is not None else 0) + sum(map(len, session.outbox.control))


def record_queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record ``queued_now`` of a session after every flush, reply and resync it queues."""
    peaks: list[int] = []
    for name in ("flush", "send", "resync"):
        real = getattr(Session, name)

        def recording(self: Session, *args: Any, real: Any = real, **kwargs: Any) -> Any:
            result = real(self, *args, **kwargs)
            peaks.append(queued_now(self))
            return result

        monkeypatch.setattr(Session, name, recording)
    return peaks


@pytest.mark.parametrize("flood", ["ping", "watch"])
async def test_client_not_reading_its_replies_is_closed_4008_with_bounded_queue(
    monkeypatch: pytest.MonkeyPatch, flood: str
) -> None:
    """Pings (64 KiB ids) or re-watches of 1,000 users, never read: 4008, a bounded queue."""
    limits = {
        "messages_per_s": 1000.0,  # the message limit is not under test
        "message_burst": 1000,
        "slow_close_after_s": 1.0,
    }
    peaks = record_queued(monkeypatch)
    users = [f"u{i}" for i in range(1000)]
    async with gateway_with(limits) as live:
        store = counted(live.gw)
        hub = hub_of(live)
        client = await Client.open(live.gw.ws_url, live.app.id, rcvbuf=4096)
        live.clients.append(client)
        assert (await client.hello(live.token("flood")))["type"] == "welcome"
        if flood == "watch":
            assert len(await client.watch(*users)) == 1000
        session = session_of(hub, "flood")
        squeeze_send_buffer(session)
        client.pause_reading()
        big_id = "x" * (60 * 1024)

        async def flooding() -> None:
            with contextlib.suppress(ConnectionClosed):
                for i in range(200):  # 12 MB of pongs, had they all been queued
                    if flood == "ping":
                        await client.send({"type": "ping", "id": f"{i}{big_id}"})
                    else:
                        await client.send({"type": "watch", "id": i, "users": users})

        sender = asyncio.create_task(flooding())
        try:
            await eventually(lambda: session.closed, 15, "the slow client to be closed")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        assert hub.slow_closes == 1
        # a pong echoing a 60 KiB id, or a snapshot of 1,000 users
        largest_frame = max(
            len(encode(Pong(id=f"99999{big_id}"))),
            len(encode(Snapshot(id=99999, presence=[UserState(u, v=2**53) for u in users]))),
        )
        high_water = hub.config.high_water_bytes
        assert max(peaks) <= 2 * high_water + largest_frame, max(peaks)
        if flood == "watch":
            assert store.reads == 1000  # every user read once, however often re-watched
        client.resume_reading()
        assert (await client.closed_with(wait=10))[0] == 4008


async def test_resyncs_queued_behind_a_full_socket_are_bounded() -> None:
    """Resyncs of 1,000 users piling up behind a client that does not read close it with 4008."""
    users = [f"u{i}" for i in range(1000)]
    async with gateway_with({"slow_close_after_s": 3600.0}) as live:  # only the bound closes it
        hub = hub_of(live)
        high_water = hub.config.high_water_bytes
        client = await Client.open(live.gw.ws_url, live.app.id, rcvbuf=4096)
        live.clients.append(client)
        assert (await client.hello(live.token("slow")))["type"] == "welcome"
        assert len(await client.watch(*users)) == 1000
        session = session_of(hub, "slow")
        squeeze_send_buffer(session)
        client.pause_reading()
        big_id = "x" * (60 * 1024)
        for i in range(8):  # pongs for more than HIGH_WATER: the client falls behind
            await client.send({"type": "ping", "id": f"{i}{big_id}"})
        sink = session.sink
        assert sink is not None
        await eventually(lambda: sink.buffered() > high_water, 5, "the client to fall behind")
        resync_size = len(msgspec.json.encode([UserState(u) for u in users]))
        for _ in range(2 * high_water // resync_size + 2):
            hub.on_reset()
            await eventually(lambda: not hub._resyncs, 5, "the resync to be handed out")
            if session.closed:
                break
            assert queued_now(session) <= 2 * high_water + resync_size + 100
        assert session.closed and hub.slow_closes == 1
        client.resume_reading()
        assert (await client.closed_with(wait=10))[0] == 4008


async def test_websocket_pings_never_read_close_the_client_4008() -> None:
    """Protocol-level pings from a client that never reads its pongs end in 4008, not a heap."""
    async with gateway_with() as live:
        hub = hub_of(live)
        client = await Client.open(live.gw.ws_url, live.app.id, rcvbuf=4096)
        live.clients.append(client)
        assert (await client.hello(live.token("pinger")))["type"] == "welcome"
        session = session_of(hub, "pinger")
        squeeze_send_buffer(session)
        sink = session.sink
        assert sink is not None
        client.pause_reading()
        # websockets answers every ping of one read at once: the bound, plus at most one
        # read's worth of pongs (asyncio reads up to 256 KiB)
        pong_high_water = ServerConfig().pong_high_water_bytes
        BOUND = 2 * pong_high_water + 4096
        pad = b"p" * 117  # 125 bytes a ping, the largest control frame: each pong echoes it
        with contextlib.suppress(ConnectionClosed):
            for i in range(8 * pong_high_water // 125):
                if sink.buffered() > BOUND:
                    break  # the bound was not kept: fail below rather than grow further
                await client.ws.ping(b"%08d%b" % (i, pad))
        await eventually(lambda: session.closed, 15, "the pinging client to be closed")
        assert sink.buffered() <= BOUND
        client.resume_reading()
        assert (await client.closed_with(wait=10))[0] == 4008
