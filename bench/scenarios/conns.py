"""``python -m bench conns``: idle connections: RSS per connection, setup rate, idle CPU."""

from __future__ import annotations

import argparse
import time

from bench.events import Plan
from bench.runner import Bench, Window, watch_specs
from bench.scenarios.common import (
    Result,
    connect_all,
    deliver,
    delivery_rows,
    gc_pause_ms,
    mb,
    sender_pool,
    setup_rows,
    start_servers,
    watcher_pool,
    window_rows,
)
from bench.target import Target, metrics
from bench.workers import Shared


def conns(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Idle connections: RSS per connection, setup rate, idle CPU, and a liveness check."""
    res = Result()
    (server,) = start_servers(bench, args, target)
    wanted = args.conns
    limit = bench.nofile - 300  # the server process holds one fd per connection
    n = min(wanted, limit)
    if n < wanted:
        bench.warnings.append(
            f"conns: {wanted} connections need more open files than the hard limit "
            f"{bench.nofile} allows one process; measured {n}"
        )
    users, watch = args.users, args.watch
    plan = Plan(base_ms=time.time_ns() // 1_000_000, users=users)
    shared = Shared.create(100_000)
    warm_specs = watch_specs(20, watch, users, args.seed + 1, first=10**7)
    warm = watcher_pool(
        bench,
        argparse.Namespace(**{**vars(args), "watchers": 1}),
        target,
        server,
        plan,
        shared,
        warm_specs,
    )
    connect_all(bench, warm, 20)
    time.sleep(1.0)
    before = _settled_rss(server.pid)
    specs = watch_specs(n, watch, users, args.seed)
    watchers = watcher_pool(bench, args, target, server, plan, shared, specs)
    pause_before = gc_pause_ms(server)
    setup = connect_all(bench, watchers, args.connect_concurrency, timeout=60)
    # Read right after the setup: the longest pause so far, while the connections were being
    # set up (or before, when it equals the reading before the setup).
    pause_setup = gc_pause_ms(server)
    time.sleep(2.0)
    after = _settled_rss(server.pid)
    per_conn = (after - before) / max(setup["connected"], 1)
    res.section(f"conns: {n} idle connections x {watch} watched of {users} users")
    setup_rows(res, setup)
    res.row(f"{server.name} RSS before / after", f"{mb(before / 2**20)} / {mb(after / 2**20)}")
    res.row("RSS per connection", f"{per_conn / 1024:.1f} KB")
    res.row(
        "longest GC pause during setup",
        "not exposed by the server"
        if pause_setup is None
        else f"{pause_setup:.1f} ms (longest since start, read right after the setup; "
        f"before it: {pause_before if pause_before is not None else '-'} ms)",
    )
    window = Window(bench).start()
    time.sleep(args.duration)
    idle = window.stop()
    still_open = sum(watchers.call("count_open"))
    res.row(
        f"idle {args.duration:g} s: {server.name} CPU",
        f"{idle['server_cpu_pct'][0]:.1f}% (app pings {'on' if not args.no_ping else 'off'})",
    )
    res.row("connections still open", f"{still_open} of {setup['connected']}")
    gc = {
        k: v
        for k, v in metrics(server.webhook_port).items()
        if "gc" in k and not k.endswith("_bucket")
    }
    res.row("GC pauses", gc or "not exposed by the server (skipped)")
    senders = sender_pool(bench, args, target, server, plan, shared, 1)
    live = deliver(bench, senders, watchers, 0, args.rate, 3.0, args.http_conns)
    pause_end = gc_pause_ms(server)  # the whole run's, liveness check included
    res.section(f"liveness at {n} connections: {args.rate:g} events/s for 3 s")
    delivery_rows(res, live)
    window_rows(res, live["window"], [server.name])
    res.row("longest GC pause, whole run", "-" if pause_end is None else f"{pause_end:.1f} ms")
    res.data = {
        "connections": setup["connected"],
        "setup": setup,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_per_conn_kb": round(per_conn / 1024, 2),
        "idle_cpu_pct": idle["server_cpu_pct"][0],
        "still_open": still_open,
        "gc": gc or None,
        "gc_pause_before_setup_ms": pause_before,
        "gc_pause_setup_ms": pause_setup,
        "gc_pause_max_ms": pause_end,
        "liveness": live,
    }
    return res


def _settled_rss(pid: int) -> int:
    """RSS (with the worker processes of ``--workers N``) once it stopped moving (three
    readings 0.2 s apart within 1 %), at most 3 s."""
    from bench.procs import tree_rss_bytes as rss_bytes

    readings = [rss_bytes(pid)]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.2)
        readings.append(rss_bytes(pid))
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
            break
    return readings[-1]
