"""A real loopback HTTP receiver of webhooks out: verifies each request's Standard Webhooks
signature with the ``standardwebhooks`` package and answers what the test tells it. The
receiver is the bench's (bench/receiver.py); this module adds the tests' secret, config and
webhook helpers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from bench.receiver import STALL, Hit, Receiver
from bench.receiver import receiving as bench_receiving
from tests.nodes import API_KEY, CLIENT_SECRET, TENCENT, TENCENT_TOKEN
from tests.sendhook import tencent_call

__all__ = [
    "SECRET",
    "STALL",
    "Hit",
    "Receiver",
    "config_text",
    "receiving",
    "tencent",
]

SECRET = "whsec_" + "b3V0Ym91bmQtdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OQ=="  # 32 bytes


@contextlib.asynccontextmanager
async def receiving(secret: str = SECRET) -> AsyncIterator[Receiver]:
    """A running receiver (the bench's own) with the tests' secret, until exit."""
    async with bench_receiving(secret) as receiver:
        yield receiver


def config_text(
    urls: list[str],
    *,
    redis_url: str | None = None,
    cluster: bool = False,
    grace_ms: int = 0,
    app: str = "nodes",
    events: str = '["user.online", "user.offline", "user.updated"]',
    schedule: str = "[0.1, 0.2]",
    timeout_s: float = 3.0,
    max_queue: int = 100_000,
) -> str:
    """A gateway config with one app, Tencent in, and ``urls`` as its webhooks out."""
    text = ""
    if redis_url is not None:
        text += f'[redis]\nurl = "{redis_url}"\ncluster = {"true" if cluster else "false"}\n\n'
    text += f"""[presence]
offline_grace_ms = {grace_ms}

[[apps]]
id = "{app}"
client_secret = "{CLIENT_SECRET}"
api_key = "{API_KEY}"

[apps.tencent]
sdkappid = 1400000000
callback_token = "{TENCENT_TOKEN}"
"""
    for url in urls:
        text += f"""
[[apps.webhooks]]
url = "{url}"
secret = "{SECRET}"
events = {events}
retry_schedule_s = {schedule}
timeout_s = {timeout_s}
max_queue = {max_queue}
"""
    return text


async def tencent(
    url: str,
    app: str,
    user: str,
    action: str,
    platform: str = "iOS",
    client: httpx.AsyncClient | None = None,
) -> None:
    """POST a signed Tencent State.StateChange to the gateway at ``url``; check it was acked."""
    req = tencent_call(TENCENT, user, action, platform)
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        r = await client.post(
            f"{url}/v1/apps/{app}/webhooks/tencent",
            params=req.query,
            headers=dict(req.headers),
            content=req.body,
        )
    assert r.status_code == 200 and r.json()["ActionStatus"] == "OK", r.text
