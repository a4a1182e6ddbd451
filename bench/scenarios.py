"""The scenarios: each sets up its servers and workers, measures, and returns a ``Result``."""

from __future__ import annotations

import argparse
import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.events import BATCH, Plan
from bench.hist import Histogram
from bench.procs import BenchError
from bench.runner import (
    RESULTS,
    Bench,
    Profile,
    Window,
    merge_hists,
    sleep_until_ns,
    split,
    watch_specs,
)
from bench.target import Server, Target, metrics
from bench.workers import Pool, Shared

QUIET_NS = 300_000_000  # a drain ends when all arrived and no state came for this long
GIVE_UP_NS = 3_000_000_000  # ... or when nothing came for this long (the rest is lost)
DRAIN_LIMIT_S = 20.0
RC_K0 = 1_000_000  # RongCloud events start here so they never collide with Tencent's


@dataclass
class Result:
    """A scenario's table lines and its JSON figures."""

    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def section(self, title: str) -> None:
        self.lines += ["", title]

    def row(self, label: str, value: object) -> None:
        self.lines.append(f"  {label:<34} {value}")


def ms(x: float) -> str:
    return f"{x:.2f} ms"


def mb(x: float) -> str:
    return f"{x:.1f} MB"


def _window_rows(res: Result, win: dict[str, Any], names: list[str]) -> None:
    for name, cpu, rss, peak in zip(
        names, win["server_cpu_pct"], win["server_rss_mb"], win["server_rss_peak_mb"], strict=True
    ):
        res.row(f"{name} CPU / RSS (peak)", f"{cpu:.0f}% / {mb(rss)} ({mb(peak)})")
    if win["redis_cpu_pct"]:
        res.row("redis CPU", f"{win['redis_cpu_pct']:.0f}%")
    if win["foreign_cpu_pct"] > 5:
        res.row("other processes on the machine", f"{win['foreign_cpu_pct']:.0f}% (!)")
    flag = "  << BOTTLENECK" if win["generator_bottleneck"] else ""
    res.row(
        "load generator CPU",
        f"{win['generator_cpu_pct']:.0f}% of {win['generator_capacity_pct']:.0f}% "
        f"(busiest process {win['generator_busiest_pct']:.0f}%){flag}",
    )


# ------------------------------------------------------------------------- shared steps


def profiler(
    args: argparse.Namespace, server: Server, seconds: float, label: str
) -> Profile | None:
    """py-spy on ``server`` for ``seconds`` when ``--profile`` is on (Python servers only)."""
    if not args.profile or not getattr(args, "python_target", True):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Profile(server.pid, seconds, RESULTS / f"profile-{label}-{stamp}.txt")


def _profile_rows(res: Result, prof: dict[str, Any] | None) -> None:
    if not prof:
        return
    if "error" in prof:
        res.row("profile", f"py-spy failed: {prof['error']}")
        return
    res.row("profile (py-spy)", f"on CPU {prof['on_cpu_pct']:.0f}% of the window; {prof['file']}")
    res.lines.append("    self time:")
    for name, pct in prof["self"][:10]:
        res.lines.append(f"      {pct:5.1f}%  {name}")
    res.lines.append("    inclusive (server code):")
    shown = 0
    top = max((pct for _, pct in prof["inclusive"]), default=0.0)
    for name, pct in prof["inclusive"]:
        if pct >= 0.98 * top or not any(m in name for m in _OURS):
            continue  # the root chain (main, uvicorn's run...) says nothing
        res.lines.append(f"      {pct:5.1f}%  {name}")
        shown += 1
        if shown == 14:
            break


# The server's code, its Redis client and web stack (the peers' too).
_OURS = ("gateway/", "redis/", "websockets/", "bench/peers/", "socketio/", "engineio/", "uvicorn/")


def start_servers(
    bench: Bench, args: argparse.Namespace, target: Target, count: int = 1, cluster: bool = False
) -> list[Server]:
    if cluster:
        bench.start_redis(masters=3)
    elif args.backend == "redis":
        bench.start_redis()
    return bench.start_servers(target, count)


def sender_pool(
    bench: Bench,
    args: argparse.Namespace,
    target: Target,
    server: Server,
    plan: Plan,
    shared: Shared | None,
    default: int,
) -> Pool:
    n = args.senders or default
    init = {
        "port": server.webhook_port,
        "path": target.webhook_path,
        "plan": plan,
        "shared": shared,
    }
    return bench.pool("sender", [dict(init) for _ in range(n)])


