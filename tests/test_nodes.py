"""Many gateway processes on one Redis / Redis Cluster: changes reach watchers on every node."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nodes import CLIENT_SECRET, TENCENT, Node, config_text, nodes
from tests.sendhook import post, tencent_call
from tests.wsclient import Client

APP = "nodes"


async def tencent(node: Node, user: str, action: str, platform: str = "iOS") -> None:
    """POST a signed Tencent State.StateChange to ``node`` and check it was acked OK."""
    async with httpx.AsyncClient(base_url=node.url) as client:
        r = await post(client, APP, "tencent", tencent_call(TENCENT, user, action, platform))
    assert r.status_code == 200 and r.json()["ActionStatus"] == "OK", r.text


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """A Redis URL and whether it is a cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), False
    return request.getfixturevalue("redis_cluster_url"), True


async def test_webhook_on_one_node_reaches_watcher_on_another(
    tmp_path: Path, redis_target: tuple[str, bool]
) -> None:
    """A webhook posted to node A is delivered live to a watcher connected to node B."""
    url, cluster = redis_target
    async with nodes(tmp_path, 2, config_text(url, cluster=cluster)) as (a, b):
        watcher = await Client.login(b.ws_url, APP, CLIENT_SECRET)
        user = f"bob-{time.time_ns()}"
        assert (await watcher.watch(user))[user]["v"] == 0
        await tencent(a, user, "Login")
        state = await watcher.next_presence(user)
        assert state["status"] == "online" and state["devices"] == [
            {"platform": "ios", "since": state["since"]}
        ]
        await watcher.close()


async def test_watch_set_spanning_cluster_slots_gets_every_change(
    tmp_path: Path, redis_cluster_url: str
) -> None:
    """A client watching users whose keys live on different cluster slots receives them all."""
    async with nodes(tmp_path, 2, config_text(redis_cluster_url, cluster=True)) as (a, b):
        watcher = await Client.login(b.ws_url, APP, CLIENT_SECRET)
        users = [f"u{i}-{time.time_ns()}" for i in range(30)]
        await watcher.watch(*users)
        await asyncio.gather(*(tencent(a, u, "Login") for u in users))
        seen: set[str] = set()
        async with asyncio.timeout(10):
            while seen != set(users):
                message = await watcher.recv()
                if message["type"] == "presence":
                    assert message["status"] == "online"
                    seen.add(message["user"])
        await watcher.close()


async def test_redis_restart_gives_resync_then_live_changes(
    tmp_path: Path, redis_proc: Any
) -> None:
    """Clients stay connected while Redis restarts, get a resync, then live changes again."""
    async with nodes(tmp_path, 1, config_text(redis_proc.url)) as (node,):
        watcher = await Client.login(node.ws_url, APP, CLIENT_SECRET)
        await watcher.watch("bob", "carol")
        await tencent(node, "bob", "Login")
        assert (await watcher.next_presence("bob"))["status"] == "online"
        redis_proc.stop()
        assert (await watcher.request("ping"))["type"] == "pong", "still connected while down"
        redis_proc.start()
        async with asyncio.timeout(20):
            while (message := await watcher.recv(20))["type"] != "resync":
                pass
        users = {s["user"]: s for s in message["presence"]}
        assert set(users) == {"bob", "carol"}
        await tencent(node, "carol", "Login", "Android")
        assert (await watcher.next_presence("carol", wait=10))["status"] == "online"
        await watcher.close()


async def collect(client: Client, user: str, seconds: float) -> list[dict[str, Any]]:
    """Every presence of ``user`` the client receives within ``seconds``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await client.recv(left)
        except TimeoutError:
            break
        if message["type"] == "presence" and message["user"] == user:
            got.append(message)
    return got


async def test_offline_grace_across_two_nodes(
    tmp_path: Path, redis_target: tuple[str, bool]
) -> None:
    """With two nodes sweeping, exactly one offline is published; a quick reconnect, none."""
    url, cluster = redis_target
    grace = 1500
    async with nodes(tmp_path, 2, config_text(url, cluster=cluster, grace_ms=grace)) as (a, b):
        on_a = await Client.login(a.ws_url, APP, CLIENT_SECRET)
        on_b = await Client.login(b.ws_url, APP, CLIENT_SECRET)
        user = f"flappy-{time.time_ns()}"
        await on_a.watch(user)
        await on_b.watch(user)
        await tencent(a, user, "Login")
        assert (await on_b.next_presence(user))["status"] == "online"
        assert (await on_a.next_presence(user))["status"] == "online"

        await tencent(b, user, "Disconnect")
        await tencent(a, user, "Login")  # back within the grace
        assert await collect(on_b, user, 3 * grace / 1000) == [], "a quick reconnect shows nothing"

        await tencent(a, user, "Disconnect")
        seen_b = await collect(on_b, user, 3 * grace / 1000)
        seen_a = await collect(on_a, user, 0.5)
        assert [s["status"] for s in seen_b] == ["offline"]
        assert [s["status"] for s in seen_a] == ["offline"]
        assert seen_a[0]["v"] == seen_b[0]["v"], "one publish, seen by both nodes"
        await on_a.close()
        await on_b.close()
