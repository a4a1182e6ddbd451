"""Several nodes on one Redis: exactly one checks an app's provider, and another takes over
within 30 s when it dies (SPEC 8)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from gateway.metrics import Metrics
from gateway.model import PresenceEvent
from gateway.reconcile.scheduler import Reconciler
from gateway.reconcile.targets import targets
from tests.conftest import Backend, backend_url
from tests.nodes import config_text, nodes
from tests.pullapi import FakeServer, FakeTencent, serve
from tests.test_nodes import tencent
from tests.test_reconcile_heal import APP, FAST, table


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with serve(FakeTencent()) as running:
        yield running


async def until(check: Callable[[], Awaitable[bool]], within: float, every: float) -> None:
    """Poll ``check`` every ``every`` s until it holds; fail after ``within`` s."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(every)


async def _true(value: bool) -> bool:
    return value


async def _total_at_least(a: str, b: str | None, count: float) -> bool:
    total = await node_checks(a) + (await node_checks(b) if b else 0.0)
    return total >= count


def checks(metrics: Metrics) -> float:
    return sum(
        s.value
        for m in metrics.reconcile_checks.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_one_node_checks_and_the_survivor_takes_over(
    request: pytest.FixtureRequest, server: FakeServer, kind: str
) -> None:
    """Two nodes (two stores on one Redis): only the lease holder ever checks; when it dies
    without releasing, the other holds the lease and checks once the ttl ran out."""
    backend = Backend(kind, backend_url(request, kind))
    try:
        a_store, b_store = await backend.store(), await backend.store()
        f = server.fakes[0]
        assert isinstance(f, FakeTencent)
        now = time.time_ns() // 1_000_000
        users = [f"n{i}-{now}" for i in range(5)]
        await a_store.apply(APP, [PresenceEvent(u, "ios", "ios", True, now) for u in users])
        for u in users:
            f.online(u, "ios")
        found = targets({APP: {"tencent": table(server, "tencent")}}, FAST)
        found = [dataclasses.replace(t, interval_s=1.0) for t in found]  # a round a second
        ma, mb = Metrics(), Metrics()
        a = Reconciler(found, a_store, ma, node="A", lease_ttl_ms=600, tick_s=0.02)
        b = Reconciler(found, b_store, mb, node="B", lease_ttl_ms=600, tick_s=0.02)
        await a.start()
        await b.start()
        try:
            async with asyncio.timeout(10):
                while checks(ma) + checks(mb) < 3 * len(users):  # a few rounds
                    held = [w.lease.held for w in (*a.workers, *b.workers)]
                    assert sum(held) <= 1
                    await asyncio.sleep(0.02)
            holder, other = (a, b) if checks(ma) else (b, a)
            other_metrics = mb if holder is a else ma
            assert checks(other_metrics) == 0
            for w in holder.workers:
                w.lease.held = False  # it dies: the lease is not released
            await holder.stop()
            await until(lambda: _true(checks(other_metrics) > 0), 10, 0.02)
            assert other.workers[0].lease.held
        finally:
            await a.stop()
            await b.stop()
    finally:
        await backend.aclose()


def reconcile_config(redis_url: str, server: FakeServer, f: FakeTencent) -> str:
    return (
        config_text(redis_url)
        + f"""
[apps.tencent.reconcile]
api_base = "{server.url}"
admin = "{f.admin}"
secret_key = "{f.secret_key}"
interval_s = 1
rate = 200
"""
    )


_CHECKS = re.compile(r'^presence_reconcile_checks_total\{provider="tencent"\} (\S+)$', re.M)


async def node_checks(url: str) -> float:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    found = _CHECKS.search(text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.redis
async def test_killed_gateway_process_is_replaced_within_30_s(
    tmp_path: Path, redis_url: str, server: FakeServer
) -> None:
    """Two real gateway processes: one checks, the other does not; after the checking one is
    killed (SIGKILL), the other checks within 30 s."""
    f = server.fakes[0]
    assert isinstance(f, FakeTencent)
    user = f"proc-{time.time_ns()}"
    f.online(user, "ios")
    async with nodes(tmp_path, 2, reconcile_config(redis_url, server, f)) as (a, b):
        await tencent(a, user, "Login")
        await until(lambda: _total_at_least(a.url, b.url, 3), 30, 0.1)
        ca, cb = await node_checks(a.url), await node_checks(b.url)
        assert (ca == 0) != (cb == 0), (ca, cb)
        holder, other = (a, b) if ca else (b, a)
        holder.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        await until(lambda: _total_at_least(other.url, None, 1), 30, 0.1)
        assert time.monotonic() - killed_at < 30
