"""Webhooks out end to end: real gateway processes, a real receiver, memory and Redis."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.nodes import nodes
from tests.receiver import SECRET, STALL, config_text, receiving
from tests.test_nodes import tencent


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for the memory backend, else a standalone Redis URL."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


def unique(name: str) -> str:
    return f"{name}-{time.time_ns()}"


async def test_online_updated_offline_bodies_signed(
    tmp_path: Path, backend_url: str | None
) -> None:
    """Online, a platform change and offline arrive as user.online/updated/offline, signed,
    with the state exactly as watchers see it (no device ids) and an RFC 3339 timestamp."""
    async with (
        receiving() as rx,
        nodes(tmp_path, 1, config_text([rx.url], redis_url=backend_url)) as [node],
    ):
        user = unique("bob")
        await tencent(node, user, "Login", "iOS")
        await rx.wait(lambda hits: len(hits) >= 1)
        await tencent(node, user, "Login", "Android")
        await rx.wait(lambda hits: len(hits) >= 2)
        await tencent(node, user, "Disconnect", "iOS")
        await tencent(node, user, "Disconnect", "Android")
        hits = await rx.wait(lambda hits: any(h.body["type"] == "user.offline" for h in hits))
    types = [h.body["type"] for h in hits]
    assert types[:2] == ["user.online", "user.updated"], types
    assert types[-1] == "user.offline"
    assert all(h.verified for h in hits)
    online = hits[0].body
    assert online["data"]["user"] == user and online["data"]["status"] == "online"
    assert online["data"]["devices"] == [{"platform": "ios", "since": online["data"]["since"]}]
    assert set(online) == {"type", "timestamp", "data"}
    datetime.fromisoformat(online["timestamp"])  # RFC 3339
    assert online["timestamp"].endswith("Z")
    vs = [h.body["data"]["v"] for h in hits]
    assert vs == sorted(vs) and len(set(vs)) == len(vs)
    assert len({h.id for h in hits}) == len(hits)
    for h in hits:
        assert "device" not in str(h.body["data"]).replace("devices", "")


async def test_retries_keep_id_then_give_up(tmp_path: Path, backend_url: str | None) -> None:
    """A failing endpoint gets each message 1 + len(schedule) times with the same webhook-id,
    then it is given up and the next message of that user goes out."""
    async with receiving() as rx:
        rx.answers = [500, 500, 500]  # the first message: every attempt fails
        async with nodes(tmp_path, 1, config_text([rx.url], redis_url=backend_url)) as [node]:
            user = unique("carol")
            await tencent(node, user, "Login")
            await rx.wait(lambda hits: len(hits) >= 3)
            await tencent(node, user, "Disconnect")
            hits = await rx.wait(lambda hits: len(rx.delivered(user)) >= 1)
    first = [h for h in hits if h.body["type"] == "user.online"]
    assert [h.status for h in first] == [500, 500, 500]
    assert len({h.id for h in first}) == 1
    assert {h.headers["webhook-id"] for h in first} == {first[0].id}
    assert [h.body["type"] for h in rx.delivered(user)] == ["user.offline"]
    log = (tmp_path / "node0.log").read_text()
    assert "gave up " + first[0].id in log
    assert SECRET not in log and SECRET[6:] not in log and rx.url not in log


async def test_stalled_endpoint_times_out_and_retries(
    tmp_path: Path, backend_url: str | None
) -> None:
    """A receiver that never answers is timed out (timeout_s) and the message retried."""
    async with receiving() as rx:
        rx.answers = [STALL]
        text = config_text([rx.url], redis_url=backend_url, timeout_s=0.5)
        async with nodes(tmp_path, 1, text) as [node]:
            user = unique("dan")
            await tencent(node, user, "Login")
            hits = await rx.wait(lambda hits: len(rx.delivered(user)) >= 1)
    assert [h.status for h in hits][:2] == [STALL, 200]
    assert hits[0].id == hits[1].id


async def test_gone_disables_endpoint_not_others(tmp_path: Path, backend_url: str | None) -> None:
    """410 Gone stops deliveries to that endpoint; another endpoint keeps getting all."""
    async with receiving() as gone, receiving() as ok:
        gone.default = 410
        text = config_text([gone.url, ok.url], redis_url=backend_url)
        async with nodes(tmp_path, 1, text) as [node]:
            users = [unique(f"e{i}") for i in range(3)]
            await tencent(node, users[0], "Login")
            await gone.wait(lambda hits: len(hits) >= 1)
            await ok.wait(lambda hits: len(hits) >= 1)
            for user in users[1:]:
                await tencent(node, user, "Login")
            await ok.wait(lambda hits: len(ok.delivered()) >= 3)
    assert len(gone.hits) == 1


async def test_order_per_user_through_an_outage(tmp_path: Path, backend_url: str | None) -> None:
    """While the endpoint fails, a user's later changes wait: they arrive in v order."""
    async with receiving() as rx:
        rx.answers = [503, 503]
        text = config_text([rx.url], redis_url=backend_url, schedule="[0.3, 0.3, 0.3]")
        async with nodes(tmp_path, 1, text) as [node]:
            user = unique("erin")
            for action in ("Login", "Disconnect", "Login", "Disconnect"):
                await tencent(node, user, action)
            await rx.wait(lambda hits: len(rx.delivered(user)) >= 4)
    delivered = rx.delivered(user)
    vs = [h.body["data"]["v"] for h in delivered]
    assert vs == sorted(vs)
    types = [h.body["type"] for h in delivered]
    assert types == ["user.online", "user.offline", "user.online", "user.offline"]


async def test_reconnect_inside_grace_sends_nothing(
    tmp_path: Path, backend_url: str | None
) -> None:
    """With offline_grace_ms, a reconnect inside it sends nothing; a real offline is sent
    once, after the grace (by the sweep)."""
    async with receiving() as rx:
        text = config_text([rx.url], redis_url=backend_url, grace_ms=800)
        async with nodes(tmp_path, 1, text) as [node]:
            flapper, leaver = unique("flap"), unique("leave")
            await tencent(node, flapper, "Login")
            await tencent(node, leaver, "Login")
            await rx.wait(lambda hits: len(hits) >= 2)
            await tencent(node, flapper, "Disconnect")
            await tencent(node, flapper, "Login")
            await tencent(node, leaver, "Disconnect")
            await rx.wait(lambda hits: len(hits) >= 3)
    assert [(h.user, h.body["type"]) for h in rx.hits[2:]] == [(leaver, "user.offline")]
