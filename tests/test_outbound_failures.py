"""Webhooks out when things break: a node killed mid-delivery, Redis restarted from its AOF,
a stalled endpoint next to a healthy one, the queue bound."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.outbound import keys
from tests.nodes import Node, nodes
from tests.receiver import STALL, Receiver, config_text, receiving
from tests.receiver import tencent as tencent_to
from tests.servers import RedisServer
from tests.test_nodes import tencent


class AofRedis(RedisServer):
    """A redis-server that persists every write before answering (AOF, fsync always)."""

    def _argv(self) -> list[str]:
        argv = super()._argv()
        i = argv.index("--appendonly")
        argv[i + 1] = "yes"
        return [*argv, "--appendfsync", "always"]


async def metrics_with(node: Node, line: str, within: float = 10.0) -> str:
    """Poll the node's /metrics (another process: no event to await) until ``line`` shows."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as client:
        while True:
            text = (await client.get(f"{node.url}/metrics")).text
            if line in text or time.monotonic() > deadline:
                return text
            await asyncio.sleep(0.1)


def unique(name: str) -> str:
    return f"{name}-{time.time_ns()}"


def first_ids(rx: Receiver) -> dict[str, str]:
    """user -> the webhook-id of the first attempt seen for it."""
    out: dict[str, str] = {}
    for hit in rx.hits:
        out.setdefault(hit.user, hit.id)
    return out


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """A Redis URL and whether it is a cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), False
    return request.getfixturevalue("redis_cluster_url"), True


async def test_killed_node_pending_picked_up(
    tmp_path: Path, redis_target: tuple[str, bool]
) -> None:
    """Messages a SIGKILLed node had taken but not delivered go out from the next node,
    with the same webhook-ids."""
    url, cluster = redis_target
    users = [unique(f"k{i}") for i in range(8)]
    async with receiving() as rx:
        rx.default = 500
        schedule = str([0.2] * 20)
        text = config_text([rx.url], redis_url=url, cluster=cluster, schedule=schedule)
        (tmp_path / "gateway.toml").write_text(text)
        a = Node(tmp_path / "gateway.toml", tmp_path / "a.log")
        await a.start()
        try:
            for user in users:
                await tencent(a, user, "Login")
            await rx.wait(lambda hits: {h.user for h in hits} >= set(users))
        finally:
            a.stop(signal.SIGKILL)
        tried = first_ids(rx)
        rx.default = 200
        b = Node(tmp_path / "gateway.toml", tmp_path / "b.log")
        await b.start()
        try:
            await rx.wait(lambda hits: all(rx.delivered(u) for u in users), within=15)
        finally:
            b.stop()
    for user in users:
        [hit] = rx.delivered(user)
        assert hit.id == tried[user] and hit.body["type"] == "user.online"


async def test_redis_restart_from_aof_loses_nothing(tmp_path: Path) -> None:
    """Changes acked to the provider survive Redis being killed and restarted from its AOF:
    each is delivered once the endpoint and Redis are back."""
    server = AofRedis(tmp_path / "redis")
    await server.astart()
    users = [unique(f"r{i}") for i in range(5)]
    try:
        async with receiving() as rx:
            rx.default = 503
            text = config_text([rx.url], redis_url=server.url, schedule=str([0.2] * 40))
            async with nodes(tmp_path, 1, text) as [node]:
                for user in users:
                    await tencent(node, user, "Login")  # acked: enqueued and fsynced
                await server.astop()  # SIGKILL
                await server.astart()  # replays the AOF
                rx.default = 200
                for user in users:
                    await tencent(node, user, "Disconnect")
                await rx.wait(lambda hits: all(len(rx.delivered(u)) == 2 for u in users), within=15)
    finally:
        server.stop()
    for user in users:
        assert [h.body["type"] for h in rx.delivered(user)] == ["user.online", "user.offline"]


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for the memory backend, else a standalone Redis URL."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


async def test_stalled_endpoint_does_not_slow_others(
    tmp_path: Path, backend_url: str | None
) -> None:
    """An endpoint that never answers holds only its own deliveries: webhooks in are acked
    and the other endpoint gets every change."""
    users = [unique(f"s{i}") for i in range(20)]
    async with receiving() as stalled, receiving() as ok:
        stalled.default = STALL
        text = config_text([stalled.url, ok.url], redis_url=backend_url, timeout_s=30)
        async with nodes(tmp_path, 1, text) as [node]:
            started = time.monotonic()
            for user in users:
                await tencent(node, user, "Login")
            await ok.wait(lambda hits: len(ok.delivered()) >= len(users))
            assert time.monotonic() - started < 25  # well inside the stalled POSTs' time-out
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"{node.url}/metrics")).text
    assert 'presence_webhooks_out_total{app="nodes",outcome="delivered"} 20.0' in metrics
    assert "presence_webhooks_out_queue" in metrics


async def test_queue_bound_drops_oldest(tmp_path: Path, redis_url: str) -> None:
    """Beyond its share of max_queue the oldest entries of a stream go (MAXLEN ~)."""
    users: list[str] = []
    while len(users) < 250:  # users of one bucket: their entries share one stream
        user = unique(f"q{len(users)}")
        if keys.bucket_of(key_slot(f"bounded/{user}".encode())) == 0:
            users.append(user)
    async with receiving() as rx:
        rx.default = STALL
        text = config_text([rx.url], redis_url=redis_url, max_queue=10, timeout_s=30)
        text = text.replace('id = "nodes"', 'id = "bounded"')
        async with nodes(tmp_path, 1, text) as [node]:
            for batch in range(0, len(users), 50):
                await asyncio.gather(
                    *(
                        tencent_to(node.url, "bounded", u, "Login")
                        for u in users[batch : batch + 50]
                    )
                )
            client = Redis.from_url(redis_url)
            try:
                length = await client.xlen("pg:wh:bounded:{b0}")
            finally:
                await client.aclose()
    assert 1 <= length < 200


async def test_memory_queue_bound_counts_drops(tmp_path: Path) -> None:
    """On memory, beyond max_queue (those in delivery included) messages are dropped and
    counted outcome="dropped"."""
    async with receiving() as rx:
        rx.default = STALL
        text = config_text([rx.url], max_queue=10, timeout_s=30)
        async with nodes(tmp_path, 1, text) as [node]:
            await asyncio.gather(*(tencent(node, unique(f"m{i}"), "Login") for i in range(10)))
            await rx.wait(lambda hits: len(hits) >= 10)  # all ten in delivery (stalled)
            await asyncio.gather(*(tencent(node, unique(f"n{i}"), "Login") for i in range(30)))
            line = 'presence_webhooks_out_total{app="nodes",outcome="dropped"} 30.0'
            metrics = await metrics_with(node, line)
    assert line in metrics
    assert 'presence_webhooks_out_queue{app="nodes",endpoint=' in metrics
    assert len(rx.hits) == 10
