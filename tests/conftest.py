"""Shared fixtures: real Redis servers (see ``tests/servers.py``) and presence stores."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.backends.memory import MemoryBroker, MemoryStore
from gateway.backends.redis.keys import user_channel
from gateway.backends.redis.store import RedisStore
from tests.servers import ClusterServers, RedisServer, running


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone redis-server shared by the session; tests use unique key prefixes."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with running(server):
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster shared by the session; the URL names one node."""
    cluster = ClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    with running(cluster):
        yield cluster.url


@pytest.fixture
def redis_cluster_proc(tmp_path: Path) -> Iterator[ClusterServers]:
    """A 3-master cluster of this test alone, whose nodes it may stop and start (~3 s)."""
    cluster = ClusterServers(tmp_path / "cluster")
    with running(cluster):
        yield cluster


@pytest.fixture
async def redis_proc(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test alone, to ``stop()``/``start()`` (or ``await astop()``)."""
    server = RedisServer(tmp_path / "redis")
    await server.astart()
    try:
        yield server
    finally:
        server.stop()


# -- presence stores, one contract over every backend ------------------------------------


class Inbox:
    """What a subscriber of one user's channel received, as raw published bytes."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._close: Callable[[], Awaitable[None]] | None = None

    async def next(self, within: float = 5.0) -> bytes:
        """The next payload; fails the test when none arrives ``within`` seconds."""
        async with asyncio.timeout(within):
            return await self.queue.get()

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


class Backend:
    """Makes stores of one backend, each under a key prefix of its own, and subscribers."""

    def __init__(self, name: str, url: str | None) -> None:
        self.name = name
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self._stores: list[PresenceStore] = []
        self._inboxes: list[Inbox] = []
        self._routes: dict[tuple[str, str], Inbox] = {}

    @property
    def is_redis(self) -> bool:
        return self.url is not None

    async def store(self, settings: PresenceSettings | None = None) -> PresenceStore:
        """A store on this backend (closed at teardown); stores of one test share the data."""
        settings = settings or PresenceSettings()
        store: PresenceStore
        if self.url is None:
            broker = MemoryBroker()
            broker.set_handlers(self._deliver, _no_reset)
            store = MemoryStore(settings, broker)
        else:
            store = RedisStore.from_url(
                self.url, cluster=self.name == "cluster", settings=settings, prefix=self.prefix
            )
        self._stores.append(store)
        return store

    def _deliver(self, app: str, user: str, payload: bytes) -> None:
        inbox = self._routes.get((app, user))
        if inbox is not None:
            inbox.queue.put_nowait(payload)

    async def listen(self, store: PresenceStore, app: str, user: str) -> Inbox:
        """Subscribe to ``user``'s published states; returns once the subscription is live."""
        inbox = Inbox()
        self._inboxes.append(inbox)
        if isinstance(store, MemoryStore):
            self._routes[(app, user)] = inbox
            await store.broker.subscribe(app, [user])
            return inbox
        assert isinstance(store, RedisStore) and self.url is not None
        channel = user_channel(self.prefix, app, user)
        if self.name == "cluster":
            await _listen_cluster(self.url, channel, inbox)
        else:
            await _listen_standalone(self.url, channel, inbox)
        return inbox

    async def aclose(self) -> None:
        """Close every store and subscriber made so far."""
        inboxes, self._inboxes, self._routes = self._inboxes, [], {}
        stores, self._stores = self._stores, []
        for inbox in inboxes:
            await inbox.close()
        for store in stores:
            await store.close()


def _no_reset() -> None:
    pass


async def _listen_standalone(url: str, channel: str, inbox: Inbox) -> None:
    client = Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.ssubscribe(channel)
    reply = await pubsub.get_message(timeout=5.0)
    assert reply is not None and reply["type"] == "ssubscribe", reply

    async def pump() -> None:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["type"] == "smessage":
                inbox.queue.put_nowait(msg["data"])

    task = asyncio.create_task(pump())

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
        await client.aclose()

    inbox._close = close


async def _listen_cluster(url: str, channel: str, inbox: Inbox) -> None:
    client = RedisCluster.from_url(url)
    await client.initialize()
    pubsub = client.pubsub()
    await pubsub.ssubscribe(channel)
    reply = await pubsub.get_sharded_message(timeout=5.0)
    assert reply is not None and reply["type"] == "ssubscribe", reply

    async def pump() -> None:
        while True:
            msg = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["type"] == "smessage":
                inbox.queue.put_nowait(msg["data"])

    task = asyncio.create_task(pump())

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await client.aclose()

    inbox._close = close


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
]
SHARED_BACKENDS = BACKENDS[1:]
"""The backends several nodes share (``@pytest.mark.parametrize("backend", …, indirect=True)``)."""


def backend_url(request: pytest.FixtureRequest, name: str) -> str | None:
    """The server URL of backend ``name``, starting the session's server on first use."""
    if name == "memory":
        return None
    fixture = "redis_cluster_url" if name == "cluster" else "redis_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """One backend per parameter (memory, redis, cluster) with a key prefix of this test."""
    made = Backend(request.param, backend_url(request, request.param))
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def store(backend: Backend) -> PresenceStore:
    """A store with default settings on the parametrized backend."""
    return await backend.store()
