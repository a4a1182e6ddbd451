"""Single-node fan-out under load, through uvicorn and real WebSocket clients.

- A stalled client (it stops reading) delays nobody and is closed with 4008.
- The snapshot/subscribe race: clients watching users while they change end with the
  store's state and never see a user's ``v`` go back.
- Coalescing: a client that is behind gets the latest state of a user, never an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import msgspec
import pytest

from gateway.app import Gateway
from gateway.backends.memory import MemoryBroker
from gateway.config import AppConfig, ConnectionsConfig, ServerConfig, Settings
from gateway.hub import Hub
from gateway.model import UserState
from gateway.providers.rongcloud import signed_query
from gateway.session import Session
from gateway.sinks import RawSink
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import RONGCLOUD, app_of, make_settings, now_ms, query
from tests.wsclient import Client, Watcher

CLIENTS = 1000


def raise_fd_limit(need: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``need`` (both ends of every connection live here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == resource.RLIM_INFINITY or soft >= need, f"RLIMIT_NOFILE {soft} < {need}"


def with_app(connections: ConnectionsConfig | None = None, **changes: Any) -> Settings:
    """One app with ``changes``; every client of these tests comes from one loopback address."""
    settings = make_settings()
    app = msgspec.structs.replace(app_of(settings), **changes)
    return Settings(
        apps={app.id: app},
        server=ServerConfig(max_connections_per_ip=4 * CLIENTS),
        connections=connections or ConnectionsConfig(),
    )


def parts(gw: LiveGateway) -> Gateway:
    gateway_ = gw.app.state.gateway
    assert isinstance(gateway_, Gateway)
    return gateway_


def session_of(hub: Hub, user: str) -> Session:
    sessions = [s for s in hub.sessions if isinstance(s, Session)]
    (session,) = [s for s in sessions if s.claims is not None and s.claims.sub == user]
    return session


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


class Toggler:
    """Flips users online/offline with signed RongCloud batches, each batch a newer time."""

    def __init__(self, http: httpx.AsyncClient, app: AppConfig) -> None:
        self.http = http
        self.app = app
        self.time = now_ms()
        self.online: dict[str, bool] = {}
        self.batches = 0

    async def flip(self, users: Sequence[str]) -> None:
        self.time += 1
        events = []
        for user in users:
            on = self.online[user] = not self.online.get(user, False)
            events.append(
                {
                    "userid": user,
                    "status": "0" if on else "1",
                    "os": "Android",
                    "time": self.time,
                    "clientIp": "10.9.8.7:1234",
                    "sessionId": f"s-{user}",
                }
            )
        # a fresh nonce per batch: RongCloud's signature does not cover the body, so the
        # gateway refuses one (nonce, timestamp) for a second body, and writers run at once
        params = signed_query(RONGCLOUD, now_ms(), nonce=uuid.uuid4().hex)
        r = await self.http.post(
            f"/v1/apps/{self.app.id}/webhooks/rongcloud", params=params, json=events
        )
        assert r.status_code == 200, r.text
        self.batches += 1


async def store_states(
    http: httpx.AsyncClient, app: AppConfig, users: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The store's state of ``users`` through the query API."""
    states: dict[str, dict[str, Any]] = {}
    for i in range(0, len(users), 1000):
        for state in await query(http, app, *users[i : i + 1000]):
            states[state["user"]] = state
    return states


@contextlib.asynccontextmanager
async def watchers(
    gw: LiveGateway, app: AppConfig, count: int, users: Sequence[str]
) -> AsyncIterator[list[Watcher]]:
    """``count`` logged-in watchers of ``users``, closed on exit."""
    opened: list[Watcher] = []

    async def one(i: int) -> None:
        watcher = await Watcher.login(gw.ws_url, app.id, app.client_secret, f"w{i}")
        opened.append(watcher)
        await watcher.watch(*users)

    try:
        for start in range(0, count, 100):
            await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
        yield opened
    finally:
        await asyncio.gather(*(w.close() for w in opened))
    for w in opened:
        assert not w.violations, w.violations[:5]


