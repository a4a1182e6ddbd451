"""RedisBroker on real Redis and a real cluster: delivery, interest, batching, feed loss."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.backends.base import PresenceSettings
from gateway.backends.redis.broker import RedisBroker
from gateway.backends.redis.keys import user_channel
from gateway.backends.redis.store import RedisStore
from gateway.errors import StoreUnavailable
from gateway.model import PresenceEvent, state_decoder, state_encoder
from tests.clusters import Cluster
from tests.conftest import backend_url
from tests.servers import ClusterServers, RedisServer, free_port, raw_command

pytestmark = pytest.mark.redis

NOW = 1_763_700_000_000


def on(user: str, time: int = NOW, device: str = "d1") -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform="ios", online=True, time=time)


def off(user: str, time: int, device: str = "d1") -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform="ios", online=False, time=time)


class Feed:
    """A broker with handlers that record what it delivers, and a store publishing to it."""

    def __init__(self, url: str, *, cluster: bool, ping_every: float = 5.0) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self.app = f"app-{uuid.uuid4().hex[:6]}"
        self.broker = RedisBroker(url, cluster=cluster, prefix=self.prefix, ping_every=ping_every)
        self.store = RedisStore.from_url(
            url, cluster=cluster, settings=PresenceSettings(), prefix=self.prefix
        )
        self.got: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self.reset = asyncio.Event()
        self.broker.set_handlers(self.on_message, self.reset.set)

    def on_message(self, app: str, user: str, payload: bytes) -> None:
        self.got.put_nowait((app, user, payload))

    async def next(self) -> tuple[str, str, bytes]:
        async with asyncio.timeout(5):
            return await self.got.get()

    async def apply(self, *events: PresenceEvent, now: int = NOW) -> bytes:
        """Apply ``events``; the payload of the (single) state published."""
        result = await self.store.apply(self.app, events, now_ms=now)
        assert len(result.published) == 1
        return state_encoder.encode(result.published[0])

    async def aclose(self) -> None:
        await self.broker.close()
        await self.store.close()


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
async def feed(request: pytest.FixtureRequest) -> AsyncIterator[Feed]:
    """A started broker on the session's standalone Redis or cluster."""
    url = backend_url(request, request.param)
    assert url is not None
    made = Feed(url, cluster=request.param == "cluster")
    await made.broker.start()
    yield made
    await made.aclose()


@pytest.fixture
async def lone_feed(redis_proc: RedisServer) -> AsyncIterator[tuple[Feed, RedisServer]]:
    """A started broker on a Redis of this test alone (to stop, start, freeze)."""
    made = Feed(redis_proc.url, cluster=False, ping_every=0.2)
    await made.broker.start()
    yield made, redis_proc
    await made.aclose()


async def test_subscribed_user_gets_published_payload(feed: Feed) -> None:
    """After subscribe returns, a published state reaches the handler as its exact bytes."""
    await feed.broker.subscribe(feed.app, ["bob"])
    payload = await feed.apply(on("bob"))
    assert await feed.next() == (feed.app, "bob", payload)


async def test_unsubscribed_user_gets_nothing(feed: Feed) -> None:
    """After unsubscribe, that user's states are no longer delivered."""
    await feed.broker.subscribe(feed.app, ["bob", "amy"])
    await feed.broker.unsubscribe(feed.app, ["bob"])
    await feed.apply(on("bob"))
    payload = await feed.apply(on("amy"))
    assert await feed.next() == (feed.app, "amy", payload)  # nothing for bob came first
    assert feed.got.empty()


async def test_many_users_on_many_slots(feed: Feed) -> None:
    """One subscribe of users spread over every slot/node delivers each user's state."""
    users = [f"u{i}/{{x}}" for i in range(150)]
    await feed.broker.subscribe(feed.app, users)
    await feed.store.apply(feed.app, [on(u) for u in users], now_ms=NOW)
    got = {user: payload for _, user, payload in [await feed.next() for _ in users]}
    assert set(got) == set(users)
    assert all(state_decoder.decode(p).user == u for u, p in got.items())


