"""The WebSocket protocol of SPEC section 5, through a real uvicorn server and real clients.

Every test runs against a live gateway on the memory backend. After each test the fixture
checks that the gateway logged no error (no unhandled exception, so no traceback anywhere)
and that a fresh client still logs in and gets a pong: nothing a client did broke the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway import tokens
from gateway.config import AppConfig, Settings, dev_settings
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import app_of, make_settings, query, tencent
from tests.wsclient import Client, forge

ROOT = Path(__file__).resolve().parent.parent


class Live:
    """A running gateway with one app, and the clients a test opened (closed at teardown)."""

    def __init__(self, gw: LiveGateway, app: AppConfig) -> None:
        self.gw = gw
        self.app = app
        self.clients: list[Client] = []
        self.http = httpx.AsyncClient(base_url=gw.url)

    async def open(self, app: str | None = None, **options: Any) -> Client:
        client = await Client.open(self.gw.ws_url, app or self.app.id, **options)
        self.clients.append(client)
        return client

    async def login(self, user: str = "alice", **claims: Any) -> Client:
        client = await Client.login(
            self.gw.ws_url, self.app.id, self.app.client_secret, user, **claims
        )
        self.clients.append(client)
        return client

    def token(self, user: str = "alice", **claims: Any) -> str:
        return tokens.issue(self.app.client_secret, self.app.id, user, **claims)

    async def rejected(self, token: str) -> tuple[int | None, str]:
        """Hello with ``token``; the close code and reason (no welcome may come first)."""
        client = await self.open()
        await client.send({"type": "hello", "token": token})
        return await client.closed_with()

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()
        await self.http.aclose()


def with_app(**changes: Any) -> Settings:
    """``make_settings()`` with some fields of its one app changed."""
    settings = make_settings()
    app = msgspec.structs.replace(app_of(settings), **changes)
    return Settings(apps={app.id: app})


def tuned(settings: Settings, **connections: Any) -> Settings:
    """``settings`` with some ``[connections]`` tunables changed."""
    changed = msgspec.structs.replace(settings.connections, **connections)
    return msgspec.structs.replace(settings, connections=changed)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Live]:
    async with serve(settings) as gw:
        live = Live(gw, app_of(settings))
        try:
            yield live
        finally:
            await live.aclose()


async def assert_still_serving(gw: LiveGateway, app: AppConfig) -> None:
    """A fresh client logs in and gets a pong."""
    client = await Client.login(gw.ws_url, app.id, app.client_secret, "fresh")
    try:
        assert await client.request("ping") == {"type": "pong", "id": 1}
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def checked(settings: Settings, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Live]:
    """A gateway for ``settings``; after the test it must still serve, error-free."""
    caplog.set_level(logging.INFO)
    async with running(settings) as live:
        yield live
        await assert_still_serving(live.gw, live.app)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def live(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Live]:
    """A gateway with default app settings; after the test it must still serve, error-free."""
    async with checked(make_settings(), caplog) as live:
        yield live


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text


# -- messages --------------------------------------------------------------------------


async def test_welcome_has_the_spec_fields(live: Live) -> None:
    """hello with a valid token gets welcome with user, max_watch and heartbeat_ms, type first."""
    client = await live.open()
    await client.send({"type": "hello", "token": live.token("alice")})
    text = await client.recv_text()
    assert text.startswith('{"type":"welcome"')
    assert json.loads(text) == {
        "type": "welcome",
        "user": "alice",
        "max_watch": live.app.max_watch,
        "heartbeat_ms": 25000,
    }


async def test_watch_snapshot_includes_unknown_users(live: Live) -> None:
    """watch → snapshot with the request id, the known user's state and unknown users at v 0."""
    assert (await tencent(live.http, live.app.id, "bob", "Login", "iOS")).status_code == 200
    client = await live.login()
    await client.send({"type": "watch", "id": "w-1", "users": ["bob", "carol", "bob"]})
    text = await client.recv_text()
    assert text.startswith('{"type":"snapshot"')
    snapshot = json.loads(text)
    assert snapshot["id"] == "w-1"
    bob, carol = snapshot["presence"]
    assert bob["user"] == "bob" and bob["status"] == "online" and bob["v"] > 0
    assert bob["devices"] == [{"platform": "ios", "since": bob["since"]}]
    assert carol == {
        "user": "carol",
        "status": "offline",
        "since": None,
        "devices": [],
        "v": 0,
        "custom": None,
    }
    assert [bob] == await query(live.http, live.app, "bob")


