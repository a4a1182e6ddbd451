"""Server-Sent Events (SPEC section 10) through a real gateway and a real streaming client.

The gateway runs under uvicorn in the test's loop (``tests.live``); the client is httpx
reading the response as it streams, or a raw socket where a client must stop reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

import gateway.session
from gateway import tokens
from gateway.app import Gateway
from gateway.config import AppConfig, Settings
from gateway.model import PresenceEvent
from gateway.sse import EventStream
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import app_of, make_settings, now_ms, tencent
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
    query = [("user", u) for u in users] + (params or [])
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


async def test_ping_comment_every_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``: ping`` comment arrives every heartbeat_ms on an otherwise quiet stream."""
    monkeypatch.setattr(gateway.session, "HEARTBEAT_MS", 100)
    async with running() as live, live.stream("bob") as stream:
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
