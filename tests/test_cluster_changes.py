"""Redis Cluster topology changes under live webhooks and watchers: no lost acks, no long 503s.

Each test runs its own cluster (``tests/clusters.py``) and, while the cluster changes, keeps
applies going (as webhooks would) and watches every user through a ``RedisBroker``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from gateway.backends.base import PresenceSettings
from gateway.backends.redis.broker import RedisBroker
from gateway.backends.redis.scripts import APPLY
from gateway.backends.redis.store import RedisStore
from gateway.errors import StoreUnavailable
from gateway.model import PresenceEvent, state_decoder
from tests.clusters import Cluster

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

NOW = 1_763_700_000_000
USERS = 48
WRITERS = 4
SETTLE_S = 15.0  # time allowed to converge after a change (it takes well under a second)


class Traffic:
    """Applies going on for every user, what Redis acked, and when calls failed."""

    def __init__(self, store: RedisStore, app: str, users: list[str]) -> None:
        self.store = store
        self.app = app
        self.users = users
        self.acked: dict[str, int] = {}  # user -> time of its last acked event
        self.failures = 0
        self.outage = 0.0  # the longest time from a failure to the next success
        self.ok_streak = 0  # applies succeeded in a row, every writer
        self._failing_since: float | None = None
        self._clock = NOW
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._going = asyncio.Event()
        self._going.set()
        self._inflight = 0
        self._tick = asyncio.Event()  # set as each apply ends

    async def _until(self, check: Callable[[], bool]) -> None:
        """Until ``check`` holds after some apply ended (fails the test after SETTLE_S)."""
        async with asyncio.timeout(SETTLE_S):
            while not check():
                self._tick.clear()
                await self._tick.wait()

    async def pause(self) -> None:
        """Hold new applies back until ``resume``; return once those in flight ended."""
        self._going.clear()
        await self._until(lambda: self._inflight == 0)

    def resume(self) -> None:
        self._going.set()

    def start(self) -> None:
        for i in range(WRITERS):
            mine = self.users[i::WRITERS]  # one writer per user: its acks come in order
            self._tasks.append(asyncio.create_task(self._write(mine)))

    async def stop(self) -> None:
        self._stop.set()
        self._going.set()
        await asyncio.gather(*self._tasks)

    async def healthy(self, streak: int = 3 * USERS) -> None:
        """Until ``streak`` applies in a row succeeded (fails the test after SETTLE_S)."""
        self.ok_streak = 0
        await self._until(lambda: self.ok_streak >= streak)

    async def _write(self, users: list[str]) -> None:
        n = 0
        while not self._stop.is_set():
            await self._going.wait()
            user = users[n % len(users)]
            n += 1
            self._clock += 1
            t = self._clock
            online = (n // len(users)) % 2 == 0
            event = PresenceEvent(user=user, device="d1", platform="ios", online=online, time=t)
            self._inflight += 1
            try:
                await self.store.apply(self.app, [event], now_ms=t)
            except StoreUnavailable:
                self._inflight -= 1
                self._tick.set()
                self.failures += 1
                self.ok_streak = 0
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                await asyncio.sleep(0.01)  # a provider's retry comes later, too
                continue
            self._inflight -= 1
            self._tick.set()
            self.acked[user] = max(self.acked.get(user, 0), t)
            self.ok_streak += 1
            if self._failing_since is not None:
                self.outage = max(self.outage, time.monotonic() - self._failing_since)
                self._failing_since = None
            await asyncio.sleep(0)

    async def assert_nothing_lost(self) -> None:
        """Every acked event is in Redis: each user's record holds its last acked time."""
        for user in self.users:
            records = await self.store.records(self.app, user)
            assert records["d1"].time == self.acked[user], user


