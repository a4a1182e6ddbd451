"""Run some work on exactly one node at a time, under a lease in the store (SPEC 8).

``Lease.run(work)`` loops until cancelled: try to take the lease (every ``poll_s``); once
taken, run ``work`` and renew every ``ttl / 3``; a renewal refused or failing (the store is
down: another node may take over once the ttl passes) cancels the work at once, and the loop
goes back to trying. On cancellation the lease is released, so a node that stops cleanly hands
over at once; one that dies hands over when the ttl runs out. With the defaults (ttl 15 s,
polls every 5 s) another node takes over within 20 s of a death.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.backends.base import Coordination
from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_TTL_MS = 15_000


class Lease:
    """One named lease held for ``holder`` (a node id) while ``work`` runs."""

    def __init__(
        self, coord: Coordination, name: str, holder: str, ttl_ms: int = DEFAULT_TTL_MS
    ) -> None:
        self.coord = coord
        self.name = name
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.renew_s = ttl_ms / 3000
        self.poll_s = ttl_ms / 3000
        self.held = False
        self.terms = 0  # how many times this node took the lease

    async def _take(self) -> bool:
        try:
            return await self.coord.lease(self.name, self.holder, self.ttl_ms)
        except StoreUnavailable as exc:
            log.warning("lease %s: store unavailable: %s", self.name, exc)
            return False

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Hold the lease and run ``work`` while held, forever (until cancelled)."""
        try:
            while True:
                if await self._take():
                    self.held = True
                    self.terms += 1
                    log.info("lease %s taken", self.name)
                    await self._hold(work)
                    self.held = False
                    log.info("lease %s lost", self.name)
                await asyncio.sleep(self.poll_s)
        finally:
            if self.held:
                self.held = False
                with contextlib.suppress(StoreUnavailable):
                    await asyncio.shield(self.coord.release_lease(self.name, self.holder))

    async def _hold(self, work: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(_guarded(self.name, work), name=f"lease-{self.name}")
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.renew_s)
                if done:
                    return  # work ended (it only ends by failing: _guarded logged it)
                if not await self._take():
                    return
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _guarded(name: str, work: Callable[[], Awaitable[None]]) -> None:
    try:
        await work()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("work under lease %s failed", name)
