"""``python -m bench soak``: endurance: steady events and connection churn for a long while.

The run is cut into equal windows (5 min by default; at least 3, so a short test run still
has a warm-up and two measured windows). Each window is one open-loop delivery step
(``common.deliver``: its events, their latency, loss after a drain) while the watcher
processes keep replacing connections in the background (``bench.churn``, make before
break, the watched set constant). The server's RSS is sampled every second. Verdicts: RSS
after the warm-up window grows at most ``RSS_GROWTH_PCT``, 0 lost, p99 stable (see
``p99_verdict``), every connection open at each window's end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from typing import Any

from bench.events import Plan
from bench.hist import Histogram
from bench.procs import rss_bytes
from bench.runner import Bench, merge_hists, watch_specs
from bench.scenarios.common import (
    Result,
    connect_all,
    deliver,
    mb,
    ms,
    sender_pool,
    setup_rows,
    start_servers,
    watcher_pool,
)
from bench.target import Server, Target, metrics
from bench.workers import Shared

WINDOW_S = 300.0  # default window length
MIN_WINDOWS = 3  # the first is the warm-up
RSS_GROWTH_PCT = 5.0
P99_FACTOR = 2.0  # a window's p99 within this factor of the median window's ...
P99_SLACK_MS = 1.0  # ... plus this (sub-ms jitter of a 2 ms p99 is no instability)
CHART_COLS = 60
CHART_ROWS = 6


class RssSeries(threading.Thread):
    """Samples a pid's RSS every ``interval`` s: ``(monotonic s, bytes)`` pairs."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True, name=f"rss-series-{pid}")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            if self._stop.wait(self.interval):
                return

    def between(self, t0: float, t1: float) -> list[int]:
        return [b for t, b in list(self.samples) if t0 <= t < t1]

    def close(self) -> None:
        self._stop.set()


