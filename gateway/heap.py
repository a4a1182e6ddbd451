"""Short collector pauses with tens of thousands of long-lived connections.

CPython's cyclic collector walks every tracked object of the generations it collects, and a
full collection at 20,000 open connections walks about a million (hundreds of ms, during
which no frame is sent). Every ``interval`` seconds the keeper collects the young
generations (garbage made in the last second: a few ms) and freezes the survivors with
``gc.freeze()``, so established connections are never walked again and the automatic full
collections only walk what was made since.

The price: a frozen object that later becomes part of a garbage *cycle* is never collected.
Connection teardown therefore breaks its cycles (``gateway.transport``), tests check that a
closed WebSocket or HTTP connection (clean close or reset, keep-alive or not) leaves nothing
for the collector, and ``presence_gc_frozen_objects`` shows the frozen count (it should
follow the connection count, not grow without bound). uvicorn's own HTTP protocols leave one
such cycle behind a reset keep-alive connection (the keep-alive timer and the protocol), so
the gateway runs its own (``cli.uvicorn_options``). Two more are broken at every close
(``transport.common.release_transport``, ``PresenceWebSocketProtocol.connection_lost``):
websockets' parser generator and its connection, and (CPython 3.11's default loop, not
uvloop) a selector transport's read callback, a bound method of itself. Left alone, each
replaced connection kept ~1.8 KB for good (tests/test_churn_leak.py; found by bench soak).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys

log = logging.getLogger(__name__)


class HeapKeeper:
    """Owns the periodic collect-and-freeze task.

    While connections are being set up (the heap grew by ``burst`` allocator blocks a second
    or more) it ticks every ``fast`` seconds instead: CPython's automatic full collections then come
    about once a second, each walking everything made since the last freeze, so a tick a
    second let them walk a second of connection setup (40 ms at 1,600 connections/s on a
    slow core; an idle connection is ~45 tracked objects).
    """

    def __init__(self, interval: float = 1.0, fast: float = 0.2, burst: int = 10_000) -> None:
        self.interval = interval
        self.fast = min(fast, interval)
        self.burst = burst
        self._blocks = sys.getallocatedblocks()  # at the last tick
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="heap-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            gc.unfreeze()  # hand everything back to the collector (tests, restarts)

    async def _run(self) -> None:
        wait = self.interval
        while True:
            await asyncio.sleep(wait)
            wait = self.tick(wait)

    def tick(self, elapsed: float) -> float:
        """Collect the young generations and freeze the survivors of the last ``elapsed``
        seconds; the seconds to wait for the next tick."""
        gc.collect(1)  # the young generations: garbage of the last tick, cheaply
        # How much the heap grew since the last tick, in allocator blocks (an object is one
        # or a few). Not len(gc.get_objects(2)): it would hand out references to objects
        # another thread is still building (a tuple from a generator then fails with
        # SystemError in _PyTuple_Resize); gc.get_freeze_count() walks every frozen object.
        blocks = sys.getallocatedblocks()
        grown, self._blocks = blocks - self._blocks, blocks
        gc.freeze()
        return self.fast if grown >= self.burst * elapsed else self.interval
