"""Who is checked when, on which node (SPEC 8), and the ``max_silence_s`` expiry (SPEC 2).

One ``Worker`` per app and provider with a ``reconcile`` table or ``max_silence_s`` > 0. Every
node runs every worker; each worker works only while its node holds the worker's lease in the
store (``lease.Lease``: exactly one node at a time, another takes over within 20 s of a
death). The holder, in this order of priority, one chunk at a time:

1. users asked for through the API (a work set in the store, so any node may queue them);
2. the online round: every ``interval_s``, every user of the app shown online, least recently
   checked first, as fast as ``rate`` allows (the client's token bucket);
3. a full pass over every user the store knows for the app, when one was asked for: at every
   node's startup, after a node answered a webhook with 503, after a node's feed loss, and by
   the API with no body (a note in the store, so the node that asks need not hold the lease);
4. watched users shown offline or unknown: every node queues the ones its hub knows every
   ``interval_s`` (a work set, so one user is queued once); the holder skips a user checked
   within ``interval_s``;
5. users whose check failed, again after a capped backoff (a provider's hint honoured);
6. with ``max_silence_s``: the silence sweep over the users shown online (their records read),
   every ``max_silence_s / 10`` (at least 1 s, at most 30 s): a silent device goes offline
   that much late at most, stamped at the time it fell silent.

What answers and silences change is ``rules``; everything goes through ``store.apply``. The
stats of the last pass (``last_pass_at``, ``checked``, ``corrected``, ``errors``: everything
the holder did since the pass before) are kept in the store, so ``GET /reconcile`` answers the
same on every node. A failed call never changes presence; its error kind is counted.

By role: ``targets`` (which apps and providers, and their clients), ``worker`` (one target's
checks under its lease, in the order above), ``stats`` (a pass's bookkeeping); here the
``Reconciler``: every worker, the node's triggers, and the API's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence

import msgspec

from gateway.backends.base import PresenceStore
from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.reconcile.lease import DEFAULT_TTL_MS
from gateway.reconcile.stats import PassStats, stats_decoder
from gateway.reconcile.targets import Target, targets
from gateway.reconcile.worker import QUEUE_CAP, Worker

__all__ = ["Reconciler", "targets"]  # ``targets``: for gateway.node

log = logging.getLogger(__name__)

FULL_TTL_MS = 86_400_000  # a full pass asked for and not begun within a day is forgotten


class Reconciler:
    """Every worker of the gateway, the node's triggers, and the API's view."""

    def __init__(
        self,
        targets: Sequence[Target],
        store: PresenceStore,
        metrics: Metrics,
        *,
        watched: Callable[[str], list[str]] | None = None,
        max_age_ms: int = 600_000,
        node: str | None = None,
        lease_ttl_ms: int = DEFAULT_TTL_MS,
        tick_s: float = 1.0,
    ) -> None:
        self.node = node or uuid.uuid4().hex
        self.store = store
        self.watched = watched  # app -> the users this node's clients watch (the hub)
        self.workers = [
            Worker(
                t,
                store,
                metrics,
                self.node,
                max_age_ms=max_age_ms,
                lease_ttl_ms=lease_ttl_ms,
                tick_s=tick_s,
            )
            for t in targets
        ]
        self.tick_s = tick_s
        self._pending_full: set[str] = set()  # apps whose full pass is still to be asked for
        self._tasks: list[asyncio.Task[None]] = []

    def by_app(self, app: str) -> list[Worker]:
        return [w for w in self.workers if w.target.app == app]

    async def start(self) -> None:
        """Start every worker; a full pass of every app is asked for (SPEC 8: at startup)."""
        for worker in self.workers:
            self._pending_full.add(worker.target.app)
            self._tasks.append(
                asyncio.create_task(worker.run(), name=f"reconcile-{worker.target.name}")
            )
        if self.workers:
            self._tasks.append(asyncio.create_task(self._node_loop(), name="reconcile-node"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def request_full(self, app: str | None = None) -> None:
        """Ask for a full pass of ``app`` (every app: None); written to the store as soon as it
        is reachable (this runs right after it was not: a 503, a feed loss)."""
        apps = {w.target.app for w in self.workers} if app is None else {app}
        self._pending_full |= {a for a in apps if self.by_app(a)}
        for worker in self.workers:
            worker.wake.set()

    async def _node_loop(self) -> None:
        """Every node: hand pending full-pass requests and watched users to the holders."""
        next_watch: dict[str, float] = {}
        while True:
            try:
                await self._flush_full()
                now = time.monotonic()
                for worker in self.workers:
                    if worker.target.make_client is None or self.watched is None:
                        continue
                    if now >= next_watch.get(worker.target.name, 0.0):
                        next_watch[worker.target.name] = now + worker.target.interval_s
                        await self._queue_watched(worker)
            except StoreUnavailable:
                pass  # the next tick tries again
            except Exception:
                log.exception("reconcile node loop failed")
            await asyncio.sleep(self.tick_s)

    async def _flush_full(self) -> None:
        for app in sorted(self._pending_full):
            for worker in self.by_app(app):
                await self.store.put_note(worker.full_note, b"1", FULL_TTL_MS)
                worker.wake.set()
            self._pending_full.discard(app)

    async def _queue_watched(self, worker: Worker) -> int:
        assert self.watched is not None
        users = self.watched(worker.target.app)
        shown_off = []
        for i in range(0, len(users), 1000):
            states = await self.store.get(worker.target.app, users[i : i + 1000])
            shown_off += [s.user for s in states if s.status != "online"]
        if shown_off:
            await self.store.push_work(worker.watched, shown_off, QUEUE_CAP)
        return len(shown_off)

    async def queue(self, app: str, users: Sequence[str] | None) -> int:
        """The API: check ``users`` of ``app`` now (None: every known user, as a full pass).
        Returns how many users are queued (per provider; the largest)."""
        workers = [w for w in self.by_app(app) if w.target.make_client is not None]
        if users is None:
            count = 0
            async for batch in self.store.scan_users(app):
                count += len(batch)
            for worker in workers:
                await self.store.put_note(worker.full_note, b"1", FULL_TTL_MS)
                worker.wake.set()  # the holder, if it is this node
            return count
        queued = 0
        for worker in workers:
            queued = max(queued, await self.store.push_work(worker.demand, users, QUEUE_CAP))
            worker.wake.set()
        return queued

    async def status(self, app: str) -> dict[str, PassStats]:
        """The last pass of each reconciled provider of ``app``, as the holder stored it."""
        out = {}
        for worker in self.by_app(app):
            if worker.target.make_client is None:
                continue
            raw = await self.store.get_note(worker.status_note)
            stats = PassStats()
            if raw is not None:
                with contextlib.suppress(msgspec.DecodeError):
                    stats = stats_decoder.decode(raw)
            out[worker.target.provider] = stats
        return out
