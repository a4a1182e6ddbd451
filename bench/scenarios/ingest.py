"""``python -m bench ingest``: webhook events/s one process applies (closed loop)."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from bench.events import Plan
from bench.runner import Bench, Window, merge_hists, sleep_until_ns
from bench.scenarios.common import (
    Result,
    cost_rows,
    cpu_costs,
    ms,
    profile_rows,
    profiler,
    sender_pool,
    start_servers,
    window_rows,
)
from bench.target import Target, metrics

RC_K0 = 1_000_000  # RongCloud events start here so they never collide with Tencent's


def ingest(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Webhook events/s applied by one process: Tencent singles, then RongCloud batches."""
    res = Result()
    (server,) = start_servers(bench, args, target)
    plan = Plan(base_ms=time.time_ns() // 1_000_000, users=args.users or 10_000)
    senders = sender_pool(
        bench, args, target, server, plan, None, max(1, len(bench.cores.generator))
    )
    n = len(senders.procs)
    phases = []
    for provider in args.providers.split(","):
        conns = args.http_conns if provider == "tencent" else max(n, args.http_conns // 4)
        first = 0 if provider == "tencent" else RC_K0
        t_start = time.monotonic_ns() + 300_000_000
        t_measure = t_start + int(args.warmup * 1e9)
        t_end = t_measure + int(args.duration * 1e9)
        each = [
            {
                "provider": provider,
                "conns": max(1, conns // n),
                "stride": n,
                "offset": i,
                "first": first,
                "t_start_ns": t_start,
                "t_measure_ns": t_measure,
                "t_end_ns": t_end,
                "client": args.http_client,
            }
            for i in range(n)
        ]
        senders.send("closed_loop", each)
        sleep_until_ns(t_measure)
        m0 = metrics(server.webhook_port)
        window = Window(bench).start()
        prof = profiler(args, server, args.duration, f"ingest-{provider}")
        sleep_until_ns(t_end)
        win = window.stop()
        m1 = metrics(server.webhook_port)
        reps = senders.gather(wait=args.duration + 60)
        profile = prof.summary() if prof else None
        bench.check_alive()
        codes: Counter[int] = Counter()
        for r in reps:
            codes.update(r["codes"])
        ok = sum(c for code, c in codes.items() if 200 <= code < 300)
        requests = sum(codes.values())
        per = reps[0]["events_per_request"]
        hist = merge_hists([r["hist"] for r in reps])
        applied = m1.get("presence_events_applied_total", 0) - m0.get(
            "presence_events_applied_total", 0
        )
        phase = {
            "provider": provider,
            "events_per_request": per,
            "connections": max(1, conns // n) * n,
            "client": args.http_client,
            "seconds": args.duration,
            "requests": requests,
            "requests_per_s": round(requests / args.duration, 1),
            "events_per_s": round(ok * per / args.duration, 1),
            "applied_per_s": round(applied / args.duration, 1) if m0 else None,
            "errors": requests - ok,
            "error_codes": {str(c): k for c, k in codes.items() if not 200 <= c < 300},
            "request_ms": hist.summary_ms(),
            # closed loop: the window is the measured interval, no drain to wait for
            "cpu_us": cpu_costs(win, 0, requests, ok * per, bench.redis is not None),
            "window": win,
            "profile": profile,
        }
        phases.append(phase)
        title = (
            "Tencent single events" if provider == "tencent" else f"RongCloud {per}-event batches"
        )
        res.section(
            f"{title}: {phase['connections']} keep-alive connections, "
            f"{args.http_client} client, {args.duration:g} s"
        )
        res.row("requests / s", f"{phase['requests_per_s']:,.0f}")
        res.row("events / s (acked)", f"{phase['events_per_s']:,.0f}")
        if phase["applied_per_s"] is not None:
            res.row("events / s applied (gateway metric)", f"{phase['applied_per_s']:,.0f}")
        lat = phase["request_ms"]
        res.row(
            "request p50 / p99 / max", f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])}"
        )
        res.row("errors (non-2xx)", f"{phase['errors']} {phase['error_codes'] or ''}".strip())
        cost_rows(res, phase["cpu_us"], per > 1, False)
        window_rows(res, win, [server.name])
        profile_rows(res, profile)
    res.data = {"phases": phases}
    return res
