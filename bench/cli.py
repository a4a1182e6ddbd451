"""``python -m bench SCENARIO [--vs PEER ...]``: run a scenario against the gateway (and peers).

Each run (one scenario, one target) prints its table and one JSON line. With peers (``--vs``)
or ``python -m bench all`` (every run of ``ALL`` for the gateway and every peer), a
comparison table and one more JSON line end the output.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from bench.compare import compare
from bench.procs import BenchError, Cores
from bench.runner import RESULTS, Bench
from bench.scenarios import DEFAULTS, SCENARIOS
from bench.target import PEER_NAMES, TARGETS

HARD_LIMIT_S = 600  # whatever happens, a run ends (and cleans up) by then
# A run: a scenario with some options fixed. ``fanout-single`` is the fanout scenario with
# Tencent single events, ``fanout`` with RongCloud 100-event batches (its default).
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "latency": ("latency", {}),
    "fanout": ("fanout", {"providers": "rongcloud"}),
    "fanout-single": ("fanout", {"providers": "tencent"}),
    "conns": ("conns", {}),
    "ingest": ("ingest", {"providers": "tencent,rongcloud"}),
}
# What ``python -m bench all`` runs: every figure of issue 14's "done when" in one go.
ALL = ["latency", "fanout-single", "fanout", "conns", "ingest"]


def _summary(scenario: Callable[..., object]) -> str:
    """The first line of a scenario's docstring."""
    return (scenario.__doc__ or "").strip().splitlines()[0] if scenario.__doc__ else ""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Presence gateway benchmark: starts Redis, the server(s) and a "
        "multi-process load generator on loopback; prints a table and one JSON line.",
        epilog="scenarios:\n"
        + "\n".join(f"  {name:<13} {_summary(fn)}" for name, fn in SCENARIOS.items())
        + f"\n  {'fanout-single':<13} fanout with Tencent single events (= fanout --providers "
        "tencent)"
        + f"\n  {'all':<13} {', '.join(ALL)} for the target and every peer (or those of --vs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "scenario",
        choices=[*sorted(SCENARIOS), "fanout-single", "all"],
        help=f"all: {', '.join(ALL)} for the target and every peer (or those of --vs)",
    )
    p.add_argument(
        "--backend",
        choices=["redis", "memory"],
        default="redis",
        help="presence backend of the server (default redis; cluster: always redis)",
    )
    p.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default="gateway",
        help="server under test; ratios in the comparison are this one's over each peer's",
    )
    p.add_argument(
        "--vs",
        action="append",
        default=[],
        type=peer_list,
        metavar="PEER[,PEER...]",
        help=f"also run peers, one after the other with the same parameters: "
        f"{', '.join(PEER_NAMES)} or all (comma-separated and/or repeated); gateway-sse: the "
        "gateway watched through SSE streams",
    )
    p.add_argument(
        "--duration",
        type=float,
        help="seconds: ingest per provider, latency/cluster sending, conns idle "
        "hold, fanout total step budget, heal sending, webhooks-out the latency phase",
    )
    p.add_argument(
        "--users",
        type=int,
        help="distinct users events go to (webhooks-out: logins queued for the throughput)",
    )
    p.add_argument("--conns", type=int, help="WebSocket connections")
    p.add_argument("--watch", type=int, help="users watched per connection")
    p.add_argument(
        "--rate",
        type=float,
        help="events/s (fanout: the first step; heal: webhooks/s; webhooks-out: logins/s)",
    )
    p.add_argument("--rates", help="fanout: explicit comma-separated events/s steps")
    p.add_argument("--step-seconds", type=float, default=8.0, help="fanout step length")
    p.add_argument(
        "--max-p99-ms",
        type=float,
        default=50.0,
        help="fanout: a step whose p99 is above this counts as queueing",
    )
    p.add_argument(
        "--providers",
        help="ingest: phases (default tencent,rongcloud); fanout: rongcloud (100-event "
        "batches, default) or tencent (single events)",
    )
    p.add_argument(
        "--http-client",
        choices=["raw", "httpx"],
        default="raw",
        help="ingest webhook client (raw asyncio protocol, or httpx to compare)",
    )
    p.add_argument(
        "--http-conns",
        type=int,
        default=64,
        help="keep-alive webhook connections (RongCloud ingest uses a quarter)",
    )
    p.add_argument("--warmup", type=float, default=2.0, help="ingest: unmeasured seconds first")
    p.add_argument("--senders", type=int, help="webhook sender processes")
    p.add_argument("--watchers", type=int, help="WebSocket watcher processes")
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=256,
        help="handshakes in flight at once, over all watcher processes",
    )
    p.add_argument(
        "--no-ping",
        action="store_true",
        help="watchers send no application pings (default: one per heartbeat_ms)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers / generator")
    p.add_argument(
        "--workers", type=int, default=1, help="gateway: serve --workers N (needs Redis)"
    )
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of Redis, the servers and the generator (the sender 5 less): on a "
        "shared machine, other processes then disturb the figures less (0: leave it)",
    )
    p.add_argument(
        "--server-log-level",
        default="warning",
        choices=["debug", "info", "warning"],
        help="gateway --log-level (info adds an access-log line per request)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy while measuring; print where time goes",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the watch sets")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    return p


VS_CHOICES = [*PEER_NAMES, "gateway-sse", "all"]


def peer_list(text: str) -> list[str]:
    """``--vs ceiling,socketio-node``: the names, each checked (argparse shows the error)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in VS_CHOICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"invalid peer {', '.join(bad) or repr(text)} (choose from {', '.join(VS_CHOICES)})"
        )
    return names


def _apply_defaults(args: argparse.Namespace) -> None:
    for key, value in DEFAULTS[args.scenario].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("users", "conns", "watch", "rate"):
        if getattr(args, key) is None:
            setattr(args, key, 0)
    if args.scenario == "cluster":
        args.backend = "redis"


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise BenchError(f"hard time limit of {HARD_LIMIT_S}s reached")


def _targets(args: argparse.Namespace) -> list[str]:
    vs = [n for group in args.vs for n in group] or (["all"] if args.scenario == "all" else [])
    names = [args.target]
    for peer in vs:
        names += PEER_NAMES if peer == "all" else [peer]
    return list(dict.fromkeys(names))


def run_label(args: argparse.Namespace) -> str:
    """The run a single-scenario command is, for the comparison: fanout with Tencent single
    events is ``fanout-single``."""
    if args.scenario == "fanout" and (args.providers or "").split(",")[0] == "tencent":
        return "fanout-single"
    return str(args.scenario)


def run_one(base: argparse.Namespace, cores: Cores, run: str, name: str) -> dict[str, Any] | None:
    """One run against one target: its table, its JSON line; the record (None: failed)."""
    args = copy.copy(base)
    scenario, fixed = RUNS.get(run, (run, {}))
    if base.scenario == "all" or run == "fanout-single":  # else the command line's options
        for key, value in fixed.items():
            setattr(args, key, value)
    args.scenario = scenario
    args.target = name
    _apply_defaults(args)
    target = TARGETS[name](log_level=args.server_log_level, max_watch=max(1000, args.watch))
    if args.workers != 1:
        if name != "gateway":
            raise BenchError("--workers is a gateway option (serve --workers)")
        target.workers = args.workers
    args.python_target = target.python
    bench = Bench(cores=cores, keep=args.keep)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(HARD_LIMIT_S, int(args.duration or 0) + 300))  # soak: its duration
    started = time.monotonic()
    try:
        result = SCENARIOS[scenario](bench, args, target)
    except (BenchError, RuntimeError) as exc:
        print(f"bench {scenario} ({name}) failed: {exc}", file=sys.stderr)
        return None
    finally:
        signal.alarm(0)
        bench.close()
    skip = ("keep", "no_save", "vs", "python_target")
    params = {k: v for k, v in vars(args).items() if k not in skip}
    record: dict[str, Any] = {
        "scenario": scenario,
        "run": run,
        "nproc": os.cpu_count(),
        "cores": cores.describe(),
        "target": name,
        "backend": args.backend if scenario != "cluster" else "redis-cluster",
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(time.monotonic() - started, 1),
        "params": params,
        "generator_bottleneck": any("BOTTLENECK" in w for w in bench.warnings),
        "foreign_cpu_max_pct": round(bench.foreign_max, 1),
        "warnings": bench.all_warnings(),
        **result.data,
    }
    print(
        f"bench {scenario}: target {name}, backend {record['backend']}, "
        f"nproc {record['nproc']}, {cores.describe()}"
    )
    print("\n".join(result.lines))
    for warning in record["warnings"]:
        print(f"\nWARNING: {warning}")
    print()
    line = json.dumps(record, separators=(",", ":"), default=str)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        who = "" if name == "gateway" else f"{name}-"
        (RESULTS / f"{run}-{who}{args.backend}-{stamp}.json").write_text(line + "\n")
    print(line, flush=True)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = _targets(args)
    if args.scenario == "all":
        scenarios = ALL
    elif args.scenario in RUNS and args.scenario != "fanout":
        scenarios = [args.scenario]
    else:
        scenarios = [run_label(args)]
    if args.scenario == "cluster" and names != ["gateway"]:
        print("bench: the cluster scenario runs the gateway only (no --vs)", file=sys.stderr)
        return 2
    try:
        for name in names:
            TARGETS[name]().prepare()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    cores = Cores.detect(pin=not args.no_pin, nice=args.nice)
    records: dict[tuple[str, str], dict[str, Any] | None] = {}
    for scenario in scenarios:
        for name in names:
            records[scenario, name] = run_one(args, cores, scenario, name)
    if len(names) > 1:
        table, summary = compare(records, names, scenarios)
        print("\n".join(table))
        print()
        line = json.dumps(summary, separators=(",", ":"), default=str)
        if not args.no_save:
            RESULTS.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            (RESULTS / f"compare-{'-'.join(scenarios)}-{stamp}.json").write_text(line + "\n")
        print(line)
    return 0 if all(r is not None for r in records.values()) else 1