async def test_subscribe_is_one_command(redis_url: str) -> None:
    """Subscribing many users sends one SSUBSCRIBE on standalone Redis."""
    feed = Feed(redis_url, cluster=False)
    raw = Redis.from_url(redis_url)
    try:
        await feed.broker.start()
        before = await _ssubscribe_calls(raw)
        await feed.broker.subscribe(feed.app, [f"u{i}" for i in range(100)])
        assert await _ssubscribe_calls(raw) == before + 1
    finally:
        await raw.aclose()
        await feed.aclose()


async def _ssubscribe_calls(raw: Redis) -> int:
    stats: dict[str, Any] = await raw.info("commandstats")
    calls: int = stats.get("cmdstat_ssubscribe", {}).get("calls", 0)
    return calls


async def test_async_handler_and_failing_handler(feed: Feed) -> None:
    """Async handlers are awaited; a handler that raises does not stop the listener."""
    got: asyncio.Queue[str] = asyncio.Queue()

    async def handler(app: str, user: str, payload: bytes) -> None:
        if user == "boom":
            raise RuntimeError("handler bug")
        await got.put(user)

    feed.broker.set_handlers(handler, feed.reset.set)
    await feed.broker.subscribe(feed.app, ["boom", "bob"])
    await feed.apply(on("boom"))
    await feed.apply(on("bob"))
    async with asyncio.timeout(5):
        assert await got.get() == "bob"
    assert not feed.reset.is_set()


async def test_subscribe_without_redis_raises() -> None:
    """With Redis unreachable, start returns and subscribe raises StoreUnavailable."""
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", cluster=False)
    broker.set_handlers(lambda *a: None, lambda: None)
    try:
        await broker.start()
        with pytest.raises(StoreUnavailable):
            await broker.subscribe("app", ["bob"])
    finally:
        await broker.close()


async def test_restart_resubscribes_and_resets(lone_feed: tuple[Feed, RedisServer]) -> None:
    """Redis restarted under a subscription: on_reset runs, later publishes arrive again."""
    feed, server = lone_feed
    await feed.broker.subscribe(feed.app, ["bob"])
    payload = await feed.apply(on("bob"))
    assert await feed.next() == (feed.app, "bob", payload)
    await server.astop()
    await server.astart()
    async with asyncio.timeout(10):
        await feed.reset.wait()
    assert feed.broker.resets == 1
    payload = await feed.apply(off("bob", NOW + 1), now=NOW + 1)
    assert await feed.next() == (feed.app, "bob", payload)


async def test_frozen_redis_detected_by_ping(lone_feed: tuple[Feed, RedisServer]) -> None:
    """A server that stops answering is noticed by the feed's PING; it resets once back."""
    feed, server = lone_feed
    await feed.broker.subscribe(feed.app, ["bob"])
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(250):  # poll up to 5 s: lost after two silent ping periods (0.4 s)
            if not feed.broker.live:
                break
            await asyncio.sleep(0.02)
        assert not feed.broker.live, "the feed never noticed the frozen server"
    finally:
        server.proc.send_signal(signal.SIGCONT)
    async with asyncio.timeout(10):
        await feed.reset.wait()
    payload = await feed.apply(on("bob"))
    assert await feed.next() == (feed.app, "bob", payload)


async def test_cluster_node_restart(redis_cluster_proc: ClusterServers) -> None:
    """A cluster node restarting: store calls fail then recover; the feed resets and delivers."""
    feed = Feed(redis_cluster_proc.url, cluster=True)
    try:
        await feed.broker.start()
        users = [f"u{i}" for i in range(30)]  # on every node
        await feed.broker.subscribe(feed.app, users)
        await feed.store.apply(feed.app, [on(u) for u in users], now_ms=NOW)
        assert {(await feed.next())[1] for _ in users} == set(users)
        node = redis_cluster_proc.nodes[1]
        await node.astop()
        with pytest.raises(StoreUnavailable):
            await feed.store.apply(feed.app, [off(u, NOW + 1) for u in users], now_ms=NOW + 1)
        await node.astart()  # same port and nodes.conf: it rejoins with its slots (data lost)
        async with asyncio.timeout(20):
            await feed.reset.wait()
            while True:
                try:
                    await feed.store.apply(
                        feed.app, [off(u, NOW + 2) for u in users], now_ms=NOW + 2
                    )
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.1)  # the cluster is ok again after its node timeout
        final: set[str] = set()
        while final != set(users):  # every user's last seen is now NOW + 2: each publishes it
            _, user, payload = await feed.next()
            if state_decoder.decode(payload).since == NOW + 2:  # skip NOW + 1s sent before
                final.add(user)
        assert feed.broker.resets >= 1
    finally:
        await feed.aclose()


