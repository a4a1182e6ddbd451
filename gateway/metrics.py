"""Prometheus metrics (SPEC section 6), one registry per gateway instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

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

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
