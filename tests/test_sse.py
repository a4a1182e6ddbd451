"""Server-Sent Events (SPEC section 10) through a real gateway and a real streaming client.

The gateway runs under uvicorn in the test's loop (``tests.live``); the client is httpx
reading the response as it streams, or a raw socket where a client must stop reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from gateway import tokens
from gateway.app import Gateway
from gateway.config import AppConfig, Settings
from gateway.sse import EventStream
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import app_of, make_settings, query, tencent
from tests.test_fanout import Toggler
from tests.test_heap import _cyclic_leftovers, _http_protocols
from tests.test_ws_protocol import BAD_TOKENS, tuned
from tests.wsclient import Client

STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)


@dataclass(frozen=True)
class Event:
    """One SSE block: ``name`` is the event name, or ``retry`` / ``comment``."""

    name: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def parse_block(lines: list[str]) -> Event:
    """One block of lines (the blank line excluded) as an Event."""
    name, data = "message", []
    for line in lines:
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "":
            return Event("comment", value)
        if field == "retry":
            return Event("retry", value)
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return Event(name, "\n".join(data))


class Stream:
    """An open SSE response; a reader task queues its events (None once it ended)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()
        self.ended_with: BaseException | None = None  # how the body ended, if not cleanly
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        block: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line:
                    block.append(line)
                elif block:
                    self.events.put_nowait(parse_block(block))
                    block = []
        except httpx.HTTPError as exc:
            self.ended_with = exc
        finally:
            self.events.put_nowait(None)

    async def next(self, within: float = 5.0, *, pings: bool = False) -> Event | None:
        """The next event (ping comments skipped unless ``pings``); None once it ended."""
        async with asyncio.timeout(within):
            while True:
                got = await self.events.get()
                if got is None:
                    self.events.put_nowait(None)  # stays ended
                    return None
                if pings or got.name != "comment":
                    return got

    async def presence(self, user: str, within: float = 5.0) -> dict[str, Any]:
        """The next ``presence`` event of ``user``."""
        deadline = time.monotonic() + within
        while True:
            got = await self.next(max(0.01, deadline - time.monotonic()))
            assert got is not None, "the stream ended"
            if got.name == "presence" and got.json()["user"] == user:
                return got.json()  # type: ignore[no-any-return]

    async def start(self) -> dict[str, dict[str, Any]]:
        """``retry: 2000`` then the snapshot; the snapshot's states by user."""
        first = await self.next()
        assert first == Event("retry", "2000"), first
        snapshot = await self.next()
        assert snapshot is not None and snapshot.name == "snapshot", snapshot
        return {s["user"]: s for s in snapshot.json()["presence"]}

    async def ended(self, within: float = 10.0) -> None:
        """Wait for the body to end."""
        async with asyncio.timeout(within):
            await asyncio.shield(self.task)


@contextlib.asynccontextmanager
async def open_stream(
    base_url: str,
    app: str,
    users: list[str],
    token: str | None,
    *,
    in_query: bool = False,
    headers: dict[str, str] | None = None,
    params: list[tuple[str, str]] | None = None,
) -> AsyncIterator[Stream]:
    """GET the app's SSE endpoint; the Stream (a refusal too: its body read)."""
    query: list[tuple[str, str | int | float | bool | None]] = [("user", u) for u in users]
    query += params or []
    head = dict(headers or {})
    if token is not None and in_query:
        query.append(("token", token))
    elif token is not None:
        head["Authorization"] = f"Bearer {token}"
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=STREAM_TIMEOUT) as http,
        http.stream("GET", f"/v1/apps/{app}/sse", params=query, headers=head) as response,
    ):
        if response.status_code != 200:
            await response.aread()
        stream = Stream(response)
        try:
            yield stream
        finally:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task


class Live:
    """A running gateway with one app."""

    def __init__(self, gw: LiveGateway, app: AppConfig) -> None:
        self.gw = gw
        self.app = app
        self.http = httpx.AsyncClient(base_url=gw.url)

    @property
    def parts(self) -> Gateway:
        gw = self.gw.gateway
        assert isinstance(gw, Gateway)
        return gw

    def token(self, user: str = "alice", **claims: Any) -> str:
        return tokens.issue(self.app.client_secret, self.app.id, user, **claims)

    def stream(self, *users: str, viewer: str = "alice", **options: Any) -> Any:
        options.setdefault("token", self.token(viewer))
        return open_stream(self.gw.url, self.app.id, list(users), **options)

    async def login(self, user: str) -> httpx.Response:
        r = await tencent(self.http, self.app.id, user, "Login")
        assert r.status_code == 200, r.text
        return r

    async def logout(self, user: str) -> None:
        r = await tencent(self.http, self.app.id, user, "Logout")
        assert r.status_code == 200, r.text

    def streams(self) -> list[EventStream]:
        return [s for s in self.parts.hub.sessions if isinstance(s, EventStream)]


