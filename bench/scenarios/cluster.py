"""``python -m bench cluster``: two gateways on a 3-master Redis Cluster, webhooks to A,
watchers on B, measured as ``latency``."""

from __future__ import annotations

import argparse

from bench.runner import Bench
from bench.scenarios.common import Result, start_servers
from bench.scenarios.latency import watch_run
from bench.target import Target


def cluster(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Two gateway processes on a 3-master Redis Cluster: webhooks to A, watchers on B."""
    servers = start_servers(bench, args, target, count=2, cluster=True)
    return watch_run(bench, args, target, servers, "cluster (webhooks -> A, watchers on B)")
