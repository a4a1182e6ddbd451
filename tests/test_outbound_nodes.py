"""Webhooks out across nodes: exactly once enqueued, delivered by whichever node holds it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis, RedisCluster

from gateway.outbound import keys
from gateway.outbound.config import WebhookEndpoint
from tests.nodes import Node, nodes
from tests.receiver import SECRET, config_text, receiving
from tests.test_nodes import tencent


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """A Redis URL and whether it is a cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), False
    return request.getfixturevalue("redis_cluster_url"), True


async def holders(url: str, cluster: bool, group: str) -> set[bytes | str]:
    """The nodes holding the endpoint's bucket leases."""
    client: Redis | RedisCluster = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    try:
        names = [keys.lease_key("pg", "nodes", group, b) for b in range(keys.BUCKETS)]
        found = [await client.get(name) for name in names]
    finally:
        await client.aclose()
    return {h for h in found if h}


async def delivered(node: Node) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{node.url}/metrics")).text
    line = 'presence_webhooks_out_total{app="nodes",outcome="delivered"} '
    for row in text.splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    return 0.0


async def test_exactly_once_across_two_nodes(
    tmp_path: Path, redis_target: tuple[str, bool]
) -> None:
    """Webhooks in to both nodes: every change reaches the endpoint once, in order per user,
    and both nodes share the deliveries."""
    url, cluster = redis_target
    users = [f"x{i}-{time.time_ns()}" for i in range(40)]
    async with receiving() as rx:
        text = config_text([rx.url], redis_url=url, cluster=cluster)
        async with nodes(tmp_path, 2, text) as (a, b):
            group = WebhookEndpoint(url=rx.url, secret=SECRET).group("nodes")
            deadline = time.monotonic() + 10  # both nodes hold a share of the leases
            while len(await holders(url, cluster, group)) < 2:
                assert time.monotonic() < deadline, "one node holds every lease"
                await asyncio.sleep(0.1)
            await asyncio.gather(
                *(tencent(a if i % 2 else b, u, "Login") for i, u in enumerate(users))
            )
            await asyncio.gather(
                *(tencent(b if i % 2 else a, u, "Disconnect") for i, u in enumerate(users))
            )
            await rx.wait(lambda hits: len(hits) >= 2 * len(users))
            shares = [await delivered(a), await delivered(b)]
    ids = Counter(h.id for h in rx.hits)
    assert len(rx.hits) == 2 * len(users) and max(ids.values()) == 1
    assert sum(shares) == 2 * len(users) and min(shares) > 0  # both nodes did some
    for user in users:
        assert [h.body["type"] for h in rx.delivered(user)] == ["user.online", "user.offline"]


async def test_grace_on_cluster_across_nodes(tmp_path: Path, redis_cluster_url: str) -> None:
    """On Cluster with offline_grace_ms, an offline ended by the sweep of either node is sent
    once; a reconnect inside the grace, through the other node, sends nothing."""
    flapper, leaver = f"flap-{time.time_ns()}", f"leave-{time.time_ns()}"
    async with receiving() as rx:
        text = config_text([rx.url], redis_url=redis_cluster_url, cluster=True, grace_ms=800)
        async with nodes(tmp_path, 2, text) as (a, b):
            await tencent(a, flapper, "Login")
            await tencent(b, leaver, "Login")
            await rx.wait(lambda hits: len(hits) >= 2)
            await tencent(a, flapper, "Disconnect")
            await tencent(b, flapper, "Login")
            await tencent(a, leaver, "Disconnect")
            # within the full pass (10 s): the sweep's hint finds the stream
            await rx.wait(lambda hits: len(hits) >= 3, within=5)
    assert [(h.user, h.body["type"]) for h in rx.hits[2:]] == [(leaver, "user.offline")]
