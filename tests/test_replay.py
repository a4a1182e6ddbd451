"""Replayed RongCloud signatures (SPEC 3.2): the store's claim_request and the route's 401."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import msgspec
import pytest

from gateway.backends.base import PresenceStore
from gateway.backends.claims import Claims
from gateway.backends.redis.store import RedisStore
from gateway.config import AppConfig, RedisConfig, Settings, dev_settings
from gateway.errors import StoreUnavailable
from gateway.providers import rongcloud
from gateway.providers.rongcloud import RongCloudConfig
from tests.conftest import SHARED_BACKENDS, Backend, backend_url
from tests.live import LiveGateway, serve

RONGCLOUD = RongCloudConfig(app_key="rk", app_secret="rs")
A = hashlib.sha256(b"body a").digest()
B = hashlib.sha256(b"body b").digest()
MINUTE = 60_000


def new_app() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def new_key() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


# -- the store contract ------------------------------------------------------------------


async def test_claim_new_then_same_digest_then_other(store: PresenceStore) -> None:
    """A new key is claimed; the same digest again is True; another digest is False."""
    app, key = new_app(), new_key()
    assert await store.claim_request(app, key, A, MINUTE) is True
    assert await store.claim_request(app, key, A, MINUTE) is True
    assert await store.claim_request(app, key, B, MINUTE) is False
    assert await store.claim_request(app, key, A, MINUTE) is True  # the refusal changed nothing


async def test_claims_are_per_app_and_key(store: PresenceStore) -> None:
    """One key in two apps, or two keys in one app, are independent claims."""
    app, key = new_app(), new_key()
    assert await store.claim_request(app, key, A, MINUTE)
    assert await store.claim_request(new_app(), key, B, MINUTE)
    assert await store.claim_request(app, new_key(), B, MINUTE)


async def test_claim_expires_after_ttl(store: PresenceStore) -> None:
    """Once ``ttl_ms`` has passed the key is free again, for any digest."""
    app, key = new_app(), new_key()
    assert await store.claim_request(app, key, A, 1)
    deadline = time.monotonic() + 5
    while not await store.claim_request(app, key, B, MINUTE):
        assert time.monotonic() < deadline, "claim never expired"
        await asyncio.sleep(0.005)
    assert await store.claim_request(app, key, A, MINUTE) is False  # now held with B


async def test_concurrent_claims_one_winner(store: PresenceStore) -> None:
    """Of many concurrent claims of one key with different digests exactly one wins."""
    app, key = new_app(), new_key()
    digests = [hashlib.sha256(b"%d" % i).digest() for i in range(20)]
    won = await asyncio.gather(*(store.claim_request(app, key, d, MINUTE) for d in digests))
    assert sum(won) == 1


@pytest.mark.parametrize("backend", SHARED_BACKENDS, indirect=True)
async def test_second_node_refuses_other_body(backend: Backend) -> None:
    """Two stores on one Redis (two nodes): a key claimed on one is refused on the other."""
    first, second = await backend.store(), await backend.store()
    app, key = new_app(), new_key()
    assert await first.claim_request(app, key, A, MINUTE)
    assert await second.claim_request(app, key, B, MINUTE) is False
    assert await second.claim_request(app, key, A, MINUTE) is True


async def test_claim_raises_store_unavailable_when_redis_is_down(redis_proc: Any) -> None:
    """A stopped Redis makes claim_request raise StoreUnavailable, nothing else."""
    store = RedisStore.from_url(redis_proc.url, cluster=False, settings=dev_settings().presence)
    try:
        assert await store.claim_request("app", new_key(), A, MINUTE)
        await redis_proc.astop()
        with pytest.raises(StoreUnavailable):
            await store.claim_request("app", new_key(), A, MINUTE)
    finally:
        await store.close()


def test_memory_claims_are_bounded() -> None:
    """At the limit the claim closest to expiry goes first; expired claims are pruned."""
    claims = Claims(limit=3)
    for i, ttl in enumerate((30, 10, 20)):
        assert claims.claim(i, A, ttl, now_ms=0)
    assert claims.claim(3, A, 40, now_ms=0) and len(claims) == 3
    assert claims.claim(1, B, 40, now_ms=0)  # key 1 (ttl 10) was evicted
    assert claims.claim(0, B, 40, now_ms=5) is False  # key 0 still held with A
    assert claims.claim(9, A, 5, now_ms=1000) and len(claims) == 1  # the rest expired


# -- through the route -------------------------------------------------------------------


def make_settings(redis_url: str | None, cluster: bool) -> Settings:
    base = dev_settings().apps["demo"]
    app = msgspec.structs.replace(
        base,
        id=f"t{uuid.uuid4().hex[:12]}",
        rongcloud=RONGCLOUD,
    )
    redis = RedisConfig(url=redis_url, cluster=cluster) if redis_url else None
    return Settings(apps={app.id: app}, redis=redis)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def nodes(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[list[LiveGateway], AppConfig]]:
    """One gateway in memory; two gateways sharing one Redis / Redis Cluster; and the app."""
    url = backend_url(request, request.param)
    settings = make_settings(url, cluster=request.param == "cluster")
    async with AsyncExitStack() as stack:
        count = 1 if url is None else 2
        gateways = [await stack.enter_async_context(serve(settings)) for _ in range(count)]
        yield gateways, next(iter(settings.apps.values()))


def signed_query(nonce: str = "4711") -> dict[str, str]:
    return dict(rongcloud.signed_query(RONGCLOUD, time.time_ns() // 1_000_000, nonce=nonce))


def batch(status: str, time_ms: int) -> bytes:
    item = {"userid": "bob", "status": status, "os": "iOS", "time": time_ms, "sessionId": "s1"}
    return msgspec.json.encode([item])


async def presence(client: httpx.AsyncClient, app: AppConfig) -> dict[str, Any]:
    r = await client.get(
        f"/v1/apps/{app.id}/presence",
        params={"user": "bob"},
        headers={"Authorization": f"Bearer {app.api_key}"},
    )
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()["presence"][0]
    return state


async def test_replayed_signature_with_other_body_is_refused(
    nodes: tuple[list[LiveGateway], AppConfig],
) -> None:
    """Same signed query + another body: 401 on every node, state unchanged; retry: OK."""
    gateways, app = nodes
    t = time.time_ns() // 1_000_000 - 1000
    q, online, offline = signed_query(), batch("0", t), batch("1", t + 500)
    path = f"/v1/apps/{app.id}/webhooks/rongcloud"
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=gw.url)) for gw in gateways
        ]
        r = await clients[0].post(path, params=q, content=online)
        assert (r.status_code, r.content) == (200, b'{"code":200}')
        before = await presence(clients[0], app)
        assert before["status"] == "online"
        for client in clients:  # the same node, then (with Redis) another one
            r = await client.post(path, params=q, content=offline)
            assert r.status_code == 401
            assert r.json() == {"code": 401, "error": "signature already used for another body"}
            r = await client.post(path, params=q, content=online)  # RongCloud's retry
            assert (r.status_code, r.content) == (200, b'{"code":200}')
            assert await presence(client, app) == before
        r = await clients[-1].post(path, params=signed_query("4712"), content=offline)
        assert r.status_code == 200  # a freshly signed query carries the offline
        assert (await presence(clients[0], app))["status"] == "offline"


async def test_claim_on_a_down_store_is_503(redis_proc: Any) -> None:
    """With Redis down, a RongCloud request (even one with no events) gets 503, never OK."""
    settings = make_settings(redis_proc.url, cluster=False)
    app = next(iter(settings.apps.values()))
    path = f"/v1/apps/{app.id}/webhooks/rongcloud"
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.post(path, params=signed_query("1"), content=b"[]")).status_code == 200
        await redis_proc.astop()
        r = await client.post(path, params=signed_query("2"), content=b"[]")
        assert r.status_code == 503
        assert r.json() == {"code": 503, "error": "store unavailable, retry later"}
