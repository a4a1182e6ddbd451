"""Webhooks out, measured: ``python -m bench.webhooks_out [--backend memory|redis]``.

One gateway process (memory, or a redis-server of its own on a free loopback port) with one
endpoint: a loopback receiver in this process that verifies every signature (the
``standardwebhooks`` package, as a real backend would). Two phases, ~15 s in all:

- throughput: N logins are queued while the receiver holds its requests; once released,
  how many messages per second the one process delivers;
- latency: logins at a steady modest rate; from the webhook in being sent to its webhook
  out being received, p50/p99.

Prints one JSON line. Not wired into ``python -m bench`` (a standalone scenario for now).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.nodes import Node
from tests.receiver import STALL, config_text, receiving, tencent
from tests.servers import RedisServer


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(backend: str, count: int, rate: float, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = RedisServer(tmp_path / "redis") if backend == "redis" else None
        if server is not None:
            await server.astart()
        try:
            async with receiving() as rx:
                text = config_text(
                    [rx.url],
                    redis_url=server.url if server else None,
                    timeout_s=60,
                    events='["user.online", "user.offline"]',
                )
                (tmp_path / "gw.toml").write_text(text)
                node = Node(tmp_path / "gw.toml", tmp_path / "gw.log")
                await node.start()
                try:
                    return await _measure(node, rx, count, rate, seconds)
                finally:
                    node.stop()
        finally:
            if server is not None:
                server.stop()


async def _measure(
    node: Node, rx: object, count: int, rate: float, seconds: float
) -> dict[str, object]:
    from tests.receiver import Receiver

    assert isinstance(rx, Receiver)
    stamp = time.time_ns()
    # throughput: hold the first requests, queue `count` changes, release, time the drain
    rx.default = STALL
    sem = asyncio.Semaphore(32)

    async def login(user: str) -> None:
        async with sem:
            await tencent(node.url, "nodes", user, "Login", client=client)

    client = httpx.AsyncClient(base_url=node.url, limits=httpx.Limits(max_connections=64))
    await asyncio.gather(*(login(f"t{stamp}-{i}") for i in range(count)))
    await rx.wait(lambda hits: len(hits) >= 1, within=30)
    rx.default = 200
    rx.hits.clear()
    started = time.perf_counter()
    rx.released.set()
    await rx.wait(lambda hits: len({h.id for h in hits}) >= count - 40, within=120)
    drained = time.perf_counter() - started
    throughput = (count - 40) / drained
    # latency: a steady rate of logins, each timed from send to receipt
    sent: dict[str, float] = {}
    got: dict[str, float] = {}

    def arrived(body: dict[str, Any]) -> int:
        got.setdefault(body["data"]["user"], time.perf_counter())
        return 0  # then the default answer (200)

    rx.answer = arrived
    acks: dict[str, float] = {}

    async def acked(user: str) -> None:
        await tencent(node.url, "nodes", user, "Login", client=client)
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
        "scenario": "webhooks_out",
        "nproc": os.cpu_count(),
        "delivered_per_s": round(throughput),
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(_pct(latencies, 0.99), 2),
        "webhook_in_ack_ms_p50": round(statistics.median(ack_ms), 2),
        "latency_rate_per_s": rate,
        "messages": count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["memory", "redis"], default="redis")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.backend, args.count, args.rate, args.seconds))
    result["backend"] = args.backend
    print(json.dumps(result))


if __name__ == "__main__":
    main()
