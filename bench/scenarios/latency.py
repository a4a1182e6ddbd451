"""``python -m bench latency``: end-to-end latency and loss at a moderate, steady rate."""

from __future__ import annotations

import argparse
import time

from bench.events import Plan
from bench.runner import Bench, watch_specs
from bench.scenarios.common import (
    Result,
    connect_all,
    deliver,
    delivery_rows,
    gc_pause_ms,
    profile_rows,
    profiler,
    sender_pool,
    setup_rows,
    start_servers,
    watcher_pool,
    window_rows,
)
from bench.target import Server, Target
from bench.workers import Shared


def watch_run(
    bench: Bench, args: argparse.Namespace, target: Target, servers: list[Server], title: str
) -> Result:
    """Watchers on the last server, webhooks to the first; one open-loop delivery step."""
    res = Result()
    users, conns, watch, rate = args.users, args.conns, args.watch, args.rate
    plan = Plan(base_ms=time.time_ns() // 1_000_000, users=users)
    shared = Shared.create(int(rate * args.duration) + 1000)
    specs = watch_specs(conns, watch, users, args.seed)
    watchers = watcher_pool(bench, args, target, servers[-1], plan, shared, specs)
    senders = sender_pool(bench, args, target, servers[0], plan, shared, 1)
    setup = connect_all(bench, watchers, args.connect_concurrency)
    res.section(
        f"{title}: {conns} connections x {watch} watched of {users} users "
        f"(~{conns * watch / users:.0f} watchers per event), {rate:g} events/s, "
        f"{args.duration:g} s"
    )
    setup_rows(res, setup)
    d = deliver(
        bench,
        senders,
        watchers,
        0,
        rate,
        args.duration,
        args.http_conns,
        lambda: profiler(args, servers[-1], args.duration, args.scenario),
    )
    delivery_rows(res, d)
    window_rows(res, d["window"], [s.name for s in servers])
    pause = gc_pause_ms(servers[-1])
    if pause is not None:
        res.row("longest GC pause so far", f"{pause:.1f} ms (server's /metrics)")
    profile_rows(res, d["profile"])
    res.data = {"setup": setup, "delivery": d, "gc_pause_max_ms": pause}
    return res


def latency(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """End-to-end latency and loss at a moderate, steady event rate."""
    servers = start_servers(bench, args, target)
    return watch_run(bench, args, target, servers, "latency")
