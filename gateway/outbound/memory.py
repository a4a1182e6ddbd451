"""The in-process queue of the memory backend: one bounded FIFO per endpoint."""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.outbound.config import WebhookEndpoint
from gateway.outbound.message import Message


class MemoryQueue:
    """One endpoint's queue; beyond ``max_queue`` the oldest message is dropped (counted)."""

    def __init__(self, endpoint: WebhookEndpoint) -> None:
        self.events = frozenset(endpoint.events)
        self.max = endpoint.max_queue
        self._dropped = 0
        self._taken = 0  # handed to the worker, not done yet
        self._items: deque[Message] = deque()
        self._ready = asyncio.Event()

    def put(self, message: Message) -> None:
        if message.kind not in self.events:
            return
        if len(self._items) + self._taken >= self.max:  # the bound covers those in delivery
            self._dropped += 1
            if not self._items:
                return  # every queued one is being delivered: the newest goes instead
            self._items.popleft()
        self._items.append(message)
        self._ready.set()

    async def take(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages, oldest first; waits up to a second for one."""
        if not self._items:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), 1.0)
            except TimeoutError:
                return []
        out: list[Message] = []
        while self._items and len(out) < limit:
            out.append(self._items.popleft())
        self._taken += len(out)
        return out

    async def done(self, message: Message) -> None:
        self._taken -= 1

    def dropped(self) -> int:
        return self._dropped

    def owns(self, message: Message) -> bool:
        return True  # one process: nobody else delivers

    def forget(self, message: Message) -> None:
        self._taken -= 1

    async def depth(self) -> int:
        return len(self._items) + self._taken

    async def close(self) -> None:
        pass


class MemoryOutbox:
    """Every app's endpoint queues; ``enqueue`` is synchronous, inside the store's apply."""

    def __init__(self) -> None:
        self.queues: dict[str, list[MemoryQueue]] = {}

    def add(self, app: str, endpoint: WebhookEndpoint) -> MemoryQueue:
        queue = MemoryQueue(endpoint)
        self.queues.setdefault(app, []).append(queue)
        return queue

    def wants(self, app: str) -> bool:
        return app in self.queues

    def enqueue(self, app: str, kind: str, state: bytes, at_ms: int) -> None:
        message = Message(app, kind, state, at_ms)
        for queue in self.queues.get(app, ()):
            queue.put(message)
