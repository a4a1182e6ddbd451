"""End to end through uvicorn: signed webhooks in, the query API shows the state."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import AppConfig, RedisConfig, Settings, dev_settings
from gateway.providers.rongcloud import RongCloudConfig, signed_query
from gateway.providers.tencent import TencentConfig
from tests.live import LiveGateway, serve
from tests.sendhook import post, tencent_call

TOKEN = "cb-token"
TENCENT = TencentConfig(sdkappid=1400000000, callback_token=TOKEN)
RONGCLOUD = RongCloudConfig(app_key="rk", app_secret="rs")


def make_settings(redis_url: str | None = None, *, cluster: bool = False) -> Settings:
    """Dev-mode-like settings with a unique app id, so tests can share one Redis."""
    base = dev_settings().apps["demo"]
    app = msgspec.structs.replace(
        base,
        id=f"t{uuid.uuid4().hex[:12]}",
        tencent=TENCENT,
        rongcloud=RONGCLOUD,
    )
    redis = RedisConfig(url=redis_url, cluster=cluster) if redis_url else None
    return Settings(apps={app.id: app}, redis=redis)


def app_of(settings: Settings) -> AppConfig:
    return next(iter(settings.apps.values()))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def tencent(
    client: httpx.AsyncClient,
    app: str,
    user: str,
    action: str,
    platform: str = "iOS",
    event_time: int | None = None,
) -> httpx.Response:
    """POST one signed Tencent State.StateChange."""
    req = tencent_call(TENCENT, user, action, platform, event_time or now_ms())
    return await post(client, app, "tencent", req)


async def rongcloud(
    client: httpx.AsyncClient, app: str, events: list[dict[str, Any]]
) -> httpx.Response:
    """POST one signed RongCloud batch."""
    params = signed_query(RONGCLOUD, now_ms())  # a fresh nonce: a reused one is a replay
    return await client.post(f"/v1/apps/{app}/webhooks/rongcloud", params=params, json=events)


async def query(client: httpx.AsyncClient, app: AppConfig, *users: str) -> list[dict[str, Any]]:
    r = await client.get(
        f"/v1/apps/{app.id}/presence",
        params=[("user", u) for u in users],
        headers={"Authorization": f"Bearer {app.api_key}"},
    )
    assert r.status_code == 200, r.text
    states: list[dict[str, Any]] = r.json()["presence"]
    return states


@pytest.fixture(params=["memory", "redis", "cluster"])
async def live(request: pytest.FixtureRequest) -> AsyncIterator[tuple[LiveGateway, Settings]]:
    """A gateway on each backend."""
    if request.param == "memory":
        settings = make_settings()
    elif request.param == "redis":
        settings = make_settings(request.getfixturevalue("redis_url"))
    else:
        settings = make_settings(request.getfixturevalue("redis_cluster_url"), cluster=True)
    async with serve(settings) as gw:
        yield gw, settings


async def test_tencent_webhook_shows_in_query_api(live: tuple[LiveGateway, Settings]) -> None:
    """A signed Tencent Login is acked with the exact OK body and the query API shows online."""
    gw, settings = live
    app = app_of(settings)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await tencent(client, app.id, "bob", "Login", "IOS")
        assert r.status_code == 200
        assert r.content == b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'
        (bob, carol) = await query(client, app, "bob", "carol")
        assert bob["status"] == "online" and bob["devices"][0]["platform"] == "ios"
        assert bob["v"] > 0
        assert carol == {
            "user": "carol",
            "status": "offline",
            "since": None,
            "devices": [],
            "v": 0,
            "custom": None,
        }
        r = await tencent(client, app.id, "bob", "Disconnect", "IOS")
        assert r.status_code == 200
        (bob,) = await query(client, app, "bob")
        assert bob["status"] == "offline" and bob["since"] is not None


async def test_rongcloud_batch_applies_every_event(live: tuple[LiveGateway, Settings]) -> None:
    """A 100-event RongCloud batch for 50 users leaves each user in its last state."""
    gw, settings = live
    app = app_of(settings)
    t = now_ms()
    events = []
    for i in range(50):
        user = f"u{i}"
        events.append(
            {
                "userid": user,
                "status": "0",
                "os": "Android",
                "time": t,
                "clientIp": "1.2.3.4:5",
                "sessionId": f"s{i}",
            }
        )
        events.append(
            {
                "userid": user,
                "status": "1" if i % 2 else "0",
                "os": "Android",
                "time": t + 1,
                "clientIp": "1.2.3.4:5",
                "sessionId": f"s{i}",
            }
        )
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await rongcloud(client, app.id, events)
        assert r.status_code == 200
        states = await query(client, app, *(f"u{i}" for i in range(50)))
    assert [s["status"] for s in states] == ["offline" if i % 2 else "online" for i in range(50)]
    assert all("1.2.3.4" not in str(s) and "s1" not in str(s["devices"]) for s in states)


async def test_bad_signature_is_401_and_changes_nothing(
    live: tuple[LiveGateway, Settings],
) -> None:
    """A Tencent webhook with a wrong Sign gets 401 in Tencent's shape and applies nothing."""
    gw, settings = live
    app = app_of(settings)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        rt = str(int(time.time()))
        r = await client.post(
            f"/v1/apps/{app.id}/webhooks/tencent",
            params={
                "SdkAppid": "1400000000",
                "CallbackCommand": "State.StateChange",
                "OptPlatform": "iOS",
                "RequestTime": rt,
                "Sign": "0" * 64,
            },
            json={"EventTime": now_ms(), "Info": {"Action": "Login", "To_Account": "eve"}},
        )
        assert r.status_code == 401
        assert r.json()["ActionStatus"] == "FAIL"
        (eve,) = await query(client, app, "eve")
        assert eve["v"] == 0