@pytest.mark.cluster
async def test_slot_move_resubscribes_only_what_moved(tmp_path: Path) -> None:
    """A slot moving away: its channel is subscribed at the new node, the rest never stop."""
    cluster = Cluster(tmp_path / "cluster")
    await asyncio.to_thread(cluster.start)
    feed = Feed(cluster.url, cluster=True)
    try:
        await feed.broker.start()

        def node(user: str) -> str:
            slot = key_slot(user_channel(feed.prefix, feed.app, user).encode())
            return cluster.owner(slot).address

        mover = "mover"
        steady = next(f"s{i}" for i in range(1000) if node(f"s{i}") == node(mover))
        await feed.broker.subscribe(feed.app, [mover, steady])
        acked: list[int] = []
        stop = asyncio.Event()
        down: list[bool] = []

        async def publish_steady() -> None:
            t = NOW
            while not stop.is_set():
                t += 1
                event = on(steady, t) if t % 2 else off(steady, t)
                result = await feed.store.apply(feed.app, [event], now_ms=t)
                acked.extend(state.v for state in result.published)
                down.append(not feed.broker.live)
                await asyncio.sleep(0.005)

        publisher = asyncio.create_task(publish_steady())
        target = next(n for n in cluster.nodes if n.address != node(mover))
        slot = key_slot(user_channel(feed.prefix, feed.app, mover).encode())
        await asyncio.to_thread(cluster.migrate, [slot], target)
        async with asyncio.timeout(10):
            await feed.reset.wait()  # the moved channel may have missed a publish: resync
        stop.set()
        await publisher
        payload = await feed.apply(on(mover, NOW + 10**6), now=NOW + 10**6)
        got: dict[str, list[int]] = {mover: [], steady: []}
        while not got[mover]:
            _, user, body = await feed.next()
            got[user].append(state_decoder.decode(body).v)
        assert state_decoder.decode(payload).v in got[mover]
        while feed.got.qsize():
            _, user, body = feed.got.get_nowait()
            got[user].append(state_decoder.decode(body).v)
        assert set(acked) <= set(got[steady])  # nothing missed on the node that kept its slot
        assert not any(down)
        assert feed.broker.resets >= 1
    finally:
        await feed.aclose()
        await asyncio.to_thread(cluster.stop)


PASSWORD = "n0t-in-any-log-8c1f"


async def _until_down(broker: RedisBroker) -> None:
    for _ in range(250):  # poll up to 5 s
        if not broker.live:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the feed never noticed the server was gone")


class AuthRedisServer(RedisServer):
    """A redis-server that wants a password."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--requirepass", PASSWORD]

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            return raw_command(self.port, "PING", timeout=0.5).startswith(b"-NOAUTH")
        except OSError:
            return False


async def test_password_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Feed losses (a frozen, then a killed server) log and raise without the URL's password."""
    caplog.set_level(logging.DEBUG)
    server = AuthRedisServer(tmp_path / "redis")
    await server.astart()
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    feed = Feed(url, cluster=False, ping_every=0.2)
    raised: list[str] = []
    try:
        await feed.broker.start()
        await feed.broker.subscribe(feed.app, ["bob"])
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)  # noticed by the feed's PING
        try:
            await _until_down(feed.broker)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        async with asyncio.timeout(10):
            await feed.reset.wait()
        feed.reset.clear()
        await server.astop()  # kill -9
        await _until_down(feed.broker)
        for attempt in (
            feed.broker.subscribe(feed.app, ["amy"]),
            feed.store.apply(feed.app, [on("bob")], now_ms=NOW),
            feed.store.ping(),
        ):
            with pytest.raises(StoreUnavailable) as info:
                await attempt
            raised.append(str(info.value))
        await server.astart()
        async with asyncio.timeout(10):
            await feed.reset.wait()
    finally:
        await feed.aclose()
        server.stop()
    assert any("feed lost" in r.getMessage() for r in caplog.records)
    for text in [caplog.text, *raised, *(r.getMessage() for r in caplog.records)]:
        assert PASSWORD not in text