async def stalled_client(gw: LiveGateway, app: AppConfig, user: str) -> Client:
    """A logged-in client with a tiny receive buffer, so the server's send buffer fills."""
    from gateway import tokens

    client = await Client.open(gw.ws_url, app.id, rcvbuf=4096)
    welcome = await client.hello(tokens.issue(app.client_secret, app.id, user))
    assert welcome["type"] == "welcome"
    return client


def squeeze_send_buffer(session: Session) -> None:
    """Shrink the server's kernel send buffer of ``session``'s connection.

    On loopback Linux autotunes it to about 4 MiB, which a stalled client would need
    thousands of batches to fill; over a real network the bandwidth-delay product bounds it.
    The gateway's own buffering (what this test is about) starts where the kernel's ends.
    """
    assert isinstance(session.sink, RawSink)
    sock = session.sink.raw.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


# -- a stalled client ---------------------------------------------------------------------


async def test_stalled_client_delays_nobody_and_is_closed_4008() -> None:
    """A client that stops reading does not delay 1,000 watchers of its users; it gets 4008."""
    raise_fd_limit(4 * CLIENTS + 512)
    users = [f"u{i}" for i in range(2000)]
    shared = users[:5]
    tunables = ConnectionsConfig(high_water_bytes=16 * 1024, slow_close_after_s=3600.0)
    settings = with_app(tunables, max_watch=len(users))  # slow_close_after_s lowered below
    app = app_of(settings)
    async with (
        serve(settings) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as http,
        watchers(gw, app, CLIENTS, shared) as others,
    ):
        hub = parts(gw).hub
        stalled = await stalled_client(gw, app, "stalled")
        try:
            await stalled.watch(*users)
            stalled.pause_reading()
            session = session_of(hub, "stalled")
            squeeze_send_buffer(session)
            toggler = Toggler(http, app)

            async def batch_reaches_everyone() -> float:
                """Flip every user; seconds until all 1,000 watchers have the new states."""
                started = time.monotonic()
                await toggler.flip(users)
                store = await store_states(http, app, shared)
                await eventually(
                    lambda: all(w.view[u]["v"] >= store[u]["v"] for w in others for u in shared),
                    within=10,
                    what="the batch to reach every watcher",
                )
                return time.monotonic() - started

            # fill the stalled client's buffers until the server holds it back
            for _ in range(20):
                await batch_reaches_everyone()
                if session.outbox.behind_since is not None:
                    break
            assert session.outbox.behind_since is not None, "the stalled client never fell behind"
            assert session.sink is not None and session.sink.buffered() > 16 * 1024
            # while it stays behind, every batch still reaches the others promptly
            latencies = [await batch_reaches_everyone() for _ in range(3)]
            assert session.outbox.behind_since is not None and not session.closed
            assert max(latencies) < 3.0, latencies
            assert len(session.outbox.pending) == len(users)  # one coalesced state per user
            # past the bound it is closed with 4008, and the others still get every change
            session.outbox.slow_close_after = 0.0  # its own bound, lowered
            await eventually(lambda: session not in hub.sessions, 5, "the 4008 close")
            assert hub.slow_closes == 1
            await batch_reaches_everyone()
            assert len(hub.sessions) == CLIENTS
            stalled.resume_reading()
            code, reason = await stalled.closed_with(wait=10)
            assert code == 4008, (code, reason)
        finally:
            await stalled.close()
        final = await store_states(http, app, shared)
        assert all(w.view == final for w in others)


# -- coalescing ---------------------------------------------------------------------------


