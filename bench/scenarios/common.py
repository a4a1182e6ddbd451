"""What the scenarios share: ``Result`` (table lines and JSON figures), starting the servers
and the worker pools, connecting the watchers, one open-loop delivery step and its drain, and
the table rows every scenario prints."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.events import BATCH, Plan
from bench.hist import Histogram
from bench.runner import RESULTS, Bench, Profile, Window, merge_hists, sleep_until_ns, split
from bench.target import Server, Target, metrics
from bench.workers import Pool, Shared

QUIET_NS = 300_000_000  # a drain ends when all arrived and no state came for this long
GIVE_UP_NS = 3_000_000_000  # ... or when nothing came for this long (the rest is lost)
DRAIN_LIMIT_S = 20.0


@dataclass
class Result:
    """A scenario's table lines and its JSON figures."""

    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def section(self, title: str) -> None:
        self.lines += ["", title]

    def row(self, label: str, value: object) -> None:
        self.lines.append(f"  {label:<40} {value}")


def ms(x: float) -> str:
    return f"{x:.2f} ms"


def mb(x: float) -> str:
    return f"{x:.1f} MB"


def per_us(seconds: float | None, count: float) -> float | None:
    """``seconds`` of CPU per item in µs (None: nothing to divide or not measured)."""
    if seconds is None or count <= 0:
        return None
    return round(1e6 * seconds / count, 2)


def cpu_costs(
    cpu: dict[str, float], deliveries: float, webhooks: float, events: float, redis: bool
) -> dict[str, float | None]:
    """Server (whole process tree) and Redis CPU µs per delivery, per webhook, per event.

    All of the server's CPU over the window is divided by each count in turn: it is one cost
    (webhooks in, fan-out out) seen per unit, not a split. Redis: None without Redis.
    """
    srv, rds = cpu["server_cpu_s"], cpu["redis_cpu_s"] if redis else None
    return {
        "server_per_delivery": per_us(srv, deliveries),
        "server_per_webhook": per_us(srv, webhooks),
        "server_per_event": per_us(srv, events),
        "redis_per_delivery": per_us(rds, deliveries),
        "redis_per_webhook": per_us(rds, webhooks),
        "redis_per_event": per_us(rds, events),
    }


def us(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} µs"


def cost_rows(res: Result, c: dict[str, float | None], batch: bool, deliveries: bool) -> None:
    """The CPU-per-unit rows: per delivery (when there are any), per webhook, per event."""
    parts = [("delivery", "per_delivery")] if deliveries else []
    parts.append(("webhook", "per_webhook"))
    if batch:
        parts.append(("event", "per_event"))
    names = ", ".join(n for n, _ in parts)
    res.row(f"server CPU per {names}", " / ".join(us(c[f"server_{k}"]) for _, k in parts))
    if c["redis_per_webhook"] is not None:
        res.row(f"redis CPU per {names}", " / ".join(us(c[f"redis_{k}"]) for _, k in parts))


def window_rows(res: Result, win: dict[str, Any], names: list[str]) -> None:
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


def profile_rows(res: Result, prof: dict[str, Any] | None) -> None:
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
        "server_us_per_conn": per_us(win["server_cpu_s"], ok),
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
    # CPU through the drain: deliveries that go out after the last request count too (the
    # drain's idle tail, >= QUIET_NS, adds the idle cost of the open connections).
    cpu = window.used()
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
        "cpu_through_drain": cpu,
        "cpu_us": cpu_costs(cpu, expected - lost, acked, acked * per, bench.redis is not None),
        "window": win,
        "profile": summary,
    }


def delivery_rows(res: Result, d: dict[str, Any]) -> None:
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
    cost_rows(res, d["cpu_us"], d["events_per_request"] > 1, True)
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


def setup_rows(res: Result, setup: dict[str, Any]) -> None:
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
    res.row("  server CPU per connection set up", us(setup["server_us_per_conn"]))


# The longest collector pause since start, in seconds: the gateway's gauge, the peers' one.
GC_PAUSE_METRICS = ("presence_gc_pause_max_seconds", "bench_gc_pause_max_seconds")


def gc_pause_ms(server: Server) -> float | None:
    """The longest GC pause the server reports so far, in ms; None if it exposes none."""
    got = metrics(server.webhook_port)
    for name in GC_PAUSE_METRICS:
        if name in got:
            return round(1000 * got[name], 1)
    return None
