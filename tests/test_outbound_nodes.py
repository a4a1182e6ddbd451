"""Webhooks out across nodes: exactly once enqueued, delivered by whichever node holds it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.nodes import nodes
from tests.receiver import config_text, receiving
from tests.test_nodes import tencent


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """A Redis URL and whether it is a cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), False
    return request.getfixturevalue("redis_cluster_url"), True


async def test_exactly_once_across_two_nodes(
    tmp_path: Path, redis_target: tuple[str, bool]
) -> None:
    """Webhooks in to both nodes: every change reaches the endpoint once, in order per user."""
    url, cluster = redis_target
    users = [f"x{i}-{time.time_ns()}" for i in range(40)]
    async with receiving() as rx:
        text = config_text([rx.url], redis_url=url, cluster=cluster)
        async with nodes(tmp_path, 2, text) as (a, b):
            await asyncio.gather(
                *(tencent(a if i % 2 else b, u, "Login") for i, u in enumerate(users))
            )
            await asyncio.gather(
                *(tencent(b if i % 2 else a, u, "Disconnect") for i, u in enumerate(users))
            )
            await rx.wait(lambda hits: len(hits) >= 2 * len(users))
    ids = Counter(h.id for h in rx.hits)
    assert len(rx.hits) == 2 * len(users) and max(ids.values()) == 1
    for user in users:
        assert [h.body["type"] for h in rx.delivered(user)] == ["user.online", "user.offline"]
