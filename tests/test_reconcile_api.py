"""``POST`` / ``GET /v1/apps/{app}/reconcile`` (SPEC 6, 8) on a real gateway, its checks sent
to the loopback pull-API fakes; credentials stay out of logs and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.config import AppConfig, Settings
from gateway.model import PresenceEvent
from gateway.providers.tencent import TencentConfig
from gateway.reconcile.config import TencentReconcile
from tests.live import LiveGateway, serve
from tests.pullapi import FakeServer, FakeTencent
from tests.pullapi import serve as serve_fakes

APP = "rcapi"
KEY = "reconcile-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeTencent, FakeServer]]:
    f = FakeTencent()
    async with serve_fakes(f) as server:
        yield f, server


def settings(server: FakeServer, f: FakeTencent, *, reconcile: bool = True) -> Settings:
    rc = TencentReconcile(api_base=server.url, admin=f.admin, secret_key=f.secret_key, rate=500)
    app = AppConfig(
        id=APP,
        client_secret="reconcile-api-client-secret-0123456789",
        api_key=KEY,
        tencent=TencentConfig(sdkappid=f.sdkappid, reconcile=rc if reconcile else None),
    )
    return Settings(apps={APP: app})


@pytest.fixture
async def live(fake: tuple[FakeTencent, FakeServer]) -> AsyncIterator[LiveGateway]:
    f, server = fake
    async with serve(settings(server, f)) as running:
        yield running


def gw(live: LiveGateway) -> Any:
    return live.gateway


async def until_online(live: LiveGateway, user: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await gw(live).store.get(APP, [user]))[0].status == "online":
                return
            await asyncio.sleep(0.02)


async def test_post_users_queues_and_checks_them(
    live: LiveGateway, fake: tuple[FakeTencent, FakeServer]
) -> None:
    """POST with users answers 202 with how many are queued, and those users get checked."""
    f, _ = fake
    users = [f"api-{i}-{time.time_ns()}" for i in range(3)]
    for u in users:
        f.online(u, "web")
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post(
            f"/v1/apps/{APP}/reconcile", json={"users": users + users[:1]}, headers=AUTH
        )
    assert r.status_code == 202 and r.json() == {"queued": 3}
    for u in users:
        await until_online(live, u)


async def test_post_without_body_queues_every_known_user(live: LiveGateway) -> None:
    """POST with no body answers 202 with the number of users the store knows."""
    now = time.time_ns() // 1_000_000
    users = [f"known-{i}-{now}" for i in range(4)]
    await gw(live).store.apply(APP, [PresenceEvent(u, "ios", "ios", False, now) for u in users])
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post(f"/v1/apps/{APP}/reconcile", headers=AUTH)
    assert r.status_code == 202 and r.json()["queued"] >= 4


async def test_get_shows_the_last_pass_per_provider(live: LiveGateway) -> None:
    """GET answers 200 with each reconciled provider's last pass and its counts."""
    async with httpx.AsyncClient(base_url=live.url) as http:
        async with asyncio.timeout(10):
            while True:
                r = await http.get(f"/v1/apps/{APP}/reconcile", headers=AUTH)
                assert r.status_code == 200
                body = r.json()
                if body["providers"]["tencent"]["last_pass_at"] is not None:
                    break
                await asyncio.sleep(0.05)
    assert set(body["providers"]) == {"tencent"}
    assert set(body["providers"]["tencent"]) == {"last_pass_at", "checked", "corrected", "errors"}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic " + KEY])
async def test_without_the_key_401(live: LiveGateway, method: str, auth: str | None) -> None:
    """Both methods refuse a missing or wrong api key with 401."""
    headers = {"Authorization": auth} if auth else {}
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.request(method, f"/v1/apps/{APP}/reconcile", headers=headers)
    assert r.status_code == 401 and "error" in r.json()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"users": "bob"}',
        b'{"users": []}',
        b'{"users": [""]}',
        b'{"users": [1]}',
        b'{"user": ["bob"]}',
        b'["bob"]',
        b"\xff\xfe",
        b'{"users": [' + b",".join(b'"u%d"' % i for i in range(1001)) + b"]}",
    ],
)
async def test_bad_body_400(live: LiveGateway, body: bytes) -> None:
    """A body that is not {"users": [1..1000 ids]} is refused with 400 and a short reason."""
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post(f"/v1/apps/{APP}/reconcile", content=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert len(r.json()["error"]) <= 200


async def test_unknown_app_404_and_unreconciled_app_409(
    fake: tuple[FakeTencent, FakeServer],
) -> None:
    """An unknown app is 404; an app without any reconcile table is 409 on POST, and GET
    shows no provider."""
    f, server = fake
    async with (
        serve(settings(server, f, reconcile=False)) as running,
        httpx.AsyncClient(base_url=running.url) as http,
    ):
        r = await http.post("/v1/apps/nope/reconcile", headers=AUTH)
        assert r.status_code == 404
        r = await http.post(f"/v1/apps/{APP}/reconcile", json={"users": ["a"]}, headers=AUTH)
        assert r.status_code == 409
        r = await http.get(f"/v1/apps/{APP}/reconcile", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"providers": {}}


async def test_credentials_never_reach_logs_or_metrics(
    fake: tuple[FakeTencent, FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    """With the pull API failing every way, no secret key, UserSig or api key appears in any
    log line or in /metrics, and the failures are counted there."""
    f, server = fake
    caplog.set_level(logging.DEBUG)
    f.faults[:] = ["expired", "ratelimit", "http500", "expired", "expired"] * 4
    user = f"secretive-{time.time_ns()}"
    async with (
        serve(settings(server, f)) as running,
        httpx.AsyncClient(base_url=running.url) as http,
    ):
        r = await http.post(f"/v1/apps/{APP}/reconcile", json={"users": [user]}, headers=AUTH)
        assert r.status_code == 202
        async with asyncio.timeout(15):
            while True:
                text = (await http.get("/metrics")).text
                if not f.faults:
                    break
                await asyncio.sleep(0.05)
        text = (await http.get("/metrics")).text
    assert "presence_reconcile_errors_total" in text
    secrets = {f.secret_key, KEY, *f.credentials}
    assert f.credentials  # the fake saw UserSigs: there is something to look for
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in text
