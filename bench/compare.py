"""The comparison of one target with its peers: one table, one JSON summary.

Each figure is shown per target; a peer's column also shows the ratio *target ÷ peer*
(``x1.50``), so with the gateway as the target a ratio above 1 is better for rates and
worse for latencies and memory (each row says which way is better).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    key: str
    scenario: str
    label: str
    get: Callable[[Record], float | None]
    better: str  # "lower", "higher", or "" (no ratio: a count that must be 0)
    fmt: str = "{:,.2f}"


def _gc_ms(r: Record) -> float | None:
    gc = r.get("gc") or {}
    value = gc.get("bench_gc_pause_max_seconds")
    return None if value is None else 1000 * float(value)


def _fanout_cpu(r: Record) -> float | None:
    steps = [s for s in r["steps"] if s.get("verdict") == "ok"]
    if not steps:
        return None
    best = max(steps, key=lambda s: s["deliveries_per_s"])
    return float(best["window"]["server_cpu_pct"][0])


FIGURES = [
    Figure(
        "latency_p50_ms",
        "latency",
        "latency p50 (ms)",
        lambda r: r["delivery"]["latency_ms"]["p50"],
        "lower",
    ),
    Figure(
        "latency_p99_ms",
        "latency",
        "latency p99 (ms)",
        lambda r: r["delivery"]["latency_ms"]["p99"],
        "lower",
    ),
    Figure(
        "latency_lost",
        "latency",
        "latency lost deliveries",
        lambda r: r["delivery"]["lost"],
        "",
        "{:,.0f}",
    ),
    Figure(
        "latency_gc_max_pause_ms",
        "latency",
        "  longest GC pause (ms)",
        lambda r: r.get("gc_pause_max_ms"),
        "lower",
        "{:,.1f}",
    ),
    Figure(
        "fanout_max_deliveries_per_s",
        "fanout",
        "fanout max deliveries/s, 0 lost",
        lambda r: r["max_deliveries_per_s"],
        "higher",
        "{:,.0f}",
    ),
    Figure("fanout_server_cpu_pct", "fanout", "  server CPU % there", _fanout_cpu, "", "{:,.0f}"),
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
        "conns setup rate (/s)",
        lambda r: r["setup"]["per_second"],
        "higher",
        "{:,.0f}",
    ),
    Figure("conns_connected", "conns", "  connections", lambda r: r["connections"], "", "{:,.0f}"),
    Figure("conns_gc_max_pause_ms", "conns", "  longest GC pause (ms)", _gc_ms, "lower", "{:,.1f}"),
]


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
    records: dict[tuple[str, str], Record | None], names: list[str], scenarios: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """The table lines and the JSON summary; ``names[0]`` is the target, the rest its peers."""
    base = names[0]
    figures: dict[str, dict[str, float | None]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    cells: dict[str, dict[str, str]] = {}
    for fig in FIGURES:
        if fig.scenario not in scenarios:
            continue
        figures[fig.key] = {}
        cells[fig.key] = {}
        for name in names:
            rec = records.get((fig.scenario, name))
            value: float | None = None
            if rec is not None:
                try:
                    value = fig.get(rec)
                except (KeyError, IndexError, TypeError):
                    value = None
            figures[fig.key][name] = value
            text = "failed" if rec is None else ("-" if value is None else fig.fmt.format(value))
            cells[fig.key][name] = text + (_flags(rec) if rec is not None else "")
        mine = figures[fig.key][base]
        ratios[fig.key] = {}
        for name in names[1:]:
            theirs = figures[fig.key][name]
            ratio = mine / theirs if fig.better and mine is not None and theirs else None
            ratios[fig.key][name] = round(ratio, 2) if ratio is not None else None
            if ratio is not None:
                cells[fig.key][name] += f" (x{ratio:.2f})"
    nproc = os.cpu_count()
    width = max(len(f.label) for f in FIGURES) + 14
    cols = [max(16, len(n) + 2, *(len(cells[k][n]) + 2 for k in cells)) for n in names]
    lines = [
        "",
        f"comparison, nproc {nproc}: (xN) = {base} / peer; B = load generator was the "
        "bottleneck, g = fanout generator-bound in bursts, + = no fanout step failed (both: a "
        "lower bound), * = other load on the machine",
        f"  {'figure':<{width}}" + "".join(f"{n:>{c}}" for n, c in zip(names, cols, strict=True)),
    ]
    for fig in FIGURES:
        if fig.key not in cells:
            continue
        label = fig.label + (f" ({fig.better} is better)" if fig.better else "")
        lines.append(
            f"  {label:<{width}}"
            + "".join(f"{cells[fig.key][n]:>{c}}" for n, c in zip(names, cols, strict=True))
        )
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