def with_app(**changes: Any) -> Settings:
    settings = make_settings()
    app = msgspec.structs.replace(app_of(settings), **changes)
    return Settings(apps={app.id: app})


@contextlib.asynccontextmanager
async def running(settings: Settings | None = None) -> AsyncIterator[Live]:
    settings = settings or make_settings()
    async with serve(settings) as gw:
        live = Live(gw, app_of(settings))
        try:
            yield live
        finally:
            await live.http.aclose()


async def eventually(check: Any, what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- the stream ---------------------------------------------------------------------------


async def test_stream_headers_retry_snapshot_then_presence_in_v_order() -> None:
    """200 text/event-stream, no-store, no proxy buffering; retry, snapshot, then presence."""
    async with running() as live, live.stream("bob", "carol") as stream:
        r = stream.response
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-accel-buffering"] == "no"
        snapshot = await stream.start()
        assert set(snapshot) == {"bob", "carol"}
        assert snapshot["bob"]["status"] == "offline" and snapshot["bob"]["since"] is None
        assert snapshot["bob"]["v"] == 0
        await live.login("bob")
        online = await stream.presence("bob")
        assert online["status"] == "online" and online["devices"][0]["platform"] == "ios"
        assert "type" not in online, "data is the state itself"
        await live.logout("bob")
        offline = await stream.presence("bob")
        assert offline["status"] == "offline" and offline["v"] > online["v"]


async def test_token_in_the_query_works_and_is_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``?token=`` opens a stream; no log line (the access log included) shows the token."""
    caplog.set_level(logging.DEBUG)
    async with running() as live:
        token = live.token()
        async with live.stream("bob", token=token, in_query=True) as stream:
            assert stream.response.status_code == 200
            await stream.start()
        async with live.stream("bob", token=token + "x", in_query=True) as stream:
            assert stream.response.status_code == 401
        await eventually(lambda: not live.streams(), "the stream to be gone")
    lines = [r.getMessage() for r in caplog.records]
    access = [line for line in lines if "/sse" in line]
    assert len(access) >= 2, lines
    assert all("token" not in line and "?" not in line for line in access), access
    assert not [line for line in lines if token[:40] in line or token[-20:] in line]


async def test_ping_comment_every_heartbeat() -> None:
    """A ``: ping`` comment arrives every heartbeat_ms on an otherwise quiet stream."""
    settings = tuned(make_settings(), heartbeat_ms=100)
    async with running(settings) as live, live.stream("bob") as stream:
        await stream.start()
        for _ in range(3):
            assert await stream.next(pings=True) == Event("comment", "ping")


async def test_a_reconnect_gets_a_fresh_snapshot() -> None:
    """A new stream starts from the current state: a change made meanwhile is in its snapshot."""
    async with running() as live:
        async with live.stream("bob") as stream:
            assert (await stream.start())["bob"]["status"] == "offline"
        await live.login("bob")
        async with live.stream("bob") as stream:
            assert (await stream.start())["bob"]["status"] == "online"


async def test_leaving_serve_ends_the_stream_cleanly() -> None:
    """On shutdown the stream ends with its last chunk, not a cut at the shutdown timeout."""
    settings = make_settings()
    app = app_of(settings)
    async with contextlib.AsyncExitStack() as stack:
        async with serve(settings) as gw:
            token = tokens.issue(app.client_secret, app.id, "alice")
            stream = await stack.enter_async_context(open_stream(gw.url, app.id, ["bob"], token))
            await stream.start()
        await stream.ended()
        assert stream.ended_with is None, stream.ended_with


async def test_a_stream_opened_while_a_user_changes_misses_nothing_after_its_snapshot() -> None:
    """Streams opened during a burst of changes see v rising after the snapshot and end on
    the store's state."""
    async with running() as live:
        done = asyncio.Event()

        async def flap() -> None:
            for i in range(40):
                await (live.login if i % 2 == 0 else live.logout)("bob")
            done.set()

        async def watch_until_done() -> None:
            async with live.stream("bob") as stream:
                seen = [(await stream.start())["bob"]]
                await done.wait()
                (final,) = await query(live.http, live.app, "bob")
                while seen[-1]["v"] < final["v"]:
                    seen.append(await stream.presence("bob"))
                vs = [s["v"] for s in seen]
                assert vs == sorted(set(vs)), vs
                assert seen[-1] == final

        flapper = asyncio.create_task(flap())
        await asyncio.gather(*(watch_until_done() for _ in range(5)), flapper)


async def test_token_expiring_mid_stream_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream ends (cleanly) once its token expires; the node forgets it."""
    monkeypatch.setattr(tokens, "LEEWAY_S", 0)
    async with running() as live:
        # exp is whole seconds: ttl 2 leaves at least a second for the stream to start
        async with live.stream("bob", token=live.token(ttl_s=2)) as stream:
            await stream.start()
            assert await stream.next(within=10) is None
            assert stream.ended_with is None
        await eventually(lambda: not live.streams(), "the stream to be gone")


# -- refusals -----------------------------------------------------------------------------


async def refused(stream: Stream, status: int, code: str) -> None:
    """The response is ``status`` with a JSON error ``code`` and no stream."""
    r = stream.response
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in r.text
    assert await stream.next() is None, "no events"


@pytest.mark.parametrize("make_token", BAD_TOKENS)
async def test_bad_token_is_401_before_any_stream(make_token: Any) -> None:
    """A bad, forged, other-algorithm or expired token gets a 401 JSON error, no stream."""
    async with running() as live:
        if make_token(live.app):  # an empty header value cannot be sent
            async with live.stream("bob", token=make_token(live.app)) as stream:
                await refused(stream, 401, "unauthorized")
        async with live.stream("bob", token=make_token(live.app), in_query=True) as stream:
            await refused(stream, 401, "unauthorized")
        assert not live.parts.hub.sessions and not live.parts.hub.connections


async def test_missing_token_or_other_scheme_is_401() -> None:
    """No token at all, a Basic header, or two ?token= get a 401."""
    async with running() as live:
        async with live.stream("bob", token=None) as stream:
            await refused(stream, 401, "unauthorized")
            assert stream.response.headers["www-authenticate"] == "Bearer"
        basic = {"Authorization": "Basic YWxpY2U6c2VjcmV0"}
        async with live.stream("bob", token=None, headers=basic) as stream:
            await refused(stream, 401, "unauthorized")
        twice = [("token", live.token()), ("token", live.token())]
        async with live.stream("bob", token=None, params=twice) as stream:
            await refused(stream, 401, "unauthorized")


async def test_bad_users_and_over_max_watch_are_400() -> None:
    """No user, an over-long id, bad UTF-8, or more users than max_watch: 400, no stream."""
    async with running(with_app(max_watch=2)) as live:
        async with live.stream() as stream:
            await refused(stream, 400, "bad_request")
        async with live.stream("x" * 257) as stream:
            await refused(stream, 400, "bad_request")
        async with live.stream("a", "b", "c") as stream:
            await refused(stream, 400, "limit")
        async with live.stream("a", "b", "a", "b") as stream:  # repeats count once
            await stream.start()
        raw = f"/v1/apps/{live.app.id}/sse?user=%ff"
        r = await live.http.get(raw, headers={"Authorization": f"Bearer {live.token()}"})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = await live.http.get("/v1/apps/nope/sse?user=a")
        assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_watch_policy_token_allows_only_the_watch_claim() -> None:
    """With watch_policy "token" a user outside the token's watch list is a 403."""
    async with running(with_app(watch_policy="token")) as live:
        token = live.token(watch=["bob"])
        async with live.stream("bob", token=token) as stream:
            assert set(await stream.start()) == {"bob"}
        async with live.stream("bob", "carol", token=token) as stream:
            await refused(stream, 403, "forbidden")
        async with live.stream("bob", token=live.token()) as stream:  # no watch claim
            await refused(stream, 403, "forbidden")


async def test_origin_allow_list_and_cors() -> None:
    """An origin off the list is a 403; an allowed one gets its own Access-Control-Allow-Origin
    on the stream and on refusals, and a preflight for the Authorization header."""
    good, evil = "https://app.example", "https://evil.example"
    async with running(with_app(allowed_origins=[good])) as live:
        async with live.stream("bob", headers={"Origin": evil}) as stream:
            await refused(stream, 403, "forbidden")
            assert "access-control-allow-origin" not in stream.response.headers
        async with live.stream("bob", headers={"Origin": good}) as stream:
            assert stream.response.headers["access-control-allow-origin"] == good
            assert stream.response.headers["vary"] == "origin"
            await stream.start()
        async with live.stream("bob", token="bad", headers={"Origin": good}) as stream:
            await refused(stream, 401, "unauthorized")
            assert stream.response.headers["access-control-allow-origin"] == good
        async with live.stream("bob") as stream:  # no Origin: not a browser's cross-origin
            await stream.start()
        preflight = {
            "Origin": good,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        r = await live.http.options(f"/v1/apps/{live.app.id}/sse", headers=preflight)
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == good
        assert "authorization" in r.headers["access-control-allow-headers"]
        assert "GET" in r.headers["access-control-allow-methods"]
        r = await live.http.options(f"/v1/apps/{live.app.id}/sse", headers={"Origin": evil})
        assert r.status_code == 403


# -- bounds -------------------------------------------------------------------------------


async def test_per_user_cap_counts_streams_and_websockets() -> None:
    """max_connections_per_user counts SSE streams: over it a stream gets 429, a WebSocket
    4009; a stream that ends frees its place."""
    async with running(with_app(max_connections_per_user=2)) as live:
        async with live.stream("bob") as first:
            await first.start()
            async with live.stream("bob") as second:
                await second.start()
                async with live.stream("bob") as third:
                    await refused(third, 429, "limit")
                ws = await Client.open(live.gw.ws_url, live.app.id)
                await ws.send({"type": "hello", "token": live.token()})
                assert (await ws.closed_with())[0] == 4009
            await eventually(lambda: len(live.streams()) == 1, "the second stream to end")
            async with live.stream("bob") as again:
                await again.start()
        assert live.parts.hub.refused == 2


async def stalled_stream(live: Live, users: list[str]) -> socket.socket:
    """A raw client with a tiny receive buffer that reads the response head, then nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", live.gw.port))
    query = "&".join(f"user={u}" for u in users)
    request = (
        f"GET /v1/apps/{live.app.id}/sse?{query} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {live.token('stalled')}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


async def test_stalled_reader_delays_nobody_and_is_cut() -> None:
    """A stream whose client stops reading does not delay other streams of its users, keeps
    one state per user, and past the bound its connection is cut."""
    users = [f"u{i}" for i in range(1000)]
    settings = tuned(make_settings(), high_water_bytes=16 * 1024, slow_close_after_s=3600.0)
    async with running(settings) as live, live.stream(*users[:3]) as other:
        await other.start()
        sock = await stalled_stream(live, users)
        try:
            (stalled,) = [s for s in live.streams() if s.claims and s.claims.sub == "stalled"]
            assert stalled.sink is not None
            server_sock = stalled.sink.raw.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            toggler = Toggler(live.http, live.app)
            for _ in range(20):
                await toggler.flip(users)
                for u in users[:3]:
                    await other.presence(u)  # every flip reaches the other stream
                if stalled.outbox.behind_since is not None:
                    break
            assert stalled.outbox.behind_since is not None, "the stalled stream never fell behind"
            for _ in range(3):
                await toggler.flip(users)
                for u in users[:3]:
                    await other.presence(u)
            assert not stalled.closed and len(stalled.outbox.pending) == len(users)
            stalled.outbox.slow_close_after = 0.0  # its own bound (slow_close_after_s), lowered
            await eventually(lambda: stalled.closed, "the stalled stream to be cut")
            assert live.parts.hub.slow_closes == 1
            await toggler.flip(users)
            assert (await other.presence(users[0]))["v"] > 0, "the other stream still live"
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):  # what it had buffered, then the cut
                with contextlib.suppress(ConnectionResetError):
                    while await loop.sock_recv(sock, 65536):
                        pass
        finally:
            sock.close()


async def test_a_quiet_stream_is_not_dropped_as_idle() -> None:
    """The hub's idle sweep (for WebSockets that stop pinging) leaves streams alone: their
    clients never send anything."""
    settings = tuned(make_settings(), idle_limit_s=0.2, heartbeat_ms=150)
    async with running(settings) as live, live.stream("bob") as stream:
        await stream.start()
        for _ in range(6):  # about four idle limits
            assert await stream.next(pings=True) == Event("comment", "ping")
        await live.login("bob")
        assert (await stream.presence("bob"))["status"] == "online"


async def test_ended_streams_are_freed_behind_a_freeze() -> None:
    """Streams frozen by the running HeapKeeper, then ended (by the client, by the server,
    cut), are freed by reference counting: nothing left that only the collector could free."""
    gc.collect()  # earlier tests' garbage must not be frozen and blamed on this one
    async with running() as live, contextlib.AsyncExitStack() as stack:
        keeper = live.parts.heap
        opened = [await stack.enter_async_context(live.stream(f"u{i}")) for i in range(4)]
        for stream in opened:
            await stream.start()
        sessions = live.streams()
        refs = _http_protocols()  # each holds its stream (sink) while it is open
        assert len(refs) >= 4
        frozen = gc.get_freeze_count()
        async with asyncio.timeout(10):
            while gc.get_freeze_count() <= frozen:  # noqa: ASYNC110 (polling, a deadline)
                await asyncio.sleep(keeper.interval / 4)
        sessions[0].close(4001, "token expired")  # the server ends it
        sessions[1].close(4008, "client too slow")  # the server cuts it
        del sessions
        await stack.aclose()  # the clients leave
        leftovers: list[str] = []
        try:
            async with asyncio.timeout(5):
                while any(ref() is not None for ref in refs):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            await keeper.stop()
            leftovers = _cyclic_leftovers() or ["(alive, not garbage)"]
        finally:
            gc.unfreeze()
        assert not live.streams() and not live.parts.hub.connections
    assert leftovers == [], f"kept alive by cycles only the collector could free: {leftovers}"