async def test_presence_deltas_arrive_with_increasing_v(live: Live) -> None:
    """Every change of a watched user arrives as a presence message, v strictly increasing."""
    client = await live.login()
    snapshot = await client.watch("bob")
    last_v = snapshot["bob"]["v"]
    steps = [
        ("Login", "iOS", "online", ["ios"]),
        ("Login", "Web", "online", ["ios", "web"]),
        ("Disconnect", "iOS", "online", ["web"]),
        ("Logout", "Web", "offline", []),
    ]
    for action, platform, status, platforms in steps:
        assert (await tencent(live.http, live.app.id, "bob", action, platform)).status_code == 200
        text = await client.recv_text()
        assert text.startswith('{"type":"presence"')
        state = json.loads(text)
        assert state["user"] == "bob" and state["status"] == status
        assert [d["platform"] for d in state["devices"]] == platforms
        assert state["v"] > last_v
        assert "10.1.2.3" not in text  # the client IP of the webhook never reaches watchers
        last_v = state["v"]
    (stored,) = await query(live.http, live.app, "bob")
    assert stored == {k: v for k, v in state.items() if k != "type"}


async def test_unwatch_acks_and_stops_deliveries(live: Live) -> None:
    """unwatch → ok with the id; a later change of that user is never delivered."""
    client = await live.login()
    await client.watch("bob", "carol")
    assert await client.request("unwatch", users=["bob", "nobody"]) == {"type": "ok", "id": 2}
    await tencent(live.http, live.app.id, "bob", "Login")
    await tencent(live.http, live.app.id, "carol", "Login")
    # bob's change was published first: had it been delivered it would come before carol's
    message = await client.recv()
    assert message["type"] == "presence" and message["user"] == "carol", message


async def test_ping_gets_pong_with_the_same_id(live: Live) -> None:
    """ping → pong echoing the id, numeric or string."""
    client = await live.login()
    await client.send({"type": "ping", "id": 3})
    assert await client.recv() == {"type": "pong", "id": 3}
    await client.send({"type": "ping", "id": "abc"})
    assert await client.recv() == {"type": "pong", "id": "abc"}


# -- errors: the connection stays open ---------------------------------------------------


BAD_REQUESTS = [
    pytest.param('{"type":"watch","id":7,"users":["bob"]', None, id="malformed-json"),
    pytest.param('{"type":"watch","id":7,"users":"bob"}', 7, id="users-not-a-list"),
    pytest.param('{"type":"watch","id":7,"users":[1,2]}', 7, id="user-not-a-string"),
    pytest.param('{"type":"watch","id":7,"users":[]}', 7, id="no-users"),
    pytest.param('{"type":"watch","id":7,"users":["' + "x" * 300 + '"]}', 7, id="user-too-long"),
    pytest.param('{"type":"ping","id":7,"extra":true}', 7, id="unknown-field"),
    pytest.param('{"type":"unwatch","id":7}', 7, id="missing-field"),
    pytest.param('{"type":"ping","id":[7]}', None, id="id-not-scalar"),
    pytest.param('{"type":7,"id":7}', None, id="type-not-a-string"),
    pytest.param('{"id":7}', 7, id="no-type"),
    pytest.param("[1,2,3]", None, id="not-an-object"),
    pytest.param('{"type":"hello","id":7,"token":"x"}', 7, id="hello-with-id"),
    pytest.param('{"type":"hello","token":"x"}', None, id="hello-again"),
]


@pytest.mark.parametrize(("frame", "request_id"), BAD_REQUESTS)
async def test_bad_request_keeps_the_connection(
    live: Live, frame: str, request_id: int | None
) -> None:
    """A malformed or ill-typed frame gets error bad_request (with its id when readable)."""
    client = await live.login()
    await client.send_raw(frame)
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == "bad_request", error
    assert error["id"] == request_id
    assert isinstance(error["message"], str) and 0 < len(error["message"]) <= 300
    no_traceback(error["message"])
    assert await client.request("ping") == {"type": "pong", "id": 1}