class Watch:
    """A broker subscribed to every user, collecting what it delivers."""

    def __init__(self, url: str, prefix: str, app: str) -> None:
        self.broker = RedisBroker(url, cluster=True, prefix=prefix)
        self.app = app
        self.latest: dict[str, int] = {}  # user -> the highest version ``v`` delivered
        self.resets = asyncio.Event()
        self._tick = asyncio.Event()  # set at each delivery
        self.broker.set_handlers(self._message, self.resets.set)

    def _message(self, app: str, user: str, payload: bytes) -> None:
        v = state_decoder.decode(payload).v
        self.latest[user] = max(self.latest.get(user, 0), v)
        self._tick.set()

    async def delivers(self, store: RedisStore, users: list[str], at: int) -> None:
        """A publish for each of ``users`` at ``at`` reaches the broker (within a deadline)."""
        events = [
            PresenceEvent(user=u, device="d2", platform="web", online=True, time=at) for u in users
        ]
        await store.apply(self.app, events, now_ms=at)
        events = [
            PresenceEvent(user=u, device="d2", platform="web", online=False, time=at + 1)
            for u in users
        ]
        await store.apply(self.app, events, now_ms=at + 1)  # published with v = at + 1
        async with asyncio.timeout(5):
            while any(self.latest.get(u, 0) < at + 1 for u in users):
                self._tick.clear()
                await self._tick.wait()