def windows(duration: float, window_s: float) -> tuple[int, float]:
    """How many windows and how long: ``duration`` split into at least MIN_WINDOWS windows of
    at most ``window_s``."""
    n = max(MIN_WINDOWS, int(duration // window_s))
    return n, duration / n


def p99_verdict(p99s: list[float], bound_ms: float) -> tuple[bool, float, float]:
    """Stable: every window after the warm-up has p99 <= P99_FACTOR x the median of those
    windows' p99 + P99_SLACK_MS, and <= ``bound_ms``; (stable, median, limit)."""
    measured = p99s[1:] or p99s
    median = statistics.median(measured)
    limit = min(P99_FACTOR * median + P99_SLACK_MS, bound_ms)
    return all(p <= limit for p in measured), median, limit


def slope_mb_per_h(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, MB per hour (0 with fewer than 2 points)."""
    if len(points) < 2:
        return 0.0
    ts = [t for t, _ in points]
    ys = [b / 2**20 for _, b in points]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return 3600 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var


def chart(
    values: list[float], lo: float, hi: float, fmt: str, mark: float | None = None
) -> list[str]:
    """Columns of ``#`` from ``lo`` to ``hi`` (CHART_ROWS rows); the row holding ``mark`` is
    drawn with ``-`` where a column does not reach it."""
    hi = max(hi, lo + 1e-9)
    step = (hi - lo) / CHART_ROWS
    mark_row = None if mark is None else min(CHART_ROWS - 1, int((mark - lo) / step))
    lines = []
    for row in range(CHART_ROWS - 1, -1, -1):
        floor = lo + row * step
        cells = []
        for v in values:
            if v > floor or (row == 0 and v >= lo):
                cells.append("#")
            elif row == mark_row:
                cells.append("-")
            else:
                cells.append(" ")
        if row == CHART_ROWS - 1:
            label = fmt.format(hi)
        elif row == 0:
            label = fmt.format(lo)
        elif row == mark_row and mark is not None:
            label = fmt.format(mark)
        else:
            label = ""
        lines.append(f"  {label:>9} |{''.join(cells)}")
    return lines


def _columns(
    t0: float, t1: float, bounds: list[float], rss: list[tuple[float, int]], p99s: list[float]
) -> tuple[list[float], list[float], str]:
    """RSS (MB, the highest sample) and p99 (of the window) per chart column, and the time
    axis with a ``+`` at each window's end."""
    cols = CHART_COLS
    dt = (t1 - t0) / cols
    rss_cols: list[float] = []
    p99_cols: list[float] = []
    axis = []
    before = [x for t, x in rss if t < t0] or [x for _, x in rss[:1]] or [0]
    last = before[-1] / 2**20  # a column without a sample repeats the one before
    for c in range(cols):
        a, b = t0 + c * dt, t0 + (c + 1) * dt
        inside = [x for t, x in rss if a <= t < b]
        last = max(inside) / 2**20 if inside else last
        rss_cols.append(last)
        w = sum(1 for e in bounds[1:-1] if e <= (a + b) / 2)  # bounds[0]: the start
        p99_cols.append(p99s[min(w, len(p99s) - 1)])
        axis.append("+" if any(a < e <= b for e in bounds) else "-")
    return rss_cols, p99_cols, "".join(axis)


def gc_pause_max_ms(server: Server) -> float | None:
    """The longest GC pause since the server started (the gateway's gauge, or a peer's), ms."""
    m = metrics(server.webhook_port)
    value = m.get("presence_gc_pause_max_seconds", m.get("bench_gc_pause_max_seconds"))
    return None if value is None else round(1000 * value, 1)


def _churn_totals(reps: list[dict[str, Any]]) -> dict[str, Any]:
    failed: Counter[str] = Counter()
    codes: Counter[int] = Counter()
    for r in reps:
        failed.update(r["failed"])
        codes.update(r["close_codes"])
    setup: Histogram = merge_hists([r["setup"] for r in reps])
    return {
        "replaced": sum(r["replaced"] for r in reps),
        "failed": dict(failed),
        "behind_ticks": sum(r["behind"] for r in reps),
        "found_closed": sum(r["found_closed"] for r in reps),
        "aborted": sum(r["aborted"] for r in reps),
        "close_codes": {str(c): n for c, n in codes.items()},
        "reconnect_ms": setup.summary_ms(),
        "open": sum(r["open"] for r in reps),
    }


def _window_record(
    i: int,
    started: float,
    t0: float,
    t1: float,
    d: dict[str, Any],
    churn: dict[str, Any],
    rss: RssSeries,
) -> dict[str, Any]:
    samples = rss.between(t0, t1)
    tail = samples[-max(1, len(samples) // 5) :]  # the window's last fifth
    lat = d["latency_ms"]
    return {
        "window": i + 1,
        "start_s": round(t0 - started, 1),
        "end_s": round(t1 - started, 1),
        "events": d["events"],
        "acked": d["acked"],
        "webhook_errors": d["webhook_errors"],
        "achieved_rate": d["achieved_rate"],
        "expected": d["expected"],
        "superseded": d["superseded"],
        "lost": d["lost"],
        "lost_examples": d["lost_examples"],
        "v_regressions": d["v_regressions"],
        "stale": d["stale"],  # includes states both connections of a slot got (overlap)
        "unmatched": d["unmatched"],
        "latency_ms": lat,
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "drained": d["drained"],
        "closes": d["closes"],
        "client_errors": d["client_errors"],
        "open_connections": d["open_connections"],
        "churn": churn,
        "rss_mb": round(statistics.median(samples) / 2**20, 1) if samples else 0.0,
        "rss_end_mb": round(statistics.median(tail) / 2**20, 1) if tail else 0.0,
        "rss_peak_mb": d["window"]["server_rss_peak_mb"][0],
        "server_cpu_pct": d["window"]["server_cpu_pct"][0],
        "redis_cpu_pct": d["window"]["redis_cpu_pct"],
        "generator_cpu_pct": d["window"]["generator_cpu_pct"],
        "generator_bottleneck": d["window"]["generator_bottleneck"],
        "foreign_cpu_pct": d["window"]["foreign_cpu_pct"],
    }


def soak(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Endurance: steady events and connection churn; RSS growth, loss and p99 per window."""
    res = Result()
    (server,) = start_servers(bench, args, target)
    users, watch, rate = args.users, args.watch, args.rate
    churn_opt = getattr(args, "churn", None)
    churn_rate = 20.0 if churn_opt is None else float(churn_opt)  # 0: no churn
    wanted = args.conns
    conns = min(wanted, bench.nofile - 300 - 2 * 64)  # + replacements under way, webhooks
    if conns < wanted:
        bench.warnings.append(
            f"soak: {wanted} connections need more open files than the hard limit "
            f"{bench.nofile} allows one process; measured {conns}"
        )
    n, window_s = windows(args.duration, float(getattr(args, "window_seconds", None) or WINDOW_S))
    per_window = max(1, int(rate * window_s))
    plan = Plan(base_ms=time.time_ns() // 1_000_000, users=users)
    shared = Shared.create(per_window * n + 1000)
    specs = watch_specs(conns, watch, users, args.seed)
    watchers = watcher_pool(bench, args, target, server, plan, shared, specs)
    senders = sender_pool(bench, args, target, server, plan, shared, 1)
    setup = connect_all(bench, watchers, args.connect_concurrency, timeout=60)
    connected = setup["connected"]
    rss = RssSeries(server.pid)
    rss.start()
    procs = len(watchers.procs)
    if churn_rate > 0:
        watchers.call("churn_start", each=[{"rate": churn_rate / procs} for _ in range(procs)])
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    bounds: list[float] = [started]
    k0 = 0
    try:
        for i in range(n):
            t0 = time.monotonic()
            d = deliver(bench, senders, watchers, k0, rate, window_s, args.http_conns)
            k0 += d["events"]
            churn = _churn_totals(watchers.call("churn_stats") if churn_rate > 0 else [])
            t1 = time.monotonic()
            bounds.append(t1)
            rec = _window_record(i, started, t0, t1, d, churn, rss)
            rec["gc_pause_max_ms"] = gc_pause_max_ms(server)  # since start: a jump = this window
            records.append(rec)
            print(
                f"soak window {i + 1}/{n} ({rec['end_s']:.0f} s): RSS {mb(rec['rss_mb'])}, "
                f"p50 {ms(rec['p50_ms'])}, p99 {ms(rec['p99_ms'])}, lost {rec['lost']}, "
                f"churned {churn['replaced']}, open {rec['open_connections']}/{connected}",
                file=sys.stderr,
                flush=True,
            )
        final_churn = _churn_totals(watchers.call("churn_stop") if churn_rate > 0 else [])
    finally:
        rss.close()
    ended = time.monotonic()

    # ---- verdicts
    warm, rest = records[0], records[1:]
    baseline = warm["rss_end_mb"]
    final = records[-1]["rss_mb"]
    growth = 100 * (final - baseline) / baseline if baseline else 0.0
    worst = max((r["rss_mb"] for r in rest), default=final)
    worst_growth = 100 * (worst - baseline) / baseline if baseline else 0.0
    after = [(t, b) for t, b in list(rss.samples) if t >= bounds[1]]
    slope = slope_mb_per_h(after)
    rss_ok = worst_growth <= RSS_GROWTH_PCT
    lost = sum(r["lost"] for r in records)
    regress = sum(r["v_regressions"] for r in records)
    lost_ok = lost == 0 and regress == 0 and all(r["drained"] for r in records)
    p99s = [r["p99_ms"] for r in records]
    p99_ok, p99_median, p99_limit = p99_verdict(p99s, args.max_p99_ms)
    open_ok = all(r["open_connections"] == connected for r in records)
    churned = sum(r["churn"]["replaced"] for r in records) + final_churn["replaced"]
    churn_failed = sum(sum(r["churn"]["failed"].values()) for r in records)
    closes = sum(sum(r["closes"].values()) for r in records)
    conns_ok = open_ok and churn_failed == 0 and closes == 0
    passed = rss_ok and lost_ok and p99_ok and conns_ok

    # ---- table
    res.section(
        f"soak: {connected} connections x {watch} watched of {users} users "
        f"(~{connected * watch / users:.0f} watchers per event), {rate:g} events/s, "
        f"churn {churn_rate:g} connections/s, {args.duration:g} s in {n} windows of "
        f"{window_s:g} s (the first is the warm-up)"
    )
    setup_rows(res, setup)
    res.lines.append("")
    res.lines.append(
        "  window    end   RSS MB  p50 ms  p99 ms  events    lost  churned  reconn p99"
        "  srv CPU  open  GC max"
    )
    for r in records:
        c = r["churn"]
        res.lines.append(
            f"  {r['window']:>6} {r['end_s']:>5.0f}s {r['rss_mb']:>8.1f} {r['p50_ms']:>7.2f}"
            f" {r['p99_ms']:>7.2f} {r['events']:>7} {r['lost']:>7} {c['replaced']:>8}"
            f" {c['reconnect_ms']['p99']:>8.1f}ms {r['server_cpu_pct']:>7.0f}%"
            f" {r['open_connections']:>5}"
            + (f" {r['gc_pause_max_ms']:>5.0f}ms" if r["gc_pause_max_ms"] is not None else "     -")
            + ("  <<" if r["generator_bottleneck"] else "")
            + (f"  other load {r['foreign_cpu_pct']:.0f}%" if r["foreign_cpu_pct"] > 15 else "")
        )
    rss_cols, p99_cols, axis = _columns(started, ended, bounds, rss.samples, p99s)
    lo = min(min(rss_cols), baseline) * 0.98
    hi = max(max(rss_cols), baseline * (1 + 1.5 * RSS_GROWTH_PCT / 100))
    res.lines += ["", f"  server RSS (MB) over {ended - started:.0f} s; - marks +5 % of warm-up"]
    res.lines += chart(rss_cols, lo, hi, "{:.1f}", baseline * (1 + RSS_GROWTH_PCT / 100))
    res.lines.append(f"  {'':>9} +{axis}  (+ = window end)")
    res.lines += ["", "  end-to-end p99 (ms) per window; - marks the stability limit"]
    res.lines += chart(p99_cols, 0.0, max(max(p99s), p99_limit) * 1.1, "{:.1f}", p99_limit)
    res.lines.append(f"  {'':>9} +{axis}")
    res.section("soak verdicts")
    res.row(
        "RSS growth after warm-up",
        f"{growth:+.1f} % at the end, {worst_growth:+.1f} % at most ({mb(baseline)} -> "
        f"{mb(final)}, trend {slope:+.1f} MB/h; limit {RSS_GROWTH_PCT:g} %): "
        + ("ok" if rss_ok else "FAIL"),
    )
    res.row(
        "lost deliveries",
        f"{lost} lost, {regress} v regressions"
        + ("" if all(r["drained"] for r in records) else ", a window did not drain")
        + (": ok" if lost_ok else ": FAIL"),
    )
    res.row(
        "p99 stable",
        f"windows {' / '.join(f'{p:.1f}' for p in p99s)} ms; median after warm-up "
        f"{p99_median:.2f} ms, limit {p99_limit:.2f} ms (min of {P99_FACTOR:g} x median + "
        f"{P99_SLACK_MS:g}, --max-p99-ms {args.max_p99_ms:g}): " + ("ok" if p99_ok else "FAIL"),
    )
    res.row(
        "connections",
        f"{churned} replaced, {churn_failed} replacement failures, {closes} other closes, "
        f"{'all' if open_ok else 'NOT all'} {connected} open at every window end"
        + (": ok" if conns_ok else ": FAIL"),
    )
    res.row("soak", "PASS" if passed else "FAIL")
    res.data = {
        "setup": setup,
        "connections": connected,
        "churn_per_s": churn_rate,
        "window_s": round(window_s, 1),
        "windows": records,
        "final_churn": final_churn,
        "rss": {
            "baseline_mb": baseline,
            "final_mb": final,
            "growth_pct": round(growth, 2),
            "max_growth_pct": round(worst_growth, 2),
            "slope_mb_per_h": round(slope, 2),
            "samples_mb": [
                (round(t - started, 1), round(b / 2**20, 1)) for t, b in rss.samples[::10]
            ],
        },
        "p99": {"median_ms": p99_median, "limit_ms": round(p99_limit, 3), "windows_ms": p99s},
        "verdicts": {
            "rss": rss_ok,
            "lost": lost_ok,
            "p99_stable": p99_ok,
            "connections": conns_ok,
        },
        "pass": passed,
    }
    return res