async def test_client_behind_gets_latest_state_never_an_older_one() -> None:
    """While a client is behind, several states of a user collapse into the latest one."""
    filler = [f"f{i}" for i in range(400)]
    tunables = ConnectionsConfig(high_water_bytes=4096, slow_close_after_s=3600.0)
    settings = with_app(tunables, max_watch=1000)
    app = app_of(settings)
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        hub = parts(gw).hub
        slow = Watcher(await stalled_client(gw, app, "slow"), "slow")
        try:
            await slow.watch(*filler, "x")
            toggler = Toggler(http, app)
            slow.client.pause_reading()
            session = session_of(hub, "slow")
            squeeze_send_buffer(session)
            for _ in range(50):
                await toggler.flip(filler)
                if session.outbox.behind_since is not None:
                    break
            await eventually(
                lambda: session.outbox.behind_since is not None, 2, "the client to fall behind"
            )
            versions = []
            for _ in range(5):
                await toggler.flip(["x"])
                versions.append((await store_states(http, app, ["x"]))["x"]["v"])
            assert session.outbox.behind_since is not None and not session.closed
            assert session.outbox.watching["x"] == versions[-1]  # only the latest is kept…
            assert f'"v":{versions[-1]}'.encode() in session.outbox.pending["x"]  # …unsent
            slow.client.resume_reading()
            final = await store_states(http, app, [*filler, "x"])
            await eventually(lambda: slow.view == final, 10, "the client to catch up")
            assert slow.history["x"] == [0, versions[-1]]  # snapshot, then only the latest
            assert not slow.violations, slow.violations[:5]
        finally:
            await slow.close()


# -- the snapshot/subscribe race -----------------------------------------------------------


