"""``python -m bench webhooks-out``: webhooks out (SPEC, outbound webhooks), measured.

One gateway process (``--backend memory``, or the run's Redis) with one endpoint: a loopback
receiver in this process that verifies every signature (``bench/receiver.py``, the
``standardwebhooks`` package, as a real backend would). Two phases, ~15 s in all:

- throughput: ``--users`` logins (3,000) are queued while the receiver holds its requests;
  once released, how many messages per second the one process delivers;
- latency: logins at a steady ``--rate`` (100/s) for ``--duration`` s (5); from the webhook
  in being sent to its webhook out being received, p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Any

import httpx

from bench.procs import LOOPBACK, BenchError, Redis
from bench.runner import Bench
from bench.scenarios.common import Result, ms
from bench.target import API_KEY, APP_ID, CALLBACK_TOKEN, CLIENT_SECRET, SDKAPPID, Target
from gateway.model import PresenceEvent
from gateway.providers import tencent

if TYPE_CHECKING:
    from bench.receiver import Receiver

HELD_BACK = 40  # messages the throughput figure leaves out (those in flight at the release)
TENCENT = tencent.TencentConfig(sdkappid=SDKAPPID, callback_token=CALLBACK_TOKEN)


class WebhooksOutTarget(Target):
    """The gateway with one app, Tencent in, and ``url`` as its one webhook out."""

    def __init__(self, url: str, secret: str, log_level: str = "warning") -> None:
        super().__init__(log_level=log_level)
        self.url = url
        self.secret = secret

    def config(self, redis: Redis | None) -> str:
        lines = ["[presence]", "offline_grace_ms = 0", ""]
        if redis is not None:
            lines += ["[redis]", f'url = "{redis.url}"', "cluster = false", ""]
        lines += [
            "[[apps]]",
            f'id = "{APP_ID}"',
            f'client_secret = "{CLIENT_SECRET}"',
            f'api_key = "{API_KEY}"',
            "",
            "[apps.tencent]",
            f"sdkappid = {SDKAPPID}",
            f'callback_token = "{CALLBACK_TOKEN}"',
            "",
            "[[apps.webhooks]]",
            f'url = "{self.url}"',
            f'secret = "{self.secret}"',
            'events = ["user.online", "user.offline"]',
            "retry_schedule_s = [0.1, 0.2]",
            "timeout_s = 60",
            "max_queue = 100000",
        ]
        return "\n".join(lines) + "\n"


async def login(client: httpx.AsyncClient, user: str) -> None:
    """POST a signed Tencent Login of ``user`` (platform iOS); check it was acked."""
    now = time.time_ns() // 1_000_000
    ev = PresenceEvent(user, "ios", "ios", True, now, "register")
    req = tencent.build_request(TENCENT, ev, opt_platform="iOS", now_ms=now)
    r = await client.post(
        f"/v1/apps/{APP_ID}/webhooks/tencent",
        params=req.query,
        headers=dict(req.headers),
        content=req.body,
    )
    if r.status_code != 200 or r.json().get("ActionStatus") != "OK":
        raise RuntimeError(f"webhook in answered HTTP {r.status_code}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    from bench.receiver import SECRET, receiving

    async with receiving() as rx:
        target = WebhooksOutTarget(rx.url, SECRET, log_level=args.server_log_level)
        (server,) = await asyncio.to_thread(bench.start_servers, target, 1)
        limits = httpx.Limits(max_connections=64)
        base = f"http://{LOOPBACK}:{server.port}"
        async with httpx.AsyncClient(base_url=base, limits=limits) as client:
            return await _measure(client, rx, args.users, args.rate, args.duration)


async def _measure(
    client: httpx.AsyncClient, rx: Receiver, count: int, rate: float, seconds: float
) -> dict[str, Any]:
    from bench.receiver import STALL

    stamp = time.time_ns()
    # throughput: hold the first requests, queue `count` changes, release, time the drain
    rx.default = STALL
    sem = asyncio.Semaphore(32)

    async def queued(user: str) -> None:
        async with sem:
            await login(client, user)

    await asyncio.gather(*(queued(f"t{stamp}-{i}") for i in range(count)))
    await rx.wait(lambda hits: len(hits) >= 1, within=30)
    rx.default = 200
    rx.hits.clear()
    started = time.perf_counter()
    rx.released.set()
    await rx.wait(lambda hits: len({h.id for h in hits}) >= count - HELD_BACK, within=120)
    drained = time.perf_counter() - started
    throughput = (count - HELD_BACK) / drained
    # latency: a steady rate of logins, each timed from send to receipt
    sent: dict[str, float] = {}
    got: dict[str, float] = {}

    def arrived(body: dict[str, Any]) -> int:
        got.setdefault(body["data"]["user"], time.perf_counter())
        return 0  # then the default answer (200)

    rx.answer = arrived
    acks: dict[str, float] = {}

    async def acked(user: str) -> None:
        await login(client, user)
        acks[user] = time.perf_counter()

    total = int(rate * seconds)
    tasks = []
    t0 = time.perf_counter()
    for i in range(total):
        user = f"l{stamp}-{i}"
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        sent[user] = time.perf_counter()
        tasks.append(asyncio.create_task(acked(user)))
    await asyncio.gather(*tasks)
    await rx.wait(lambda hits: all(u in got for u in sent), within=30)
    latencies = [(got[u] - sent[u]) * 1000 for u in sent]
    ack_ms = [(acks[u] - sent[u]) * 1000 for u in sent]
    return {
        "delivered_per_s": round(throughput),
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(_pct(latencies, 0.99), 2),
        "webhook_in_ack_ms_p50": round(statistics.median(ack_ms), 2),
        "latency_rate_per_s": rate,
        "messages": count,
    }


def webhooks_out(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Messages/s one process delivers to one endpoint, and webhook-in to webhook-out latency."""
    if target.name != "gateway":
        raise BenchError("the webhooks-out scenario runs the gateway only (no --vs / --target)")
    if args.backend == "redis":
        bench.start_redis()
    data = asyncio.run(_run(bench, args))
    bench.check_alive()
    res = Result(data=data)
    res.section(f"webhooks out: one endpoint, {args.users} queued logins, then {args.rate:g}/s")
    res.row("delivered / s (one process)", f"{data['delivered_per_s']:,}")
    res.row(
        "webhook in -> out p50 / p99",
        f"{ms(data['latency_ms_p50'])} / {ms(data['latency_ms_p99'])}",
    )
    res.row("webhook in acked p50", ms(data["webhook_in_ack_ms_p50"]))
    return res
