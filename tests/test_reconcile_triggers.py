"""What makes a live gateway check users (SPEC 8): a watched user's lost Login, a webhook
answered with 503, a feed loss; against the loopback Tencent fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway.backends.base import PresenceStore
from gateway.config import AppConfig, RedisConfig, Settings
from gateway.errors import StoreUnavailable
from gateway.providers.tencent import TencentConfig
from gateway.reconcile.config import TencentReconcile
from tests.live import LiveGateway, serve
from tests.pullapi import FakeServer, FakeTencent
from tests.pullapi import serve as serve_fakes
from tests.sendhook import post, tencent_call
from tests.wsclient import Client

APP = "rctrig"
SECRET = "reconcile-trigger-client-secret-0123456789"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeTencent, FakeServer]]:
    f = FakeTencent()
    async with serve_fakes(f) as server:
        yield f, server


def settings(
    server: FakeServer, f: FakeTencent, *, interval_s: float = 300, redis: str | None = None
) -> Settings:
    rc = TencentReconcile(
        api_base=server.url, admin=f.admin, secret_key=f.secret_key, rate=500, interval_s=interval_s
    )
    app = AppConfig(
        id=f"{APP}{time.time_ns() % 10**9}",
        client_secret=SECRET,
        api_key="reconcile-trigger-api-key",
        tencent=TencentConfig(sdkappid=f.sdkappid, reconcile=rc),
    )
    return Settings(apps={app.id: app}, redis=RedisConfig(url=redis) if redis else None)


def parts(live: LiveGateway) -> tuple[Any, str]:
    gw: Any = live.gateway
    return gw, next(iter(gw.settings.apps))


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def login(live: LiveGateway, app: str, user: str, action: str = "Login") -> httpx.Response:
    """POST an (unsigned: no callback token) Tencent State.StateChange."""
    gw, _ = parts(live)
    req = tencent_call(gw.settings.apps[app].tencent, user, action)
    async with httpx.AsyncClient(base_url=live.url) as http:
        return await post(http, app, "tencent", req)


async def startup_passes_done(gw: Any) -> bool:
    worker = gw.reconciler.workers[0]
    return (
        worker.lease.held
        and not gw.reconciler._pending_full
        and worker.full is None
        and await gw.store.get_note(worker.full_note) is None
    )


async def status_is(store: PresenceStore, app: str, user: str, status: str) -> bool:
    return (await store.get(app, [user]))[0].status == status


async def test_watched_users_lost_login_is_healed(fake: tuple[FakeTencent, FakeServer]) -> None:
    """A user a WebSocket client watches, shown unknown, whose Login was lost: the watcher
    gets it online."""
    f, server = fake
    user = f"w-{time.time_ns()}"
    f.online(user, "ios")
    async with serve(settings(server, f, interval_s=1)) as live:
        _, app = parts(live)
        watcher = await Client.login(live.ws_url, app, SECRET)
        try:
            assert (await watcher.watch(user))[user]["since"] is None
            state = await watcher.next_presence(user, wait=10)
            assert state["status"] == "online"
            assert [d["platform"] for d in state["devices"]] == ["ios"]
        finally:
            await watcher.close()


async def test_a_503_asks_for_a_full_pass(
    fake: tuple[FakeTencent, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a webhook got 503 (the store down), every known user is checked: a user whose
    Disconnect was lost meanwhile is shown offline long before the next online round."""
    f, server = fake
    user = f"lost-{time.time_ns()}"
    async with serve(settings(server, f)) as live:
        gw, app = parts(live)
        await until(lambda: startup_passes_done(gw))
        f.online(user, "ios")
        assert (await login(live, app, user)).status_code == 200
        f.offline(user)  # its Disconnect never arrives
        store = gw.store
        applying = store.apply

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("test: store down")

        monkeypatch.setattr(store, "apply", down)
        assert (await login(live, app, f"other-{user}")).status_code == 503
        monkeypatch.setattr(store, "apply", applying)
        await until(lambda: status_is(store, app, user, "offline"))


@pytest.mark.redis
async def test_a_feed_loss_asks_for_a_full_pass(
    fake: tuple[FakeTencent, FakeServer], redis_url: str
) -> None:
    """After the node lost its pub/sub feed (its connections killed), every known user is
    checked: a watcher sees the user whose Disconnect was lost go offline."""
    f, server = fake
    user = f"feed-{time.time_ns()}"
    async with serve(settings(server, f, redis=redis_url)) as live:
        gw, app = parts(live)
        await until(lambda: startup_passes_done(gw))
        f.online(user, "ios")
        assert (await login(live, app, user)).status_code == 200
        watcher = await Client.login(live.ws_url, app, SECRET)
        try:
            assert (await watcher.watch(user))[user]["status"] == "online"
            f.offline(user)  # its Disconnect never arrives
            admin = Redis.from_url(redis_url)
            try:
                assert await admin.client_kill_filter(_type="pubsub") >= 1
            finally:
                await admin.aclose()
            async with asyncio.timeout(15):
                while True:
                    message = await watcher.recv(wait=15)
                    states = message.get("presence", [message])
                    if any(s.get("user") == user and s["status"] == "offline" for s in states):
                        break
        finally:
            await watcher.close()