class Feed:
    """The simulated pub/sub feed of ``networked_latency``; it can be lost for a while."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.lost = False
        self.outages = 0

    async def outage(self, seconds: float) -> None:
        """Drop every published state for ``seconds``, then reset like a reconnected broker
        (this models an outage; it waits for no state)."""
        self.lost = True
        await asyncio.sleep(seconds)
        self.lost = False
        self.outages += 1
        self.hub.on_reset()


@contextlib.asynccontextmanager
async def networked_latency(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, seed: int
) -> AsyncIterator[Feed]:
    """Give the memory backend the interleavings of a networked one.

    Store reads and (un)subscribes take effect a random moment after the call and return a
    random moment after that; published states reach the hub after a random delay, in
    publish order like a pub/sub connection. So a change can land between subscribe and the
    snapshot read, or be read before its publish arrives, and an unsubscribe can still be
    in flight when the same user is subscribed again.
    """
    rng = random.Random(seed)
    store, broker, hub = gw.store, gw.broker, gw.hub
    loop = asyncio.get_running_loop()

    async def hop() -> None:
        """One network leg: a few turns of the event loop, up to 2 ms, or now and then a
        slow one of up to 20 ms (this models latency; it waits for no state)."""
        if rng.random() < 0.1:
            await asyncio.sleep(rng.random() * 0.02)
        elif rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.002)
        else:
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)

    real_get, real_subscribe, real_unsubscribe = store.get, broker.subscribe, broker.unsubscribe

    async def get(app: str, users: Sequence[str]) -> list[UserState]:
        await hop()
        states = await real_get(app, users)
        await hop()
        return states

    async def subscribe(app: str, users: Sequence[str]) -> None:
        await hop()
        await real_subscribe(app, users)
        await hop()

    async def unsubscribe(app: str, users: Sequence[str]) -> None:
        await hop()
        await real_unsubscribe(app, users)
        await hop()

    feed: asyncio.Queue[tuple[float, tuple[str, str, bytes]]] = asyncio.Queue()

    lossy = Feed(hub)

    def publish(app: str, user: str, payload: bytes) -> None:
        if not lossy.lost:
            feed.put_nowait((loop.time() + rng.random() * 0.002, (app, user, payload)))

    async def pump() -> None:
        """Deliver each published state after its latency, never before an earlier one."""
        while True:
            due, message = await feed.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            hub.on_message(*message)

    monkeypatch.setattr(store, "get", get)
    monkeypatch.setattr(broker, "subscribe", subscribe)
    monkeypatch.setattr(broker, "unsubscribe", unsubscribe)
    broker.set_handlers(publish, hub.on_reset)
    task = asyncio.create_task(pump())
    try:
        yield lossy
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("backend", "latency", "outages"),
    [
        ("memory", False, False),
        ("memory", True, False),
        ("memory", True, True),
        ("redis", False, False),
        ("cluster", False, False),
    ],
    ids=["memory", "networked", "networked-feed-loss", "redis", "cluster"],
)
async def test_watching_while_users_change_ends_in_the_store_state(
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
    latency: bool,
    outages: bool,
) -> None:
    """Clients (un)watching while users change end with the store's state; v never goes back."""
    common = [f"r{i}" for i in range(40)]  # watched by many clients at once
    rare = [f"q{i}" for i in range(400)]  # a few watchers each: their interest comes and goes
    everyone = common + rare
    if backend == "memory":
        settings = make_settings()
    elif backend == "redis":
        settings = make_settings(request.getfixturevalue("redis_url"))
    else:
        settings = make_settings(request.getfixturevalue("redis_cluster_url"), cluster=True)
    churn = ConnectionsConfig(unsubscribe_delay_s=0.002)  # unsubscribe/resubscribe churn
    settings = msgspec.structs.replace(settings, connections=churn)
    app = app_of(settings)
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        hub = parts(gw).hub
        async with contextlib.AsyncExitStack() as stack:
            feed = None
            if latency:
                feed = await stack.enter_async_context(networked_latency(parts(gw), monkeypatch, 7))
            toggler = Toggler(http, app)
            stop = asyncio.Event()

            async def losing_the_feed() -> None:
                assert feed is not None
                rng = random.Random(3)
                while not stop.is_set():
                    await feed.outage(rng.random() * 0.005)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), rng.random() * 0.05)

            async def writer(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    await toggler.flip(rng.sample(common, 3) + rng.sample(rare, 6))

            opened: list[tuple[Watcher, set[str]]] = []

            async def client(i: int) -> None:
                rng = random.Random(i)
                watcher = await Watcher.login(gw.ws_url, app.id, app.client_secret, f"c{i}")
                mine = rng.sample(common, 12) + [rare[(2 * i + k) % len(rare)] for k in range(4)]
                rng.shuffle(mine)
                opened.append((watcher, set(mine)))
                for chunk in (mine[:6], mine[3:11], mine[8:]):  # overlapping requests
                    await watcher.watch(*chunk)
                for _ in range(4):
                    gone = rng.sample(mine, 5)
                    await watcher.unwatch(*gone)
                    await watcher.watch(*rng.sample(gone, 5))

            writers = [asyncio.create_task(writer(seed)) for seed in range(3)]
            if outages:
                writers.append(asyncio.create_task(losing_the_feed()))
            try:
                before = toggler.batches
                for wave in range(4):
                    await asyncio.gather(*(client(wave * 50 + i) for i in range(50)))
                assert toggler.batches - before >= 20, "too few changes during the watches"
                assert not outages or (feed is not None and feed.outages >= 10)
            finally:
                stop.set()
                await asyncio.gather(*writers)
            broker = parts(gw).broker
            subs = broker._subs if isinstance(broker, MemoryBroker) else set()

            async def assert_views_equal_store() -> None:
                final = await store_states(http, app, everyone)
                with contextlib.suppress(AssertionError):
                    await eventually(
                        lambda: all(w.view == {u: final[u] for u in mine} for w, mine in opened),
                        within=10,
                        what="every client to see the store's state",
                    )
                stale = [
                    (w.name, u, w.view.get(u, {}).get("v"), final[u]["v"])
                    for w, mine in opened
                    for u in sorted(mine)
                    if w.view.get(u) != final[u]
                ]
                lost = {u for _, u, _, _ in stale if (app.id, u) not in subs}
                assert not stale, f"{len(stale)} stale, e.g. {stale[:5]}; unsubscribed: {lost}"

            try:
                await assert_views_equal_store()  # no change was missed…
                await toggler.flip(everyone)
                await assert_views_equal_store()  # …and no subscription was lost
                violations = [v for w, _ in opened for v in w.violations]
                assert not violations, violations[:10]
            finally:
                await asyncio.gather(*(w.close() for w, _ in opened))
            # every watch was released: nothing indexed, nothing left subscribed
            await eventually(lambda: not hub.index and not hub.sessions, 5, "the index to empty")
            if isinstance(broker, MemoryBroker):
                await eventually(lambda: not broker._subs, 5, "every unsubscribe")


async def test_feed_loss_during_a_snapshot_read_is_not_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A state lost with the feed while a user's snapshot is being read still reaches the client."""
    settings = make_settings()
    app = app_of(settings)
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        gateway_ = parts(gw)
        store, broker, hub = gateway_.store, gateway_.broker, gateway_.hub
        toggler = Toggler(http, app)
        await toggler.flip(["x"])
        (before,) = await store.get(app.id, ["x"])
        real_get = store.get
        reading, release = asyncio.Event(), asyncio.Event()

        async def slow_first_read(app_id: str, users: Sequence[str]) -> list[UserState]:
            states = await real_get(app_id, users)  # read now, answer late
            if not reading.is_set():
                reading.set()
                await release.wait()
            return states

        monkeypatch.setattr(store, "get", slow_first_read)
        client = await Client.login(gw.ws_url, app.id, app.client_secret)
        try:
            client.next_id += 1
            await client.send({"type": "watch", "id": client.next_id, "users": ["x"]})
            await asyncio.wait_for(reading.wait(), 5)
            broker.set_handlers(lambda app_id, user, payload: None, hub.on_reset)  # feed lost
            await toggler.flip(["x"])
            broker.set_handlers(hub.on_message, hub.on_reset)  # feed back
            hub.on_reset()
            assert await client.recv() == {"type": "resync", "presence": []}
            release.set()
            snapshot = await client.recv()
            assert snapshot["type"] == "snapshot" and snapshot["presence"][0]["v"] == before.v
            (after,) = await real_get(app.id, ["x"])
            assert after.v > before.v
            presence = await client.next_presence("x")
            assert presence == {"type": "presence", **msgspec.to_builtins(after)}
        finally:
            await client.close()


async def test_resets_in_a_row_never_resync_to_an_older_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow resync finishing after a later one is not sent: it read an older state."""
    settings = make_settings()
    app = app_of(settings)
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        gateway_ = parts(gw)
        store, broker, hub = gateway_.store, gateway_.broker, gateway_.hub
        toggler = Toggler(http, app)
        await toggler.flip(["x"])
        client = await Client.login(gw.ws_url, app.id, app.client_secret)
        try:
            before = (await client.watch("x"))["x"]
            real_get = store.get
            reading, release = asyncio.Event(), asyncio.Event()

            async def slow_first_read(app_id: str, users: Sequence[str]) -> list[UserState]:
                states = await real_get(app_id, users)  # read now, answer late
                if not reading.is_set():
                    reading.set()
                    await release.wait()
                return states

            monkeypatch.setattr(store, "get", slow_first_read)
            hub.on_reset()  # the first reset's resync reads x and hangs
            await asyncio.wait_for(reading.wait(), 5)
            broker.set_handlers(lambda app_id, user, payload: None, hub.on_reset)  # lost again
            await toggler.flip(["x"])
            broker.set_handlers(hub.on_message, hub.on_reset)
            hub.on_reset()  # the second reset's resync reads the newer x and finishes first
            resync = await client.recv()
            assert resync["type"] == "resync" and resync["presence"][0]["v"] > before["v"]
            release.set()
            await eventually(lambda: not hub._resyncs, 5, "the first resync to finish")
            await client.send({"type": "ping", "id": "after"})
            assert await client.recv() == {"type": "pong", "id": "after"}  # nothing before it
        finally:
            await client.close()