def watcher_pool(
    bench: Bench,
    args: argparse.Namespace,
    target: Target,
    server: Server,
    plan: Plan,
    shared: Shared | None,
    specs: list[tuple[int, list[int]]],
) -> Pool:
    n = args.watchers or max(2, len(bench.cores.generator))
    per = -(-len(specs) // n)
    if per > bench.nofile - 100:
        n = -(-len(specs) // (bench.nofile - 100))
    inits = [
        {
            "port": server.port,
            "path": target.ws_path,
            "dialect": target.dialect,
            "plan": plan,
            "shared": shared,
            "specs": part,
            "ping": not args.no_ping,
        }
        for part in split(specs, n)
    ]
    return bench.pool("watcher", inits)


def connect_all(
    bench: Bench, watchers: Pool, concurrency: int, timeout: float = 30.0
) -> dict[str, Any]:
    """Open every watcher connection; setup rate = connections / wall time of the whole setup."""
    per = max(1, concurrency // len(watchers.procs))
    window = Window(bench).start()
    reps = watchers.call("connect", concurrency=per, limit_s=timeout, wait=timeout + 600)
    win = window.stop()
    ok = sum(r["ok"] for r in reps)
    failed: Counter[str] = Counter()
    for r in reps:
        failed.update(r["failed"])
    seconds = (max(r["last_ready_ns"] for r in reps) - min(r["started_ns"] for r in reps)) / 1e9
    return {
        "connected": ok,
        "failed": dict(failed),
        "seconds": round(seconds, 3),
        "per_second": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "window": win,
    }


def wait_drained(watchers: Pool, last_send_ns: int, k_lo: int, k_hi: int) -> tuple[int, bool]:
    """Wait until every acked event reached its watchers (or was superseded) and no state
    arrived for QUIET_NS, or until nothing arrived for GIVE_UP_NS (what is missing then is
    lost); (newest arrival ns, whether it drained within DRAIN_LIMIT_S).

    Silence alone is not enough: a server that blocks its event loop for a while (a
    synchronous fan-out of a whole batch, a full GC) sends nothing for hundreds of ms and
    then goes on.
    """
    deadline = time.monotonic() + DRAIN_LIMIT_S
    while True:
        time.sleep(0.1)
        newest = max(watchers.call("quiet"))
        idle = time.monotonic_ns() - max(newest, last_send_ns)
        if idle >= QUIET_NS and (
            idle >= GIVE_UP_NS or sum(watchers.call("missing", k_lo=k_lo, k_hi=k_hi)) == 0
        ):
            return newest, True
        if time.monotonic() > deadline:
            return newest, False


def deliver(
    bench: Bench,
    senders: Pool,
    watchers: Pool,
    k0: int,
    rate: float,
    seconds: float,
    http_conns: int,
    profile: Callable[[], Profile | None] | None = None,
    provider: str = "tencent",
) -> dict[str, Any]:
    """Send ``rate`` events/s for ``seconds`` (open loop) and measure every delivery.

    ``provider`` ``tencent``: one single-event request per event; ``rongcloud``: one request
    per ``BATCH`` events (at least two batches: the step lasts longer at low rates).
    """
    if provider == "tencent":
        per = 1
        count = max(1, int(rate * seconds))
    else:
        per = BATCH
        count = max(2, -(-int(rate * seconds) // BATCH)) * BATCH
    n = len(senders.procs)
    watchers.call("reset", k_lo=k0, k_mid=k0 + count // 2)
    t0 = time.monotonic_ns() + 300_000_000
    each = [
        {
            "k0": k0,
            "count": count,
            "stride": n,
            "offset": i,
            "rate": rate,
            "t0_ns": t0,
            "conns": max(1, http_conns // n),
            "provider": provider,
        }
        for i in range(n)
    ]
    senders.send("open_loop", each)
    sleep_until_ns(t0)
    window = Window(bench).start()
    prof = profile() if profile else None
    sent = senders.gather(wait=count / rate + 90)
    last_send = max(r["last_send_ns"] for r in sent)
    win = window.stop()
    newest, quiet = wait_drained(watchers, last_send, k0, k0 + count)
    reps = watchers.call("report", k_lo=k0, k_hi=k0 + count)
    bench.check_alive()
    summary = prof.summary() if prof else None

    codes: Counter[int] = Counter()
    for r in sent:
        codes.update(r["codes"])
    acked = sum(c for code, c in codes.items() if 200 <= code < 300)
    hist_a = merge_hists([r["hist_a"] for r in reps])
    hist_b = merge_hists([r["hist_b"] for r in reps])
    latency = Histogram()
    latency.merge(hist_a)
    latency.merge(hist_b)
    expected = sum(r["expected"] for r in reps)
    lost = sum(r["lost"] for r in reps)
    exact = sum(r["exact"] for r in reps)
    # The sending window: up to the last request, plus the share of time that request's
    # events stand for (a batch of 100 at 50 events/s is 2 s of events).
    send_s = max((last_send - t0) / 1e9 + per / rate, 1e-9)
    closes: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for r in reps:
        closes.update(r["closes"])
        errors.update(r["errors"])
    return {
        "provider": provider,
        "events_per_request": per,
        "rate": rate,
        "seconds": round(count / rate, 2),
        "events": count,
        "acked": acked,
        "webhook_errors": {str(c): n for c, n in codes.items() if not 200 <= c < 300},
        "achieved_rate": round(count / send_s, 1),
        "max_send_lag_ms": round(max(r["max_lag_ms"] for r in sent), 2),
        "late_sends": sum(r["late"] for r in sent),
        "sender_starved": sum(r["starved"] for r in sent),
        "webhook_ms": merge_hists([r["hist"] for r in sent]).summary_ms(),
        "expected": expected,
        "delivered": exact,
        "superseded": expected - exact - lost,
        "lost": lost,
        "lost_examples": [e for r in reps for e in r["lost_examples"]][:5],
        "stale": sum(r["stale"] for r in reps),
        "unmatched": sum(r["unmatched"] for r in reps),
        "v_regressions": sum(r["regress"] for r in reps),
        "resync_states": sum(r["resync_states"] for r in reps),
        "earlier_step_states": sum(r["earlier"] for r in reps),
        "deliveries_per_s": round((expected - lost) / send_s, 1),
        # What actually went out per second, from the first send to the last arrival: when
        # the server fell behind, its real throughput.
        "delivered_per_s_wall": round((expected - lost) / max((newest - t0) / 1e9, send_s), 1),
        "latency_ms": latency.summary_ms(),
        "latency_first_half_ms": hist_a.summary_ms(),
        "latency_second_half_ms": hist_b.summary_ms(),
        "drain_ms": round(max(newest - last_send, 0) / 1e6, 1),
        "drained": quiet,
        "closes": {str(c): n for c, n in closes.items()},
        "client_errors": dict(errors),
        "open_connections": sum(r["open"] for r in reps),
        "window": win,
        "profile": summary,
    }


def _delivery_rows(res: Result, d: dict[str, Any]) -> None:
    lat = d["latency_ms"]
    how = "" if d["events_per_request"] == 1 else f" in {d['events_per_request']}-event batches"
    res.row(
        "events sent (target rate)",
        f"{d['events']}{how} ({d['rate']:g}/s, "
        f"achieved {d['achieved_rate']:g}/s, max send lag {d['max_send_lag_ms']} ms)",
    )
    res.row("webhook errors", d["webhook_errors"] or 0)
    wh = d["webhook_ms"]
    res.row("webhook request p50 / p99", f"{ms(wh['p50'])} / {ms(wh['p99'])}")
    res.row("end-to-end p50 / p90 / p99", f"{ms(lat['p50'])} / {ms(lat['p90'])} / {ms(lat['p99'])}")
    res.row("end-to-end p99.9 / max", f"{ms(lat['p999'])} / {ms(lat['max'])}")
    res.row("deliveries expected", d["expected"])
    res.row("  received exactly", d["delivered"])
    res.row("  superseded (coalesced)", d["superseded"])
    res.row("  LOST", d["lost"])
    res.row("deliveries / s", f"{d['deliveries_per_s']:,.0f}")
    res.row("drain after last send", f"{d['drain_ms']} ms" + ("" if d["drained"] else " (!)"))
    if d["v_regressions"] or d["stale"] or d["unmatched"]:
        res.row(
            "v regressions / stale / unmatched",
            f"{d['v_regressions']} / {d['stale']} / {d['unmatched']}",
        )
    if d["earlier_step_states"]:
        res.row("states of earlier steps (late)", d["earlier_step_states"])
    if d["closes"] or d["client_errors"]:
        res.row("closes / client errors", f"{d['closes']} / {d['client_errors']}")
    for example in d["lost_examples"]:
        res.row("  lost e.g.", example)


def _setup_rows(res: Result, setup: dict[str, Any]) -> None:
    res.row(
        "connections ready",
        f"{setup['connected']} in {setup['seconds']:.2f} s "
        f"= {setup['per_second']:,.0f}/s (hello..snapshot)",
    )
    if setup["failed"]:
        res.row("connection failures", setup["failed"])
    win = setup["window"]
    flag = "  << BOTTLENECK" if win["generator_bottleneck"] else ""
    res.row(
        "  during setup: server / gen CPU",
        f"{'+'.join(f'{p:.0f}%' for p in win['server_cpu_pct'])} / "
        f"{win['generator_cpu_pct']:.0f}%{flag}",
    )


# ------------------------------------------------------------------------------ ingest


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
        _window_rows(res, win, [server.name])
        _profile_rows(res, profile)
    res.data = {"phases": phases}
    return res


# ---------------------------------------------------------------------------- latency


def _watch_run(
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
    _setup_rows(res, setup)
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
    _delivery_rows(res, d)
    _window_rows(res, d["window"], [s.name for s in servers])
    pause = gc_pause_ms(servers[-1])
    if pause is not None:
        res.row("longest GC pause so far", f"{pause:.1f} ms (server's /metrics)")
    _profile_rows(res, d["profile"])
    res.data = {"setup": setup, "delivery": d, "gc_pause_max_ms": pause}
    return res


def gc_pause_ms(server: Server) -> float | None:
    """The longest GC pause the server reports (the peers do), in ms; None if it does not."""
    value = metrics(server.webhook_port).get("bench_gc_pause_max_seconds")
    return None if value is None else round(1000 * value, 1)


def latency(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """End-to-end latency and loss at a moderate, steady event rate."""
    servers = start_servers(bench, args, target)
    return _watch_run(bench, args, target, servers, "latency")


def cluster(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Two gateway processes on a 3-master Redis Cluster: webhooks to A, watchers on B."""
    servers = start_servers(bench, args, target, count=2, cluster=True)
    return _watch_run(bench, args, target, servers, "cluster (webhooks -> A, watchers on B)")


# ----------------------------------------------------------------------------- fanout


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
    _setup_rows(res, setup)
    res.lines.append(
        f"  {'events/s':>9} {'deliv/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'lost':>6} {'CPU srv':>7} {'CPU gen':>8} {'other':>6}  verdict"
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
        _window_rows(res, best["window"], [server.name])
        _profile_rows(res, best["profile"])
    else:
        res.section("result: no step passed")
        if steps:
            _profile_rows(res, steps[-1]["profile"])
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


# ------------------------------------------------------------------------------ conns


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
    setup = connect_all(bench, watchers, args.connect_concurrency, timeout=60)
    time.sleep(2.0)
    after = _settled_rss(server.pid)
    per_conn = (after - before) / max(setup["connected"], 1)
    res.section(f"conns: {n} idle connections x {watch} watched of {users} users")
    _setup_rows(res, setup)
    res.row(f"{server.name} RSS before / after", f"{mb(before / 2**20)} / {mb(after / 2**20)}")
    res.row("RSS per connection", f"{per_conn / 1024:.1f} KB")
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
    res.section(f"liveness at {n} connections: {args.rate:g} events/s for 3 s")
    _delivery_rows(res, live)
    _window_rows(res, live["window"], [server.name])
    res.data = {
        "connections": setup["connected"],
        "setup": setup,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_per_conn_kb": round(per_conn / 1024, 2),
        "idle_cpu_pct": idle["server_cpu_pct"][0],
        "still_open": still_open,
        "gc": gc or None,
        "liveness": live,
    }
    return res


def _settled_rss(pid: int) -> int:
    """RSS once it stopped moving (three readings 0.2 s apart within 1 %), at most 3 s."""
    from bench.procs import rss_bytes

    readings = [rss_bytes(pid)]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.2)
        readings.append(rss_bytes(pid))
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
            break
    return readings[-1]


def heal(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Reconciliation heals dropped webhooks (bench/heal.py; imported late, it uses Result)."""
    from bench.heal import heal as run_heal

    return run_heal(bench, args, target)


SCENARIOS: dict[str, Callable[[Bench, argparse.Namespace, Target], Result]] = {
    "ingest": ingest,
    "latency": latency,
    "fanout": fanout,
    "conns": conns,
    "cluster": cluster,
    "heal": heal,
}

# Per-scenario defaults for options left unset on the command line.
DEFAULTS: dict[str, dict[str, Any]] = {
    "ingest": {"duration": 20.0, "users": 10_000, "providers": "tencent,rongcloud"},
    "latency": {"duration": 30.0, "users": 5000, "conns": 2000, "watch": 20, "rate": 200.0},
    # fanout's first rate: 40 events/s in batches, 20 with --providers tencent
    "fanout": {
        "duration": 80.0,
        "users": 1000,
        "conns": 5000,
        "watch": 50,
        "providers": "rongcloud",
    },
    "conns": {"duration": 10.0, "users": 5000, "conns": 20_000, "watch": 10, "rate": 20.0},
    "cluster": {"duration": 30.0, "users": 5000, "conns": 2000, "watch": 20, "rate": 200.0},
    # heal: --duration is the sending, --rate webhooks/s (each to both apps)
    "heal": {"duration": 40.0, "users": 2000, "rate": 100.0},
}