async def test_binary_frame_is_bad_request(live: Live) -> None:
    """A binary frame gets error bad_request; the connection stays open."""
    client = await live.login()
    await client.send_raw(b'{"type":"ping","id":1}')
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == "bad_request", error
    assert await client.request("ping") == {"type": "pong", "id": 1}


async def test_unknown_type(live: Live) -> None:
    """A message of an unknown type gets error unknown_type with its id."""
    client = await live.login()
    await client.send({"type": "subscribe", "id": 9, "users": ["bob"]})
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == "unknown_type" and error["id"] == 9
    assert await client.request("ping") == {"type": "pong", "id": 1}


async def test_token_watch_policy() -> None:
    """Under watch_policy "token" only ids in the token's watch claim may be watched."""
    async with running(with_app(watch_policy="token")) as live:
        client = await live.login("alice", watch=["bob", "carol"])
        refused = await client.request("watch", users=["bob", "mallory"])
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert refused["id"] == 1
        # nothing of a refused request is watched…
        hub = live.gw.app.state.gateway.hub
        assert (live.app.id, "bob") not in hub.index
        await tencent(live.http, live.app.id, "bob", "Login")
        # …while watching inside the claim works and delivers
        await client.send({"type": "watch", "id": 2, "users": ["bob", "carol"]})
        reply = await client.recv()  # bob's change never came before it
        assert reply["type"] == "snapshot" and reply["id"] == 2, reply
        snapshot = {st["user"]: st for st in reply["presence"]}
        assert snapshot["bob"]["status"] == "online" and snapshot["carol"]["v"] == 0
        await tencent(live.http, live.app.id, "carol", "Login")
        assert (await client.next_presence("carol"))["status"] == "online"
        # a token without a watch claim may watch nobody
        nobody = await live.login("dave")
        refused = await nobody.request("watch", users=["dave"])
        assert refused["type"] == "error" and refused["code"] == "forbidden"


async def test_open_policy_ignores_the_watch_claim(live: Live) -> None:
    """Under watch_policy "open" any user of the app may be watched, whatever the claim says."""
    client = await live.login("alice", watch=["bob"])
    snapshot = await client.watch("mallory")
    assert snapshot["mallory"]["v"] == 0


async def test_max_watch_limit() -> None:
    """Watching past max_watch gets error limit; re-watching and unwatching count right."""
    async with running(with_app(max_watch=3)) as live:
        client = await live.login()
        await client.watch("a", "b")
        over = await client.request("watch", users=["c", "d"])
        assert over["type"] == "error" and over["code"] == "limit" and over["id"] == 2
        assert (await client.watch("a", "b", "c")).keys() == {"a", "b", "c"}
        assert (await client.request("watch", users=["d"]))["code"] == "limit"
        await client.request("unwatch", users=["a"])
        assert (await client.watch("d")).keys() == {"d"}
        # the refused request watched nothing: only the four accepted users are indexed
        hub = live.gw.app.state.gateway.hub
        assert {user for _, user in hub.index} == {"b", "c", "d"}


# -- close codes -----------------------------------------------------------------------


