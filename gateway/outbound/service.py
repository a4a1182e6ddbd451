"""``Outbound``: every endpoint's queue and worker on this node, built from the settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.backends.memory import MemoryStore
from gateway.metrics import Metrics
from gateway.outbound.memory import MemoryOutbox
from gateway.outbound.message import LETTERS
from gateway.outbound.worker import Delivery, Source

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

    from gateway.backends.base import PresenceStore
    from gateway.config import Settings

log = logging.getLogger(__name__)


class Outbound:
    """Wires the store's enqueue and owns the delivery workers (``start``/``stop``)."""

    def __init__(self, settings: Settings, store: PresenceStore, metrics: Metrics) -> None:
        self.workers: list[Delivery] = []
        self._client: Redis | RedisCluster | None = None
        apps = [app for app in settings.apps.values() if app.webhooks]
        if not apps:
            return
        if isinstance(store, MemoryStore):
            outbox = store.outbox = MemoryOutbox()
            for app in apps:
                for endpoint in app.webhooks:
                    queue = outbox.add(app.id, endpoint)
                    self.workers.append(Delivery(app.id, endpoint, queue, metrics))
            return
        from redis.asyncio import RedisCluster

        from gateway.backends.redis import RedisStore
        from gateway.outbound import keys
        from gateway.outbound.redis import RedisSource, consumer_name

        assert isinstance(store, RedisStore)
        client = self._client = store.client  # the store's client: its settings and topology
        consumer = consumer_name()
        for app in apps:
            types = sorted({LETTERS[e] for ep in app.webhooks for e in ep.events})
            groups = ";".join(ep.group(app.id) for ep in app.webhooks)
            maxlen = keys.stream_bound(
                max(ep.max_queue for ep in app.webhooks), isinstance(client, RedisCluster)
            )
            store.webhooks[app.id] = b"%d,%b,%b" % (
                maxlen,
                "".join(types).encode(),
                groups.encode(),
            )
            for endpoint in app.webhooks:
                source: Source = RedisSource(
                    client,
                    prefix=store.prefix,
                    app=app.id,
                    group=endpoint.group(app.id),
                    consumer=consumer,
                )
                self.workers.append(Delivery(app.id, endpoint, source, metrics))

    async def start(self) -> None:
        for worker in self.workers:
            worker.start()
        if self.workers:
            log.info("webhooks out: %d endpoint(s)", len(self.workers))

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop()
