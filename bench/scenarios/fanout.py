"""``python -m bench fanout``: the highest deliveries/s with 0 lost and no queueing."""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

from bench.events import BATCH, Plan
from bench.procs import BenchError
from bench.runner import Bench, watch_specs
from bench.scenarios.common import (
    Result,
    connect_all,
    cost_rows,
    deliver,
    ms,
    profile_rows,
    profiler,
    sender_pool,
    setup_rows,
    start_servers,
    watcher_pool,
    window_rows,
)
from bench.target import Target
from bench.workers import Shared


def _step_verdict(d: dict[str, Any], max_p99_ms: float) -> str:
    """'ok', or why this rate is past what the server sustains.

    With batches, a burst of ``BATCH`` events reaches ~25,000 watchers at once, so the last
    delivery of a batch comes as late as the fan-out of the whole batch takes: the p99 bound
    is then the interval between batches (the fan-out of one batch must end before the next
    is due), or ``max_p99_ms`` if that is longer.
    """
    if d["lost"]:
        return f"lost {d['lost']}"
    if d["webhook_errors"]:
        return "webhook errors"
    if d["closes"]:
        return f"closes {d['closes']}"
    if d["achieved_rate"] < 0.97 * d["rate"]:
        return "webhooks could not keep the rate"
    if not d["drained"]:
        return "did not drain"
    p99 = d["latency_ms"]["p99"]
    bound = max(max_p99_ms, 1000 * d["events_per_request"] / d["rate"])
    if p99 > bound:
        return f"p99 {p99:.0f} ms > {bound:g}"
    a, b = d["latency_first_half_ms"]["p50"], d["latency_second_half_ms"]["p50"]
    if b > 2 * a + 2:
        return f"queueing (p50 {a:.1f} -> {b:.1f} ms)"
    return "ok"


