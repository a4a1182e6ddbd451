"""The bench's own parsing and figures: --vs lists, the runs of ``all``, CPU per unit, the
comparison rows, the process-tree CPU of ``serve --workers``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from bench.cli import ALL, RUNS, _parser, _targets, run_label
from bench.compare import compare
from bench.procs import cpu_seconds, descendants, tree_cpu_seconds
from bench.scenarios.common import cpu_costs


def test_vs_takes_comma_separated_and_repeated_peers() -> None:
    """`--vs ceiling,socketio-node --vs python-socketio` runs all three, once each, in order."""
    args = _parser().parse_args(
        ["latency", "--vs", "ceiling,socketio-node", "--vs", "python-socketio,ceiling"]
    )
    assert _targets(args) == ["gateway", "ceiling", "socketio-node", "python-socketio"]


def test_vs_rejects_an_unknown_peer(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt peer in a --vs list is a usage error naming it, not a run."""
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["latency", "--vs", "ceiling,socketio-nod"])
    assert exc.value.code == 2
    assert "socketio-nod" in capsys.readouterr().err


def test_all_covers_every_done_when_figure() -> None:
    """`all` runs latency, both fanouts (batches and Tencent singles), conns and ingest."""
    assert set(ALL) == {"latency", "fanout", "fanout-single", "conns", "ingest"}
    assert RUNS["fanout-single"] == ("fanout", {"providers": "tencent"})
    assert RUNS["fanout"][1]["providers"] == "rongcloud"
    assert set(RUNS["ingest"][1]["providers"].split(",")) == {"tencent", "rongcloud"}


def test_fanout_with_tencent_is_the_single_event_run() -> None:
    """`fanout --providers tencent` is compared as fanout-single, plain fanout as fanout."""
    assert run_label(_parser().parse_args(["fanout", "--providers", "tencent"])) == "fanout-single"
    assert run_label(_parser().parse_args(["fanout"])) == "fanout"
    assert run_label(_parser().parse_args(["fanout-single"])) == "fanout-single"


def test_cpu_costs_divide_server_and_redis_cpu_per_unit() -> None:
    """1 s of server CPU over 10,000 deliveries is 100 µs each; no Redis gives None."""
    cpu = {"server_cpu_s": 1.0, "redis_cpu_s": 0.5}
    got = cpu_costs(cpu, deliveries=10_000, webhooks=50, events=5_000, redis=True)
    assert got["server_per_delivery"] == 100.0
    assert got["server_per_webhook"] == 20_000.0
    assert got["server_per_event"] == 200.0
    assert got["redis_per_event"] == 100.0
    none = cpu_costs(cpu, deliveries=0, webhooks=50, events=50, redis=False)
    assert none["server_per_delivery"] is None and none["redis_per_webhook"] is None


def _ingest_record(target: str, tencent_us: float, redis_us: float | None) -> dict[str, Any]:
    costs = {"server_per_webhook": tencent_us, "redis_per_webhook": redis_us}
    phase = {
        "provider": "tencent",
        "requests_per_s": 1000.0,
        "request_ms": {"p50": 1.0},
        "errors": 0,
        "cpu_us": costs,
    }
    return {"target": target, "phases": [phase], "warnings": [], "foreign_cpu_max_pct": 40.0}


def test_comparison_shows_peer_cpu_ratios_and_explains_dashes() -> None:
    """The ingest CPU row shows both targets and the ratio; a missing figure is '-' with a
    footnote; a run with other load on the machine is flagged '*'."""
    records = {
        ("ingest", "gateway"): _ingest_record("gateway", 120.0, 30.0),
        ("ingest", "ceiling"): _ingest_record("ceiling", 60.0, None),
    }
    lines, summary = compare(records, ["gateway", "ceiling"], ["ingest"])
    row = next(line for line in lines if "server CPU µs / request" in line)
    assert "120.0*" in row and "60.0* (x2.00)" in row
    redis = next(line for line in lines if "redis CPU µs / request" in line)
    assert redis.rstrip().endswith("-*")
    assert any(line.strip().startswith("- :") and "ceiling" in line for line in lines)
    assert summary["ratios"]["ingest_tencent_server_us_per_request"]["ceiling"] == 2.0
    assert not any("RongCloud events/s" in line and "failed" in line for line in lines)
    goal = next(line for line in lines if "Tencent µs per request <= 150" in line)
    assert "met (120.00 vs 150.00)" in goal and "does not count" in goal


def test_done_when_compares_with_the_ceiling() -> None:
    """A batched fanout below 3x the ceiling's is NOT MET; at or above it, met."""

    def fanout(best: float) -> dict[str, Any]:
        return {"max_deliveries_per_s": best, "steps": [], "warnings": []}

    for mine, verdict in ((29_000.0, "NOT MET"), (30_000.0, "met")):
        records = {("fanout", "gateway"): fanout(mine), ("fanout", "ceiling"): fanout(10_000.0)}
        lines, _ = compare(records, ["gateway", "ceiling"], ["fanout"])
        goal = next(line for line in lines if ">= ceiling's x 3" in line)
        assert f": {verdict} (" in goal


def test_comparison_reads_the_gateways_gc_pause() -> None:
    """The conns GC rows come from the record's gc_pause_* figures, gateway's included."""
    base: dict[str, Any] = {
        "rss_per_conn_kb": 10.0,
        "setup": {"per_second": 500.0, "server_us_per_conn": 300.0},
        "connections": 100,
        "idle_cpu_pct": 1.0,
        "liveness": {"latency_ms": {"p50": 1.0, "p99": 2.0}, "lost": 0, "webhook_ms": {"p50": 1}},
        "warnings": [],
    }
    records = {
        ("conns", "gateway"): {**base, "gc_pause_setup_ms": 12.5, "gc_pause_max_ms": 20.0},
        ("conns", "ceiling"): {**base, "gc_pause_setup_ms": 25.0, "gc_pause_max_ms": 25.0},
    }
    lines, summary = compare(records, ["gateway", "ceiling"], ["conns"])
    assert summary["figures"]["conns_gc_setup_pause_ms"] == {"gateway": 12.5, "ceiling": 25.0}
    row = next(line for line in lines if "GC pause during setup" in line)
    assert "(x0.50)" in row


def test_tree_cpu_counts_the_children() -> None:
    """A parent that only waits on a busy child: its tree CPU is the child's, its own ~0."""
    burn = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tree_cpu_seconds(parent.pid) < 0.3:
            time.sleep(0.05)
        kids = descendants(parent.pid)
        assert len(kids) == 1
        assert tree_cpu_seconds(parent.pid) >= 0.3
        assert tree_cpu_seconds(parent.pid) >= cpu_seconds(parent.pid) + cpu_seconds(kids[0]) - 0.05
        assert cpu_seconds(parent.pid) < 0.3
    finally:
        for pid in descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
