"""Sum the Prometheus texts of several worker processes into one (``serve --workers N``).

Each worker exports its own registry, hot-path plain ints included (hub's collector), so
merging the rendered texts sums everything the same way, whatever produced a sample:
counters, histogram buckets / sums / counts and connection gauges add up per (sample name,
labels). A few samples mean something else summed and are combined by ``_RULES`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

Combine = Callable[[float, float], float]

_RULES: dict[str, Combine] = {
    # the same value read from Redis by every worker, not a per-worker share
    "presence_webhooks_out_queue": max,
    "presence_gc_pause_max_seconds": max,
    "process_max_fds": max,
    "process_start_time_seconds": min,  # the oldest worker
}
WORKERS_METRIC = "presence_workers"


def _rule(family: str, sample: str) -> Combine:
    if sample.endswith("_created"):
        return min  # a creation time: the earliest
    return _RULES.get(family, _add)


def _add(a: float, b: float) -> float:
    return a + b


class _Merged:
    """A ``collect()``-able set of families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge(texts: Iterable[str]) -> bytes:
    """One exposition whose samples combine those of ``texts`` (the first text's order), plus
    ``presence_workers``: how many texts went in."""
    families: dict[str, Metric] = {}
    # family -> (sample name, sorted labels) -> [labels as first seen, value]
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[str, str], float]]]
    values = {}
    count = 0
    for text in texts:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            log.warning("a worker's metrics text does not parse: left out")
            continue
        count += 1
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            samples = values[family.name]
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = samples.get(key)
                if old is None:
                    samples[key] = (s.labels, s.value)
                else:
                    samples[key] = (old[0], _rule(family.name, s.name)(old[1], s.value))
    out: list[Metric] = []
    for name, merged in families.items():
        for (sample, _), (labels, value) in values[name].items():
            merged.add_sample(sample, labels, value)
        out.append(merged)
    workers = Metric(WORKERS_METRIC, "Worker processes whose metrics this sum holds", "gauge")
    workers.add_sample(WORKERS_METRIC, {}, float(count))
    out.append(workers)
    return generate_latest(_Merged(out))
