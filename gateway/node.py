"""``Node``: one gateway process's parts, built from ``Settings``, started and stopped together.

It owns the store and broker (``gateway.backends``), the hub, the heap keeper, the offline
grace sweeper, webhooks out (``gateway.outbound``) and the reconciliation scheduler; the
application (``gateway.app``) starts it in its lifespan and hands each route what it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.backends import open_backend
from gateway.backends.base import Broker, PresenceStore
from gateway.config import Settings
from gateway.edge import Edge
from gateway.errors import StoreUnavailable
from gateway.heap import HeapKeeper
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.outbound.service import Outbound
from gateway.providers import PROVIDERS
from gateway.providers.base import Provider
from gateway.reconcile.scheduler import Reconciler, targets

log = logging.getLogger(__name__)


class Node:
    """The running gateway's parts, shared by every route."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.edge = Edge(settings.server)
        self.metrics = Metrics()
        self.store: PresenceStore
        self.broker: Broker
        self.store, self.broker = open_backend(settings)
        self.hub = Hub(self.store, self.broker, self.metrics, settings.connections)
        self.outbound = Outbound(settings, self.store, self.metrics)  # webhooks out (SPEC 9)
        self.heap = HeapKeeper()
        self._sweeper: asyncio.Task[None] | None = None
        self.providers: dict[tuple[str, str], Provider] = {
            (app.id, name): PROVIDERS[name](table, settings.presence)
            for app in settings.apps.values()
            for name, table in app.providers().items()
        }
        # reconciliation and max_silence_s (SPEC 8, 2): a full pass after a feed loss too
        self.reconciler = Reconciler(
            targets({app.id: app.providers() for app in settings.apps.values()}),
            self.store,
            self.metrics,
            watched=self._watched,
            max_age_ms=settings.presence.max_event_age_s * 1000,
        )
        hub_reset = self.hub.on_reset

        def on_reset() -> None:
            hub_reset()
            self.reconciler.request_full()

        self.broker.set_handlers(self.hub.on_message, on_reset)

    def _watched(self, app: str) -> list[str]:
        """The users this node's clients watch in ``app`` (the reconciler's watched pass)."""
        return [user for a, user in list(self.hub.index) if a == app]

    async def start(self) -> None:
        self.metrics.watch_gc()
        await self.heap.start()
        await self.hub.start()
        await self.broker.start()
        # Always: it also forgets expired users on memory and finishes graces left pending
        # by an earlier config with the grace on.
        grace = self.settings.presence.offline_grace_ms
        self._sweeper = asyncio.create_task(self._sweep(grace), name="grace-sweeper")
        await self.outbound.start()
        await self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.outbound.stop()
        await self.broker.close()
        await self.hub.stop()
        await self.store.close()
        await self.heap.stop()
        self.metrics.unwatch_gc()

    async def _sweep(self, grace_ms: int) -> None:
        """Publish offlines whose grace ran out; every node sweeps, the store dedupes."""
        interval = min(0.25, max(0.02, grace_ms / 4000)) if grace_ms > 0 else 1.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.sweep()
            except StoreUnavailable:
                pass  # retried on the next tick; the grace ends late, never twice
            except Exception:
                log.exception("offline grace sweep failed")