async def test_routing_errors(live: tuple[LiveGateway, Settings]) -> None:
    """Unknown app or provider is 404; an oversize body is 413; the query API wants its key."""
    gw, settings = live
    app = app_of(settings)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.post("/v1/apps/nope/webhooks/tencent", json={})).status_code == 404
        assert (await client.post(f"/v1/apps/{app.id}/webhooks/zego")).status_code == 404
        big = b"[" + b"0," * (600 * 1024) + b"0]"
        r = await client.post(f"/v1/apps/{app.id}/webhooks/rongcloud", content=big)
        assert r.status_code == 413
        r = await client.get(f"/v1/apps/{app.id}/presence", params={"user": "bob"})
        assert r.status_code == 401
        r = await client.get(
            f"/v1/apps/{app.id}/presence",
            params={"user": "bob"},
            headers={"Authorization": "Bearer wrong"},
        )
        assert r.status_code == 401
        r = await client.get(
            f"/v1/apps/{app.id}/presence",
            params=[("user", str(i)) for i in range(1001)],
            headers={"Authorization": f"Bearer {app.api_key}"},
        )
        assert r.status_code == 400


async def test_health_and_metrics(live: tuple[LiveGateway, Settings]) -> None:
    """/healthz and /readyz answer 200 with a reachable store; /metrics counts webhooks."""
    gw, settings = live
    app = app_of(settings)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        await tencent(client, app.id, "bob", "Login")
        text = (await client.get("/metrics")).text
    assert 'presence_webhooks_total{outcome="ok",provider="tencent"} 1.0' in text
    assert "presence_webhook_seconds_bucket" in text


async def test_redis_down_gives_503_then_recovers(redis_proc: Any) -> None:
    """While Redis is down webhooks get 503 (never an OK ack) and /readyz 503; after, 200."""
    settings = make_settings(redis_proc.url)
    app = app_of(settings)
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        assert (await tencent(client, app.id, "bob", "Login")).status_code == 200
        redis_proc.stop()
        r = await tencent(client, app.id, "carol", "Login")
        assert r.status_code == 503
        assert b'"OK"' not in r.content and r.json()["ActionStatus"] == "FAIL"
        r = await rongcloud(
            client,
            app.id,
            [{"userid": "dan", "status": "0", "os": "iOS", "time": now_ms(), "sessionId": "x"}],
        )
        assert r.status_code == 503
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        redis_proc.start()
        deadline = time.monotonic() + 10
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "gateway never saw Redis come back"
            await asyncio.sleep(0.05)
        assert (await tencent(client, app.id, "carol", "Login")).status_code == 200
        (carol,) = await query(client, app, "carol")
        assert carol["status"] == "online"


async def test_body_limit_comes_from_server_settings() -> None:
    """[server] max_body_bytes sets the webhook body limit: a body over it gets 413."""
    settings = make_settings()
    settings = msgspec.structs.replace(
        settings, server=msgspec.structs.replace(settings.server, max_body_bytes=4096)
    )
    app = app_of(settings)
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        events: list[dict[str, Any]] = [
            {"userid": f"u{i}", "status": "0", "os": "iOS", "time": now_ms(), "sessionId": f"s{i}"}
            for i in range(100)
        ]
        r = await rongcloud(client, app.id, events)
        assert r.status_code == 413
        r = await rongcloud(client, app.id, events[:2])
        assert r.status_code == 200
