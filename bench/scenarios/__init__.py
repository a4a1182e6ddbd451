"""The scenarios, one module each: it sets up its servers and workers, measures, and returns
a ``Result`` (``common.py`` holds what they share). ``SCENARIOS`` maps the command-line name
to the scenario, ``DEFAULTS`` its values for options left unset."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from bench.runner import Bench
from bench.scenarios.cluster import cluster
from bench.scenarios.common import Result
from bench.scenarios.conns import conns
from bench.scenarios.fanout import fanout
from bench.scenarios.heal import heal
from bench.scenarios.ingest import ingest
from bench.scenarios.latency import latency
from bench.scenarios.soak import soak
from bench.scenarios.webhooks_out import webhooks_out
from bench.target import Target

SCENARIOS: dict[str, Callable[[Bench, argparse.Namespace, Target], Result]] = {
    "ingest": ingest,
    "latency": latency,
    "fanout": fanout,
    "conns": conns,
    "cluster": cluster,
    "heal": heal,
    "webhooks-out": webhooks_out,
    "soak": soak,
}

# Per-scenario defaults for options left unset on the command line.
DEFAULTS: dict[str, dict[str, Any]] = {
    "ingest": {"duration": 20.0, "users": 10_000, "providers": "tencent,rongcloud"},
    "latency": {"duration": 30.0, "users": 5000, "conns": 2000, "watch": 20, "rate": 200.0},
    # fanout's first rate: --rate, else 20 events/s (batches and single events alike)
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
    # webhooks-out: --users logins queued (throughput), then --rate logins/s for --duration s
    "webhooks-out": {"duration": 5.0, "users": 3000, "rate": 100.0},
    # soak: --duration cut into windows of window_seconds (at least 3), churn connections/s
    # replaced; watch 10 as conns (RSS per connection comparable; 20 watchers per event)
    "soak": {
        "duration": 1800.0,
        "users": 5000,
        "conns": 10_000,
        "watch": 10,
        "rate": 200.0,
        "churn": 20.0,
        "window_seconds": 300.0,
    },
}