def claims(**changes: Any) -> dict[str, Any]:
    base = {"sub": "alice", "exp": int(time.time()) + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def hs(secret: str, alg: str) -> str:
    """A valid token signed with the right secret but another HMAC algorithm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims(), secret, algorithm=alg)


BAD_TOKENS: list[Any] = [
    pytest.param(lambda app: "not-a-jwt", id="garbage"),
    pytest.param(lambda app: "", id="empty"),
    pytest.param(
        lambda app: tokens.issue("another-secret-of-at-least-32-bytes!", app.id, "alice"),
        id="wrong-secret",
    ),
    pytest.param(lambda app: forge({"alg": "none", "typ": "JWT"}, claims()), id="alg-none"),
    pytest.param(lambda app: forge({"alg": "None"}, claims()), id="alg-None"),
    pytest.param(
        lambda app: forge({"alg": "none"}, claims(), app.client_secret), id="alg-none-signed"
    ),
    pytest.param(lambda app: hs(app.client_secret, "HS512"), id="HS512"),
    pytest.param(lambda app: hs(app.client_secret, "HS384"), id="HS384"),
    pytest.param(
        # algorithm confusion: an RS256 header over an HMAC made with the shared secret
        lambda app: forge({"alg": "RS256", "typ": "JWT"}, claims(), app.client_secret),
        id="RS256-confusion",
    ),
    pytest.param(
        lambda app: jwt.encode(
            claims(exp=int(time.time()) - 5 - tokens.LEEWAY_S), app.client_secret
        ),
        id="expired",
    ),
    pytest.param(lambda app: jwt.encode(claims(exp=None), app.client_secret), id="no-exp"),
    pytest.param(lambda app: jwt.encode(claims(sub=None), app.client_secret), id="no-sub"),
    pytest.param(lambda app: jwt.encode(claims(sub=42), app.client_secret), id="sub-not-str"),
    pytest.param(lambda app: jwt.encode(claims(sub=""), app.client_secret), id="sub-empty"),
    pytest.param(
        lambda app: jwt.encode(claims(exp="tomorrow"), app.client_secret), id="exp-not-a-number"
    ),
    pytest.param(
        lambda app: jwt.encode(claims(watch="bob"), app.client_secret), id="watch-not-a-list"
    ),
]


@pytest.mark.parametrize("make_token", BAD_TOKENS)
async def test_bad_token_closes_4001(live: Live, make_token: Any) -> None:
    """A bad, forged, other-algorithm or expired token closes with 4001 and no welcome."""
    code, reason = await live.rejected(make_token(live.app))
    assert code == 4001
    no_traceback(reason)


async def test_first_message_must_be_hello(caplog: pytest.LogCaptureFixture) -> None:
    """A first frame other than hello (a watch, a ping, junk, binary) closes with 4001 at once."""
    settings = tuned(make_settings(), hello_timeout_s=60.0)  # not what closes it
    async with checked(settings, caplog) as live:
        firsts: list[str | bytes] = ['{"type":"watch","id":1,"users":["bob"]}', '{"type":"ping"}']
        for first in [*firsts, "{", b"\x00"]:
            client = await live.open()
            await client.send_raw(first)
            with pytest.raises(ConnectionClosed) as info:
                await client.recv()  # the close, and nothing before it
            assert info.value.rcvd is not None and info.value.rcvd.code == 4001, first


async def test_no_hello_in_time_closes_4001(caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends nothing is closed with 4001 once the hello timeout passes."""
    async with checked(tuned(make_settings(), hello_timeout_s=0.3), caplog) as live:
        client = await live.open()
        started = time.monotonic()
        code, _ = await client.closed_with(wait=5)
        assert code == 4001
        assert 0.25 < time.monotonic() - started < 4


async def test_token_expiring_mid_connection_closes_4001(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection whose token expires is closed with 4001 at the expiry time."""
    monkeypatch.setattr(tokens, "LEEWAY_S", 0)  # the leeway has its own test (test_tokens.py)
    exp = int(time.time()) + 2
    client = await live.open()
    welcome = await client.hello(jwt.encode(claims(exp=exp), live.app.client_secret))
    assert welcome["type"] == "welcome"
    await client.watch("bob")
    code, reason = await client.closed_with(wait=6)
    assert code == 4001 and "expired" in reason
    assert time.time() >= exp - 0.05


async def test_tokens_never_cross_apps(caplog: pytest.LogCaptureFixture) -> None:
    """A token of app A is refused by app B, whatever app it names; A's users stay A's."""
    caplog.set_level(logging.INFO)
    base = dev_settings().apps["demo"]
    a = msgspec.structs.replace(base, id="app-a", client_secret="a" * 40)
    b = msgspec.structs.replace(base, id="app-b", client_secret="b" * 40)
    # an app sharing A's secret: a token naming app A must still not open it
    a2 = msgspec.structs.replace(base, id="app-a2", client_secret="a" * 40)
    settings = Settings(apps={"app-a": a, "app-b": b, "app-a2": a2})
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as http:

        async def first_reply(app: str, token: str) -> tuple[int | None, str]:
            """(0, "welcome") when welcomed, else the close code and reason."""
            client = await Client.open(gw.ws_url, app)
            try:
                await client.send({"type": "hello", "token": token})
                with contextlib.suppress(ConnectionClosed):
                    if (await client.recv())["type"] == "welcome":
                        return 0, "welcome"
                return await client.closed_with()
            finally:
                await client.close()

        exp = int(time.time()) + 600
        a_token = tokens.issue(a.client_secret, "app-a", "alice")
        naming_b = jwt.encode({"sub": "alice", "exp": exp, "app": "app-b"}, a.client_secret)
        no_app = jwt.encode({"sub": "alice", "exp": exp}, a.client_secret)
        assert await first_reply("app-a", a_token) == (0, "welcome")
        for token in (a_token, naming_b, no_app):
            assert (await first_reply("app-b", token))[0] == 4001
        assert (await first_reply("app-a2", a_token))[0] == 4001
        # bob is online in A; a B client watching "bob" sees B's bob and none of A's changes
        assert (await tencent(http, "app-a", "bob", "Login")).status_code == 200
        watcher = await Client.login(gw.ws_url, "app-b", b.client_secret, "carol")
        try:
            assert (await watcher.watch("bob", "marker"))["bob"]["v"] == 0
            assert (await tencent(http, "app-a", "bob", "Login", "Web")).status_code == 200
            assert (await tencent(http, "app-b", "marker", "Login")).status_code == 200
            message = await watcher.recv()  # A's bob changed first: it would come before
            assert message["type"] == "presence" and message["user"] == "marker", message
            hub = gw.app.state.gateway.hub
            assert ("app-b", "bob") in hub.index and ("app-a", "bob") not in hub.index
        finally:
            await watcher.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_unknown_app_is_refused_at_the_handshake(live: Live) -> None:
    """A WebSocket to an app that does not exist is refused before it opens (HTTP 403)."""
    with pytest.raises(InvalidStatus) as info:
        await live.open("no-such-app")
    assert info.value.response.status_code == 403


async def test_origin_allow_list(caplog: pytest.LogCaptureFixture) -> None:
    """An Origin not in allowed_origins closes with 4003; a listed one or none is served."""
    caplog.set_level(logging.INFO)
    async with running(with_app(allowed_origins=["https://app.example"])) as live:
        evil = await live.open(origin="https://evil.example")
        assert (await evil.closed_with())[0] == 4003
        prefix = await live.open(origin="https://app.example.evil.example")
        assert (await prefix.closed_with())[0] == 4003
        for origin in ("https://app.example", None):
            client = await live.open(origin=origin)
            assert (await client.hello(live.token()))["type"] == "welcome"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_message_over_64_kib_closes_4009(live: Live) -> None:
    """A 64 KiB message is served; one byte more closes with 4009."""
    client = await live.login()
    head, tail = '{"type":"ping","id":"', '"}'
    exact = head + "x" * (64 * 1024 - len(head) - len(tail)) + tail
    assert len(exact.encode()) == 64 * 1024
    await client.send_raw(exact)
    assert (await client.recv())["type"] == "pong"
    await client.send_raw(exact[:-2] + 'x"}')
    code, _ = await client.closed_with()
    assert code == 4009


async def test_too_many_messages_closes_4009(caplog: pytest.LogCaptureFixture) -> None:
    """A burst over the message rate limit closes with 4009 after the allowed burst."""
    settings = tuned(make_settings(), message_burst=10, messages_per_s=1.0)
    async with checked(settings, caplog) as live:
        client = await live.login()
        with contextlib.suppress(ConnectionClosed):
            for i in range(100):
                await client.send({"type": "ping", "id": i})
        pongs = 0
        with contextlib.suppress(Exception):
            while (await client.recv())["type"] == "pong":
                pongs += 1
        code, reason = await client.closed_with()
        assert code == 4009 and "too many" in reason
        assert 10 <= pongs < 20


async def test_binary_frames_count_against_the_rate_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of binary frames is rate limited like text ones (4009), not answered forever."""
    settings = tuned(make_settings(), message_burst=10, messages_per_s=1.0)
    async with checked(settings, caplog) as live:
        client = await live.login()
        with contextlib.suppress(ConnectionClosed):
            for _ in range(100):
                await client.send_raw(b"x")
        assert (await client.closed_with())[0] == 4009


async def test_leaving_serve_closes_clients_with_1012() -> None:
    """When the server shuts down, a connected client is closed with 1012."""
    settings = make_settings()
    app = app_of(settings)
    async with serve(settings) as gw:
        client = await Client.login(gw.ws_url, app.id, app.client_secret)
        await client.watch("bob")
    try:
        assert (await client.closed_with(wait=5))[0] == 1012
    finally:
        await client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_sigterm_closes_clients_with_1012_and_exits() -> None:
    """`python -m gateway serve` on SIGTERM closes a live client with 1012 and shuts down."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_CONFIG", "REDIS_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "serve", "--port", str(port)),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 15
            while True:
                assert proc.returncode is None, "the gateway exited at startup"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "the gateway never became healthy"
                await asyncio.sleep(0.05)
        secret = dev_settings().apps["demo"].client_secret
        client = await Client.login(f"ws://127.0.0.1:{port}", "demo", secret)
        try:
            await client.watch("bob")
            proc.send_signal(signal.SIGTERM)
            assert (await client.closed_with(wait=10))[0] == 1012
        finally:
            await client.close()
        async with asyncio.timeout(15):
            assert proc.stdout is not None
            output = (await proc.stdout.read()).decode()
            rc = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # uvicorn re-raises the captured SIGTERM once it has shut down gracefully
    assert rc in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


# -- metrics ---------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_count_connections_watched_users_and_messages(live: Live) -> None:
    """/metrics shows open connections, distinct watched users and presence messages sent."""
    one = await live.login("one")
    two = await live.login("two")
    await one.watch("bob", "carol")
    await two.watch("bob", "dave")
    await tencent(live.http, live.app.id, "bob", "Login")
    await one.next_presence("bob")
    await two.next_presence("bob")
    text = (await live.http.get("/metrics")).text
    assert metric(text, "presence_connections") == 2
    assert metric(text, "presence_watched_users") == 3
    assert metric(text, "presence_messages_sent_total") == 2
    assert metric(text, "presence_slow_consumer_closes_total") == 0
    await two.close()
    deadline = time.monotonic() + 5
    while True:
        text = (await live.http.get("/metrics")).text
        if metric(text, "presence_connections") == 1:
            break
        assert time.monotonic() < deadline, "the closed connection is still counted"
        await asyncio.sleep(0.02)
    assert metric(text, "presence_watched_users") == 2


async def test_audience_must_name_the_app() -> None:
    """A token whose aud names this app is accepted; one naming another audience gets 4001."""
    settings = make_settings()
    app = next(iter(settings.apps.values()))
    async with serve(settings) as gw:
        good = await Client.open(gw.ws_url, app.id)
        await good.send({"type": "hello", "token": _with_aud(app.client_secret, app.id, [app.id])})
        assert (await good.recv())["type"] == "welcome"
        await good.close()
        bad = await Client.open(gw.ws_url, app.id)
        await bad.send({"type": "hello", "token": _with_aud(app.client_secret, app.id, "other")})
        assert (await bad.closed_with())[0] == 4001


def _with_aud(secret: str, app: str, aud: str | list[str]) -> str:
    return jwt.encode(
        {"sub": "al", "app": app, "aud": aud, "exp": int(time.time()) + 60}, secret, "HS256"
    )


async def test_silent_client_is_dropped() -> None:
    """A client that sends nothing for IDLE_LIMIT is closed with 1001; a pinging one stays."""
    settings = tuned(make_settings(), idle_limit_s=0.5)
    app = app_of(settings)
    async with serve(settings) as gw:
        silent = await Client.login(gw.ws_url, app.id, app.client_secret, "quiet")
        chatty = await Client.login(gw.ws_url, app.id, app.client_secret, "chatty")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert (await chatty.request("ping"))["type"] == "pong"
            await asyncio.sleep(0.1)
        assert (await silent.closed_with(5))[0] == 1001
        assert (await chatty.request("ping"))["type"] == "pong"
        await chatty.close()
