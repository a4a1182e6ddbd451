"""What the HTTP and WebSocket protocols share.

The app's ``Edge`` (the ``[server]`` limits, from the lifespan state), the access log, the
send buffer size, and ``Inbox`` / ``Flag``: what uvicorn needs of its per-connection
``asyncio.Queue`` and ``asyncio.Event``, in a fraction of the memory (a connection may wait
on them for hours).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.config import ServerConfig
from gateway.edge import Edge

SEND_BUFFER = 128 * 1024  # the kernel doubles it

access_log = logging.getLogger("gateway.access")
_default_edge: Edge | None = None


def release_transport(transport: object) -> None:
    """Break asyncio's selector-transport self-cycle (``_read_ready_cb`` is a bound method of
    the transport itself, CPython 3.11; gh-100348): behind ``gc.freeze()`` a closed
    connection's transport, socket and extras would never be collected. uvloop's transports
    have no such attribute."""
    if getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[attr-defined]


def edge_of(app_state: dict[str, Any]) -> Edge:
    """The app's ``Edge`` from the lifespan state (``[server]`` defaults without one)."""
    edge = app_state.get(Edge.STATE_KEY)
    if isinstance(edge, Edge):
        return edge
    global _default_edge
    if _default_edge is None:
        _default_edge = Edge(ServerConfig())
    return _default_edge


class Inbox:
    """What uvicorn needs of its per-connection ``asyncio.Queue``, in a fraction of the memory.

    One consumer (the ASGI app's ``receive``), a handful of items at most.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Any:
        return self._items.pop(0)

    def arrival(self) -> asyncio.Future[None]:
        """A future done once an item is put (await it while ``empty()``)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def get(self) -> Any:
        while not self._items:
            await self.arrival()
        return self.get_nowait()


class Flag:
    """What uvicorn needs of its per-connection ``asyncio.Event`` (writable), slimmer."""

    __slots__ = ("_on", "_waiter")

    def __init__(self, on: bool = True) -> None:
        self._on = on
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._on

    def set(self) -> None:
        self._on = True
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_result(None)
            self._waiter = None

    def clear(self) -> None:
        self._on = False

    async def wait(self) -> None:
        while not self._on:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