def fanout(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Raise the event rate step by step; the highest deliveries/s with 0 lost and no queueing.

    Events come in RongCloud 100-event batches by default (``--providers rongcloud``): states
    that arrive together are what lets a server coalesce what is pending for a connection into
    one send. ``--providers tencent`` sends single events instead.
    """
    res = Result()
    provider = args.providers.split(",")[0]
    if provider not in ("tencent", "rongcloud"):
        raise BenchError(f"fanout: --providers must be tencent or rongcloud, not {provider}")
    (server,) = start_servers(bench, args, target)
    users, conns, watch = args.users, args.conns, args.watch
    per_event = conns * watch / users
    plan = Plan(base_ms=time.time_ns() // 1_000_000, users=users)
    budget_end = time.monotonic() + args.duration
    explicit = [float(r) for r in args.rates.split(",")] if args.rates else []
    first_rate = args.rate or 20.0
    max_rate = max(explicit, default=first_rate * 2**8)
    steps_max = len(explicit) or 16
    shared = Shared.create(int(max_rate * args.step_seconds * steps_max) + 10_000 + 2 * BATCH * 16)
    specs = watch_specs(conns, watch, users, args.seed)
    watchers = watcher_pool(bench, args, target, server, plan, shared, specs)
    senders = sender_pool(bench, args, target, server, plan, shared, 1)
    setup = connect_all(bench, watchers, args.connect_concurrency)
    how = "Tencent single events" if provider == "tencent" else f"RongCloud {BATCH}-event batches"
    res.section(
        f"fanout: {conns} connections x {watch} watched of {users} users "
        f"(~{per_event:.0f} watchers per event), {how}, {args.step_seconds:g} s steps"
    )
    setup_rows(res, setup)
    res.lines.append(
        f"  {'events/s':>9} {'deliv/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'lost':>6} {'CPU srv':>7} {'µs/del':>7} {'CPU gen':>8} {'other':>6}  "
        "verdict"
    )
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    failed_rate: float | None = None
    rate = explicit[0] if explicit else first_rate
    k0 = 0

    def step_cost(rate: float) -> float:
        """Seconds a step at ``rate`` takes, drain and bookkeeping included."""
        seconds = float(args.step_seconds)
        if provider == "tencent":
            return seconds + 3
        return max(seconds, 2 * BATCH / rate) + 3

    while True:
        if k0 + int(rate * step_cost(rate)) + 2 * BATCH > shared.capacity:
            break
        d = deliver(
            bench,
            senders,
            watchers,
            k0,
            rate,
            args.step_seconds,
            args.http_conns,
            functools.partial(profiler, args, server, args.step_seconds, f"fanout-{rate:g}"),
            provider,
        )
        k0 += d["events"]
        d["verdict"] = _step_verdict(d, args.max_p99_ms)
        steps.append(d)
        win = d["window"]
        lat = d["latency_ms"]
        res.lines.append(
            f"  {rate:>9.0f} {d['deliveries_per_s']:>9,.0f} {lat['p50']:>8.2f} {lat['p99']:>8.2f} "
            f"{lat['max']:>8.1f} {d['lost']:>6} {win['server_cpu_pct'][0]:>6.0f}% "
            f"{d['cpu_us']['server_per_delivery'] or 0:>7.2f} "
            f"{win['generator_cpu_pct']:>7.0f}% {win['foreign_cpu_pct']:>5.0f}%  {d['verdict']}"
        )
        if d["verdict"] == "ok":
            if best is None or d["deliveries_per_s"] > best["deliveries_per_s"]:
                best = d
        else:
            failed_rate = rate if failed_rate is None else min(failed_rate, rate)
        if explicit:
            if len(steps) >= len(explicit):
                break
            rate = explicit[len(steps)]
            if time.monotonic() + step_cost(rate) > budget_end:
                break
            continue
        if failed_rate is None:
            rate *= 2
        else:
            low = best["rate"] if best else 0.0
            if failed_rate - low <= max(0.08 * failed_rate, 1.0):
                break
            rate = round((low + failed_rate) / 2, 1)
            if best is None:
                # Nothing passed yet: go straight below what the server really pushed while
                # it was behind, instead of halving from far above.
                pushed = 0.9 * d["delivered_per_s_wall"] / per_event
                rate = round(max(min(rate, pushed), 1.0), 1)
        if time.monotonic() + step_cost(rate) > budget_end:
            break
    generator_bound = False
    unbounded = best is not None and failed_rate is None
    if unbounded:
        bench.warnings.append(
            "fanout found no limit: every step passed before the time budget (--duration) "
            "ended, so the max deliveries/s is a lower bound"
        )
    if best is not None:
        # In bursts the server's sending and the generator's reading overlap, so the time one
        # batch takes to arrive is set by whichever spends more CPU on it. If at the first
        # failing rate above the best that was the generator, the figure is a lower bound.
        above = [d for d in steps if d["verdict"] != "ok" and d["rate"] > best["rate"]]
        if above and provider == "rongcloud":
            win = min(above, key=lambda d: d["rate"])["window"]
            if win["generator_cpu_pct"] >= max(win["server_cpu_pct"]):
                generator_bound = True
                bench.warnings.append(
                    "fanout is GENERATOR-BOUND: at the first failing rate the load generator "
                    f"spent as much CPU per batch as the server ({win['generator_cpu_pct']:.0f}% "
                    f"vs {max(win['server_cpu_pct']):.0f}%), so reading the bursts limited "
                    "the step as much as sending them; the max deliveries/s is a lower bound"
                )
        res.section("result")
        res.row(
            "max deliveries / s with 0 lost",
            f"{best['deliveries_per_s']:,.0f} (at {best['rate']:g} events/s)"
            + (" (a lower bound: generator-bound)" if generator_bound else "")
            + (" (a lower bound: no step failed)" if unbounded else ""),
        )
        lat = best["latency_ms"]
        res.row("  latency p50 / p99 there", f"{ms(lat['p50'])} / {ms(lat['p99'])}")
        wh = best["webhook_ms"]
        res.row("  webhook request p50 / p99 there", f"{ms(wh['p50'])} / {ms(wh['p99'])}")
        cost_rows(res, best["cpu_us"], provider != "tencent", True)
        window_rows(res, best["window"], [server.name])
        profile_rows(res, best["profile"])
    else:
        res.section("result: no step passed")
        if steps:
            profile_rows(res, steps[-1]["profile"])
    for d in steps:
        for example in d["lost_examples"][:2]:
            res.row(f"  lost at {d['rate']:g}/s e.g.", example)
    res.data = {
        "setup": setup,
        "provider": provider,
        "watchers_per_event": round(per_event, 1),
        "max_deliveries_per_s": best["deliveries_per_s"] if best else 0,
        "max_rate": best["rate"] if best else 0,
        "generator_bound": generator_bound,
        "no_step_failed": unbounded,
        "steps": steps,
    }
    return res
