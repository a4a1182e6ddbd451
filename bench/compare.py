"""The comparison of one target with its peers: one table, one JSON summary.

Each figure is shown per target; a peer's column also shows the ratio *target ÷ peer*
(``x1.50``), so with the gateway as the target a ratio above 1 is better for rates and
worse for latencies, memory and CPU per unit (each row says which way is better). A cell
without a value shows ``-`` and a footnote under the table says why.

Records are keyed by (run, target); a run is a scenario, or ``fanout-single`` (the fanout
scenario with Tencent single events, ``fanout`` being RongCloud 100-event batches).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]

NO_REDIS = "no Redis in this run (--backend memory)"
NO_GC = "the server exposes no longest-GC-pause metric"


@dataclass(frozen=True)
class Figure:
    key: str
    scenario: str  # the run: a scenario name or fanout-single
    label: str
    get: Callable[[Record], float | None]
    better: str  # "lower", "higher", or "" (no ratio: a count that must be 0, a context)
    fmt: str = "{:,.2f}"
    why: str = "not in this run's record"  # the footnote when a value is missing


def _gc_ms(key: str) -> Callable[[Record], float | None]:
    """A GC pause figure in ms; older conns records only have the metrics dict."""

    def get(r: Record) -> float | None:
        if r.get(key) is not None:
            return float(r[key])
        if key != "gc_pause_max_ms":
            return None
        gc = r.get("gc") or {}
        for name in ("presence_gc_pause_max_seconds", "bench_gc_pause_max_seconds"):
            if gc.get(name) is not None:
                return 1000 * float(gc[name])
        return None

    return get


def best_step(r: Record) -> Record | None:
    """The fanout step the result comes from: the passing one with the most deliveries/s."""
    steps = [s for s in r["steps"] if s.get("verdict") == "ok"]
    return max(steps, key=lambda s: s["deliveries_per_s"]) if steps else None


def _at_best(get: Callable[[Record], float | None]) -> Callable[[Record], float | None]:
    def at(r: Record) -> float | None:
        step = best_step(r)
        return None if step is None else get(step)

    return at


def _phase(provider: str, get: Callable[[Record], float | None]) -> Callable[[Record], Any]:
    def at(r: Record) -> float | None:
        for phase in r["phases"]:
            if phase["provider"] == provider:
                return get(phase)
        return None

    return at


def _cost(key: str) -> Callable[[Record], float | None]:
    return lambda d: (d.get("cpu_us") or {}).get(key)


def _delivery_figures(
    prefix: str, run: str, title: str, get: Callable[[Record], Record]
) -> list[Figure]:
    """Latency, loss, webhook ack and CPU per unit of one delivery step (latency, liveness)."""

    def of(inner: Callable[[Record], float | None]) -> Callable[[Record], float | None]:
        return lambda r: inner(get(r))

    return [
        Figure(
            f"{prefix}_p50_ms",
            run,
            f"{title} p50 (ms)",
            of(lambda d: d["latency_ms"]["p50"]),
            "lower",
        ),
        Figure(
            f"{prefix}_p99_ms",
            run,
            f"{title} p99 (ms)",
            of(lambda d: d["latency_ms"]["p99"]),
            "lower",
        ),
        Figure(
            f"{prefix}_lost",
            run,
            f"  {title} lost deliveries",
            of(lambda d: d["lost"]),
            "",
            "{:,.0f}",
        ),
        Figure(
            f"{prefix}_webhook_p50_ms",
            run,
            "  webhook ack p50 (ms)",
            of(lambda d: d["webhook_ms"]["p50"]),
            "lower",
        ),
        Figure(
            f"{prefix}_server_us_per_delivery",
            run,
            "  server CPU µs / delivery",
            of(_cost("server_per_delivery")),
            "lower",
            why="no CPU figures in this record (an older bench)",
        ),
        Figure(
            f"{prefix}_server_us_per_webhook",
            run,
            "  server CPU µs / webhook",
            of(_cost("server_per_webhook")),
            "lower",
            "{:,.1f}",
            why="no CPU figures in this record (an older bench)",
        ),
        Figure(
            f"{prefix}_redis_us_per_webhook",
            run,
            "  redis CPU µs / webhook",
            of(_cost("redis_per_webhook")),
            "lower",
            "{:,.1f}",
            why=NO_REDIS,
        ),
    ]


def _fanout_figures(run: str, title: str, batch: bool) -> list[Figure]:
    unit = "event" if batch else "webhook (= event)"
    no_step = "no fanout step passed"
    return [
        Figure(
            f"{run}_max_deliveries_per_s",
            run,
            f"{title} max deliveries/s, 0 lost",
            lambda r: r["max_deliveries_per_s"] or None,
            "higher",
            "{:,.0f}",
            why=no_step,
        ),
        Figure(
            f"{run}_server_cpu_pct",
            run,
            "  server CPU % there",
            _at_best(lambda s: float(s["window"]["server_cpu_pct"][0])),
            "",
            "{:,.0f}",
            why=no_step,
        ),
        Figure(
            f"{run}_webhook_p50_ms",
            run,
            "  webhook ack p50 there (ms)",
            _at_best(lambda s: s["webhook_ms"]["p50"]),
            "lower",
            why=no_step,
        ),
        Figure(
            f"{run}_server_us_per_delivery",
            run,
            "  server CPU µs / delivery",
            _at_best(_cost("server_per_delivery")),
            "lower",
            why=no_step + " (or an older record)",
        ),
        Figure(
            f"{run}_server_us_per_event",
            run,
            f"  server CPU µs / {unit}",
            _at_best(_cost("server_per_event")),
            "lower",
            "{:,.1f}",
            why=no_step + " (or an older record)",
        ),
        Figure(
            f"{run}_redis_us_per_event",
            run,
            f"  redis CPU µs / {unit}",
            _at_best(_cost("redis_per_event")),
            "lower",
            "{:,.1f}",
            why=f"{no_step}, or {NO_REDIS}",
        ),
    ]


def _ingest_figures() -> list[Figure]:
    not_run = "this phase did not run (--providers)"

    def fig(
        key: str, label: str, provider: str, get: Callable[[Record], Any], *rest: Any
    ) -> Figure:
        return Figure(f"ingest_{key}", "ingest", label, _phase(provider, get), *rest)

    return [
        fig(
            "tencent_requests_per_s",
            "ingest Tencent requests/s",
            "tencent",
            lambda p: p["requests_per_s"],
            "higher",
            "{:,.0f}",
            not_run,
        ),
        fig(
            "tencent_p50_ms",
            "  request p50 (ms)",
            "tencent",
            lambda p: p["request_ms"]["p50"],
            "lower",
            "{:,.2f}",
            not_run,
        ),
        fig(
            "tencent_server_us_per_request",
            "  server CPU µs / request",
            "tencent",
            _cost("server_per_webhook"),
            "lower",
            "{:,.1f}",
            not_run,
        ),
        fig(
            "tencent_redis_us_per_request",
            "  redis CPU µs / request",
            "tencent",
            _cost("redis_per_webhook"),
            "lower",
            "{:,.1f}",
            f"{not_run}, or {NO_REDIS}",
        ),
        fig(
            "tencent_errors",
            "  errors (non-2xx)",
            "tencent",
            lambda p: p["errors"],
            "",
            "{:,.0f}",
            not_run,
        ),
        fig(
            "rongcloud_events_per_s",
            "ingest RongCloud events/s (100/batch)",
            "rongcloud",
            lambda p: p["events_per_s"],
            "higher",
            "{:,.0f}",
            not_run,
        ),
        fig(
            "rongcloud_p50_ms",
            "  request p50 (ms)",
            "rongcloud",
            lambda p: p["request_ms"]["p50"],
            "lower",
            "{:,.2f}",
            not_run,
        ),
        fig(
            "rongcloud_server_us_per_event",
            "  server CPU µs / event",
            "rongcloud",
            _cost("server_per_event"),
            "lower",
            "{:,.2f}",
            not_run,
        ),
        fig(
            "rongcloud_redis_us_per_event",
            "  redis CPU µs / event",
            "rongcloud",
            _cost("redis_per_event"),
            "lower",
            "{:,.2f}",
            f"{not_run}, or {NO_REDIS}",
        ),
        fig(
            "rongcloud_errors",
            "  errors (non-2xx)",
            "rongcloud",
            lambda p: p["errors"],
            "",
            "{:,.0f}",
            not_run,
        ),
    ]


FIGURES = [
    *_delivery_figures("latency", "latency", "latency", lambda r: r["delivery"]),
    Figure(
        "latency_gc_max_pause_ms",
        "latency",
        "  longest GC pause (ms)",
        _gc_ms("gc_pause_max_ms"),
        "lower",
        "{:,.1f}",
        NO_GC,
    ),
    Figure(
        "latency_setup_per_s",
        "latency",
        "  setup rate (/s)",
        lambda r: r["setup"]["per_second"],
        "higher",
        "{:,.0f}",
    ),
    *_fanout_figures("fanout-single", "fanout single events", batch=False),
    *_fanout_figures("fanout", "fanout 100-event batches", batch=True),
    Figure(
        "conns_rss_per_conn_kb",
        "conns",
        "idle RSS per connection (KB)",
        lambda r: r["rss_per_conn_kb"],
        "lower",
        "{:,.1f}",
    ),
    Figure(
        "conns_setup_per_s",
        "conns",
        "  conns setup rate (/s)",
        lambda r: r["setup"]["per_second"],
        "higher",
        "{:,.0f}",
    ),
    Figure(
        "conns_server_us_per_conn",
        "conns",
        "  server CPU µs / connection set up",
        lambda r: r["setup"].get("server_us_per_conn"),
        "lower",
        "{:,.0f}",
        "no CPU figures in this record (an older bench)",
    ),
    Figure("conns_connected", "conns", "  connections", lambda r: r["connections"], "", "{:,.0f}"),
    Figure(
        "conns_gc_setup_pause_ms",
        "conns",
        "  conns GC pause during setup (ms)",
        _gc_ms("gc_pause_setup_ms"),
        "lower",
        "{:,.1f}",
        NO_GC,
    ),
    Figure(
        "conns_gc_max_pause_ms",
        "conns",
        "  longest GC pause, whole run (ms)",
        _gc_ms("gc_pause_max_ms"),
        "lower",
        "{:,.1f}",
        NO_GC,
    ),
    Figure(
        "conns_idle_cpu_pct",
        "conns",
        "  idle server CPU %",
        lambda r: r["idle_cpu_pct"],
        "lower",
        "{:,.1f}",
    ),
    # the liveness check: 3 s at 20 events/s, too little CPU for a per-unit figure
    *_delivery_figures("conns_liveness", "conns", "conns liveness", lambda r: r["liveness"])[:4],
    *_ingest_figures(),
]


# Issue 14's "done when", figure by figure: (figure key, name, what it must be, bound or peer,
# factor). A peer name: the target's figure against that peer's times ``factor``; a number: a
# bound.
GOALS: list[tuple[str, str, str, str | float, float]] = [
    ("latency_p50_ms", "latency p50", "<=", "ceiling", 1.0),
    ("latency_p99_ms", "latency p99", "<=", "ceiling", 1.0),
    ("fanout-single_max_deliveries_per_s", "fanout single, 0 lost", ">=", "ceiling", 1.0),
    ("fanout_max_deliveries_per_s", "fanout batched, 0 lost", ">=", "ceiling", 3.0),
    ("conns_rss_per_conn_kb", "idle RSS per connection", "<=", "ceiling", 1.0),
    ("conns_gc_setup_pause_ms", "GC pause during conns setup (ms)", "<=", 50.0, 1.0),
    ("ingest_tencent_server_us_per_request", "Tencent µs per request", "<=", 150.0, 1.0),
    ("ingest_rongcloud_server_us_per_event", "RongCloud µs per event", "<=", 15.0, 1.0),
]


def goal_lines(
    records: Mapping[tuple[str, str], Record | None],
    figures: dict[str, dict[str, float | None]],
    base: str,
) -> list[str]:
    """One line per goal whose figure is in the table: met / NOT met, and whether a run it
    rests on was flagged (other load, a bottleneck: then it does not count)."""
    runs = {f.key: f.scenario for f in FIGURES}
    lines: list[str] = []
    for key, name, op, against, factor in GOALS:
        if key not in figures:
            continue
        mine = figures[key].get(base)
        if isinstance(against, str):
            if against not in figures[key]:
                continue
            theirs = figures[key][against]
            bound = None if theirs is None else theirs * factor
            what = f"{against}'s" + (f" x {factor:g}" if factor != 1 else "")
            who = [base, against]
        else:
            bound, what, who = against, f"{against:g}", [base]
        if mine is None or bound is None:
            verdict = "not measured"
        else:
            met = mine <= bound if op == "<=" else mine >= bound
            verdict = ("met" if met else "NOT MET") + f" ({mine:,.2f} vs {bound:,.2f})"
        flags = "".join(_flags(r) for n in who if (r := records.get((runs[key], n))) is not None)
        bad = "".join(dict.fromkeys(c for c in flags if c in "*B"))
        bounds = "".join(dict.fromkeys(c for c in flags if c in "g+"))
        if bad:
            verdict += f" [flagged {bad}: does not count, repeat the run]"
        elif bounds:
            verdict += f" [{bounds}: a lower bound]"
        if key == "conns_gc_setup_pause_ms":
            conns = records.get(("conns", base))
            if conns is not None and conns.get("connections", 0) < 19_000:
                verdict += f" [at {conns['connections']:,} connections, not 19,000]"
        lines.append(f"  {name} {op} {what}: {verdict}")
    return ["", "issue 14 done-when:", *lines] if lines else []


def _flags(r: Record) -> str:
    flags = ""
    if r.get("generator_bottleneck"):
        flags += "B"
    if r.get("generator_bound"):
        flags += "g"
    if r.get("no_step_failed"):
        flags += "+"
    if r.get("foreign_cpu_max_pct", 0) > 15:
        flags += "*"
    return flags


def compare(
    records: Mapping[tuple[str, str], Record | None], names: list[str], scenarios: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """The table lines and the JSON summary; ``names[0]`` is the target, the rest its peers;
    ``scenarios`` are the runs (a scenario name, or ``fanout-single``)."""
    base = names[0]
    figures: dict[str, dict[str, float | None]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    cells: dict[str, dict[str, str]] = {}
    notes: dict[str, list[str]] = {}  # why -> the figure labels whose cells show "-"
    shown = [f for f in FIGURES if f.scenario in scenarios]
    for fig in shown:
        figures[fig.key] = {}
        cells[fig.key] = {}
        missing: list[str] = []
        for name in names:
            rec = records.get((fig.scenario, name))
            value: float | None = None
            if rec is not None:
                try:
                    got = fig.get(rec)
                    value = None if got is None else float(got)
                except (KeyError, IndexError, TypeError, ValueError):
                    value = None
            figures[fig.key][name] = value
            if rec is None:
                text = "failed"
            elif value is None:
                text = "-"
                missing.append(name)
            else:
                text = fig.fmt.format(value)
            cells[fig.key][name] = text + (_flags(rec) if rec is not None else "")
        if missing:
            notes.setdefault(fig.why, []).append(
                f"{fig.scenario}: {fig.label.strip()} ({', '.join(missing)})"
            )
        mine = figures[fig.key][base]
        ratios[fig.key] = {}
        for name in names[1:]:
            theirs = figures[fig.key][name]
            ratio = mine / theirs if fig.better and mine is not None and theirs else None
            ratios[fig.key][name] = round(ratio, 2) if ratio is not None else None
            if ratio is not None:
                cells[fig.key][name] += f" (x{ratio:.2f})"
    nproc = os.cpu_count()
    labels = {f.key: f.label + (f" ({f.better} is better)" if f.better else "") for f in shown}
    width = max((len(v) for v in labels.values()), default=10) + 2
    cols = [max(16, len(n) + 2, *(len(cells[k][n]) + 2 for k in cells)) for n in names]
    lines = [
        "",
        f"comparison, nproc {nproc}: (xN) = {base} / peer; B = load generator was the "
        "bottleneck, g = fanout generator-bound in bursts, + = no fanout step failed (both: a "
        "lower bound), * = other load on the machine (> 15 % of a core: repeat the run)",
        f"  {'figure':<{width}}" + "".join(f"{n:>{c}}" for n, c in zip(names, cols, strict=True)),
    ]
    for fig in shown:
        lines.append(
            f"  {labels[fig.key]:<{width}}"
            + "".join(f"{cells[fig.key][n]:>{c}}" for n, c in zip(names, cols, strict=True))
        )
    lines.append(
        "  CPU µs / unit: all of the server's CPU (whole process tree, all threads) over the "
        "measured window (with watchers: sending + drain), divided by the deliveries, the "
        "webhooks or the events; redis: the Redis server's CPU the same way (the gateway's Lua "
        "runs there)"
    )
    for why, where in notes.items():
        lines.append(f"  - : {why}: {'; '.join(where)}")
    if base == "gateway":
        lines += goal_lines(records, figures, base)
    summary = {
        "comparison": True,
        "nproc": nproc,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": base,
        "peers": names[1:],
        "scenarios": scenarios,
        "figures": figures,
        "ratios": ratios,
        "flags": {
            f"{s}/{n}": (r["warnings"] if r is not None else ["failed"])
            for (s, n), r in records.items()
        },
    }
    return lines, summary
