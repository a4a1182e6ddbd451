"""Connection churn inside a watcher process (``python -m bench soak``).

A ``Churner`` replaces the process's connections at a steady rate, round robin over its
slots: a fresh connection (a new client id) watching the same users is opened, and once the
server confirmed its watch set the old one is closed cleanly (make before break). So the
watched set stays constant and loss can still be counted per (slot, user):

- both connections of a slot share one ``maxk`` record (what either of them received), so an
  event is lost only when neither got it (nor anything later of that user);
- the old connection is closed with a close frame, after the new one is ready: it reads what
  the server wrote to it before the server took the close, and whatever the server fans out
  after that reaches the new one, whose watch was registered earlier;
- for the gateway dialect the new connection's ``snapshot`` counts as received (its ``since``
  gives the event number): an event applied before the new watch but still queued for the
  old connection when it closed (a server may drop what follows a close frame) is in that
  snapshot.

Closes the churn asked for are counted here, not as the watcher's closes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec

from bench.dialects import GatewaySession, WatcherSession
from bench.hist import Histogram
from bench.procs import LOOPBACK, BenchError

if TYPE_CHECKING:
    from bench.workers import Watchers
    from bench.ws import WsConn

READY_S = 10.0  # a replacement not ready by then failed (the old one stays)
CLOSE_S = 5.0  # an old connection the server did not close by then is aborted
MAX_INFLIGHT = 64  # replacements under way at once; past it the churn falls behind
ID_STRIDE = 10_000_000  # client id of generation g of connection n: n + g * ID_STRIDE


class _State(msgspec.Struct):
    user: str
    since: int | None = None


class _Snapshot(msgspec.Struct):
    type: str
    presence: list[_State] = []


_decode_snapshot = msgspec.json.Decoder(_Snapshot).decode


class SnapshotTap:
    """Stands between a ``WsConn`` and a gateway session: records the snapshot's states as
    received (``maxk``) before the session handles it."""

    __slots__ = ("inner", "watchers")

    def __init__(self, inner: WatcherSession, watchers: Watchers) -> None:
        self.inner = inner
        self.watchers = watchers

    @property
    def stage(self) -> str:
        return self.inner.stage

    @stage.setter
    def stage(self, value: str) -> None:
        self.inner.stage = value

    def on_open(self, ws: WsConn) -> None:
        self.inner.on_open(ws)

    def on_text(self, payload: bytes) -> None:
        if self.inner.stage == "snapshot" and b'"snapshot"' in payload[:40]:
            plan, capacity = self.watchers.plan, self.watchers.capacity
            maxk = self.inner.maxk
            for st in _decode_snapshot(payload).presence:
                if st.since is None:
                    continue
                u = int(st.user[1:])
                k = st.since - plan.base_ms
                if 0 <= k < capacity and k % plan.users == u and k > maxk.get(u, -1):
                    maxk[u] = k
        self.inner.on_text(payload)

    def on_close(self, code: int) -> None:
        self.inner.on_close(code)


class Churner:
    """Replaces ``rate`` connections per second of ``watchers`` (see the module doc)."""

    def __init__(self, watchers: Watchers, rate: float) -> None:
        self.w = watchers
        self.rate = rate
        self.ids = [n for n, _ in watchers.specs]  # slot -> its first client id
        self.generation = [0] * len(watchers.sessions)
        self.busy: set[int] = set()
        # id() of the old sessions the churn is closing -> resolved when closed
        self.retiring: dict[int, asyncio.Future[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.cursor = 0
        self._clear()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _clear(self) -> None:
        self.replaced = 0
        self.failed: Counter[str] = Counter()
        self.behind = 0  # ticks skipped: MAX_INFLIGHT replacements were under way
        self.found_closed = 0  # slots whose connection had closed by itself
        self.aborted = 0  # old connections the server did not close within CLOSE_S
        self.close_codes: Counter[int] = Counter()
        self.setup = Histogram()  # replacement hello..snapshot, us

    def retired(self, sess: WatcherSession, code: int) -> bool:
        """Whether ``sess`` closed because the churn closed it (then it is counted here)."""
        done = self.retiring.pop(id(sess), None)
        if done is None:
            return False
        if not done.done():
            done.set_result(None)
        self.close_codes[code] += 1
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate
        due = time.monotonic()
        while True:
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            slot = self._next_slot()
            if slot is None:
                self.behind += 1
                continue
            self.busy.add(slot)
            task = loop.create_task(self._replace(slot))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _next_slot(self) -> int | None:
        n = len(self.w.sessions)
        if len(self.busy) >= MAX_INFLIGHT or n == 0:
            return None
        for _ in range(n):
            slot = self.cursor % n
            self.cursor += 1
            if slot not in self.busy and self.w.sessions[slot].ready_ns:
                return slot
        return None

    async def _replace(self, slot: int) -> None:
        try:
            await self._swap(slot)
        finally:
            self.busy.discard(slot)

    async def _swap(self, slot: int) -> None:
        w = self.w
        loop = asyncio.get_running_loop()
        old = w.sessions[slot]
        gen = self.generation[slot] + 1
        new = w.factory(self.ids[slot] + gen * ID_STRIDE, old.users, w)
        new.maxk = old.maxk  # one record per slot: what either connection received
        proto: Any = SnapshotTap(new, w) if isinstance(new, GatewaySession) else new
        new.waiter = loop.create_future()
        started = time.monotonic_ns()
        try:
            async with asyncio.timeout(READY_S):
                await loop.create_connection(
                    lambda: w.conn_class(w.port, w.path, proto), LOOPBACK, w.port
                )
                await new.waiter
        except (OSError, TimeoutError, BenchError) as exc:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.failed[f"{what} (waiting for {new.stage})"] += 1
            if new.ws is not None:
                new.ws.abort()
            return
        finally:
            new.waiter = None
        self.setup.record((new.ready_ns - started) // 1000)
        self.generation[slot] = gen
        w.sessions[slot] = new
        self.replaced += 1
        if old.ws is None:
            self.found_closed += 1  # it closed by itself (counted as a watcher close)
            return
        closed = self.retiring[id(old)] = loop.create_future()
        old.ws.close(1000)
        try:
            await asyncio.wait_for(closed, CLOSE_S)
        except TimeoutError:
            self.aborted += 1
            if old.ws is not None:
                old.ws.abort()

    def stats(self) -> dict[str, Any]:
        """What happened since the last call (then cleared), and the connections open now."""
        out = {
            "replaced": self.replaced,
            "failed": dict(self.failed),
            "behind": self.behind,
            "found_closed": self.found_closed,
            "aborted": self.aborted,
            "close_codes": dict(self.close_codes),
            "setup": self.setup,
            "open": sum(1 for s in self.w.sessions if s.ws is not None and s.ready_ns),
            "in_flight": len(self.busy),
        }
        self._clear()
        return out

    async def stop(self) -> dict[str, Any]:
        """Stop replacing; wait for the replacements under way; the last stats."""
        self.task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=READY_S + CLOSE_S + 1)
        return self.stats()
