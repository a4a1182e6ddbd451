"""Prometheus metrics (SPEC section 6), one registry per gateway instance."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger(__name__)

_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the gateway exports; its own registry, so several gateways can share a
    process (tests) without clashing."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "presence_webhooks", "Webhooks received", ["provider", "outcome"], registry=r
        )
        self.events_applied = Counter(
            "presence_events_applied", "Events that changed a device record", registry=r
        )
        self.events_ignored = Counter(
            "presence_events_ignored", "Duplicate, superseded or out-of-window events", registry=r
        )
        self.events_unused = Counter(
            "presence_events_unused",
            "Acked commands the gateway does not use",
            ["provider"],
            registry=r,
        )
        self.states_published = Counter(
            "presence_states_published", "User states published", registry=r
        )
        self.feed_resets = Counter(
            "presence_feed_resets", "Times the pub/sub feed was lost and restored", registry=r
        )
        # reconciliation (SPEC 8), counted on the node that ran the checks
        self.reconcile_checks = Counter(
            "presence_reconcile_checks", "Users answered by a pull API", ["provider"], registry=r
        )
        self.reconcile_corrections = Counter(
            "presence_reconcile_corrections",
            "Users whose shown presence a check corrected",
            ["provider"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "presence_reconcile_errors",
            "Failed pull-API calls (after retries), by kind",
            ["provider", "kind"],
            registry=r,
        )
        self.silence_expired = Counter(
            "presence_silence_expired",
            "Devices taken offline after max_silence_s without an event or a check",
            ["provider"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "presence_webhook_seconds",
            "Webhook handling time",
            ["provider"],
            buckets=_FAST,
            registry=r,
        )
        self.publish_to_send_seconds = Histogram(
            "presence_publish_to_send_seconds",
            "From broker receipt to the frame handed to the socket",
            buckets=_FAST,
            registry=r,
        )
        self.webhooks_out = Counter(
            "presence_webhooks_out",
            "Outbound webhook messages by outcome (delivered, retried, failed, disabled, "
            "skipped, dropped)",
            ["app", "outcome"],
            registry=r,
        )
        self.webhooks_out_depth = Gauge(
            "presence_webhooks_out_queue",
            "Outbound webhook messages waiting, per endpoint (its consumer group)",
            ["app", "endpoint"],
            registry=r,
        )
        self.webhooks_out_lag = Histogram(
            "presence_webhooks_out_lag_seconds",
            "From the state's publish to its webhook delivered",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0),
            registry=r,
        )

        self.gc_pause_seconds = Histogram(
            "presence_gc_pause_seconds",
            "Cyclic garbage collector pauses",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.gc_pause_max = Gauge(
            "presence_gc_pause_max_seconds", "Longest collector pause since start", registry=r
        )
        frozen = Gauge(
            "presence_gc_frozen_objects", "Objects frozen out of the collector", registry=r
        )
        frozen.set_function(gc.get_freeze_count)
        ProcessCollector(registry=r)  # RSS, CPU seconds, open fds
        self._gc_started = 0.0
        self._gc_max = 0.0

    def watch_gc(self) -> None:
        """Time every collector pause (``gc.callbacks``); idempotent."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        generation = info.get("generation", "?")
        self.gc_pause_seconds.labels(str(generation)).observe(pause)
        if pause > 0.05:
            log.warning(
                "collector paused %.0f ms (generation %s, %s collected, %d frozen)",
                pause * 1000,
                generation,
                info.get("collected"),
                gc.get_freeze_count(),
            )
        if pause > self._gc_max:
            self._gc_max = pause
            self.gc_pause_max.set(pause)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