class Scene:
    """A cluster, a store and a watching broker on it, traffic for ``USERS`` users."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        prefix = f"t{uuid.uuid4().hex[:12]}"
        self.app = f"app-{uuid.uuid4().hex[:6]}"
        self.store = RedisStore.from_url(
            cluster.url, cluster=True, settings=PresenceSettings(), prefix=prefix
        )
        self.users = [f"u{i}" for i in range(USERS)]
        self.traffic = Traffic(self.store, self.app, self.users)
        self.watch = Watch(cluster.url, prefix, self.app)

    def slot(self, user: str) -> int:
        return key_slot(self.store.key(self.app, user).encode())

    async def start(self) -> None:
        await self.watch.broker.start()
        await self.watch.broker.subscribe(self.app, self.users)
        await self.watch.delivers(self.store, self.users, NOW - 10)
        self.traffic.start()
        await self.traffic.healthy(USERS)

    async def converged(self) -> None:
        """After a change: applies succeed again, nothing acked is lost, watchers get it all."""
        await self.traffic.healthy()
        await self.traffic.stop()
        await self.traffic.assert_nothing_lost()
        async with asyncio.timeout(SETTLE_S):  # the broker may still be moving subscriptions
            while True:
                try:
                    await self.watch.delivers(self.store, self.users, self.traffic._clock + 10)
                    break
                except TimeoutError:
                    self.traffic._clock += 10
        # and from now on every publish arrives, at once
        await self.watch.delivers(self.store, self.users, self.traffic._clock + 100)

    async def aclose(self) -> None:
        await self.traffic.stop()
        await self.watch.broker.close()
        await self.store.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """3 masters, no replicas, of this test alone."""
    made = Cluster(tmp_path / "cluster")
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Cluster]:
    """3 masters with a replica each, of this test alone."""
    made = Cluster(tmp_path / "cluster", replicas=1)
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
async def scene_on(request: pytest.FixtureRequest) -> AsyncIterator[Scene]:
    made = Scene(request.getfixturevalue(request.param))
    try:
        await made.start()
        yield made
    finally:
        await made.aclose()


@pytest.mark.parametrize("scene_on", ["cluster"], indirect=True)
async def test_added_node_takes_slots_under_traffic(scene_on: Scene) -> None:
    """A node joins and slots of a third of the users move to it while applies and watches run."""
    scene = scene_on
    new = await asyncio.to_thread(scene.cluster.add_master)
    moving = {scene.slot(u) for u in scene.users[::3]}
    await asyncio.to_thread(scene.cluster.migrate, moving, new)
    assert {scene.cluster.owner(s) for s in moving} == {new}
    await scene.converged()
    assert scene.traffic.outage < 3.0, scene.traffic.outage
    assert scene.watch.resets.is_set()  # watchers of the moved users got a resync


@pytest.mark.parametrize("scene_on", ["replicated"], indirect=True)
async def test_graceful_failover_under_traffic(scene_on: Scene) -> None:
    """A replica promoted by CLUSTER FAILOVER (a rolling upgrade's step) serves at once."""
    scene = scene_on
    master = scene.cluster.owner(scene.slot(scene.users[0]))
    promoted = await asyncio.to_thread(scene.cluster.failover, master)
    assert scene.cluster.owner(scene.slot(scene.users[0])) is promoted
    await scene.converged()
    assert scene.traffic.outage < 3.0, scene.traffic.outage


@pytest.mark.parametrize("scene_on", ["replicated"], indirect=True)
async def test_killed_master_under_traffic(scene_on: Scene) -> None:
    """kill -9 of a master: applies fail only until its replica is promoted, then all succeed."""
    scene = scene_on
    master = scene.cluster.owner(scene.slot(scene.users[0]))
    # Replication is asynchronous: an ack the replica never saw dies with the master (Redis
    # does not promise more without WAIT). Let it catch up before the kill, writes held back.
    await scene.traffic.pause()
    await asyncio.to_thread(scene.cluster.wait_replica_synced, master)
    before = scene.traffic.failures
    replica = scene.cluster.replica_of(master)
    await asyncio.to_thread(scene.cluster.kill, master)
    scene.traffic.resume()
    await asyncio.to_thread(scene.cluster.wait_promoted, replica)
    await scene.converged()
    assert scene.traffic.failures > before  # the outage was seen, and it ended


async def test_moved_to_a_new_node_loads_the_scripts_there(cluster: Cluster) -> None:
    """An apply sent on a stale topology follows MOVED to a new node and loads its scripts."""
    store = RedisStore.from_url(
        cluster.url, cluster=True, settings=PresenceSettings(), prefix=f"t{uuid.uuid4().hex[:8]}"
    )
    try:
        event = PresenceEvent(user="bob", device="d1", platform="ios", online=True, time=NOW)
        await store.apply("app", [event], now_ms=NOW)  # the topology is read once, here
        new = await asyncio.to_thread(cluster.add_master)
        slot = key_slot(store.key("app", "bob").encode())
        await asyncio.to_thread(cluster.migrate, [slot], new)
        assert new.run("SCRIPT", "EXISTS", APPLY.sha) == [0]  # an empty script cache
        later = PresenceEvent(user="bob", device="d1", platform="ios", online=False, time=NOW + 1)
        result = await store.apply("app", [later], now_ms=NOW + 1)  # via the old node's MOVED
        assert result.applied == 1
        assert (await store.records("app", "bob"))["d1"].time == NOW + 1
    finally:
        await store.close()


async def test_node_back_at_a_new_address(cluster: Cluster) -> None:
    """A master back at a new address is served there; the lane to the old address is closed."""
    store = RedisStore.from_url(
        cluster.url, cluster=True, settings=PresenceSettings(), prefix=f"t{uuid.uuid4().hex[:8]}"
    )
    users = [f"u{i}" for i in range(30)]
    try:
        events = [
            PresenceEvent(user=u, device="d1", platform="ios", online=True, time=NOW) for u in users
        ]
        await store.apply("app", events, now_ms=NOW)
        moved = cluster.nodes[1]
        old = moved.address
        await asyncio.to_thread(cluster.readdress, moved)
        later = [
            PresenceEvent(user=u, device="d1", platform="ios", online=False, time=NOW + 1)
            for u in users
        ]
        async with asyncio.timeout(SETTLE_S):
            while True:
                try:
                    result = await store.apply("app", later, now_ms=NOW + 1)
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)  # a provider retries later, too
        assert result.applied + result.ignored == len(users)  # ignored: taken by a try before
        for user in users:
            assert (await store.records("app", user))["d1"].time == NOW + 1
        assert old not in await store._wire.primaries()
        assert old not in store._wire._lanes
    finally:
        await store.close()
