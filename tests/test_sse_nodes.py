"""SSE streams on gateway processes sharing one Redis or Redis Cluster (as tests/test_nodes.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway import tokens
from tests.nodes import CLIENT_SECRET, config_text, nodes
from tests.test_nodes import APP, redis_target, tencent
from tests.test_sse import open_stream

__all__ = ["redis_target"]  # the fixture, imported for pytest


def token(user: str = "alice") -> str:
    return tokens.issue(CLIENT_SECRET, APP, user)


async def test_webhook_on_one_node_reaches_a_stream_on_another(
    tmp_path: Path, redis_target: tuple[str, bool]
) -> None:
    """A webhook posted to node A is streamed live to an SSE client of node B."""
    url, cluster = redis_target
    async with nodes(tmp_path, 2, config_text(url, cluster=cluster)) as (a, b):
        users = [f"bob-{time.time_ns()}", f"carol-{time.time_ns()}"]
        async with open_stream(b.url, APP, users, token()) as stream:
            snapshot = await stream.start()
            assert [snapshot[u]["v"] for u in users] == [0, 0]
            for user in users:
                await tencent(a, user, "Login")
                state = await stream.presence(user)
                assert state["status"] == "online"
                assert state["devices"] == [{"platform": "ios", "since": state["since"]}]


async def test_redis_restart_gives_a_resync_event_then_live_changes(
    tmp_path: Path, redis_proc: Any
) -> None:
    """A stream stays open while Redis restarts, gets a resync event, then live changes."""
    async with (
        nodes(tmp_path, 1, config_text(redis_proc.url)) as (node,),
        open_stream(node.url, APP, ["bob", "carol"], token()) as stream,
    ):
        await stream.start()
        await tencent(node, "bob", "Login")
        assert (await stream.presence("bob"))["status"] == "online"
        await redis_proc.astop()
        await redis_proc.astart()
        async with asyncio.timeout(20):
            while (got := await stream.next(20)) is not None and got.name != "resync":
                pass
        assert got is not None, "the stream ended instead"
        assert {s["user"] for s in got.json()["presence"]} == {"bob", "carol"}
        await tencent(node, "carol", "Login", "Android")
        assert (await stream.presence("carol", within=10))["status"] == "online"
