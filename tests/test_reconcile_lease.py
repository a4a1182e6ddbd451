"""The stores' coordination methods (leases, notes, work sets, user scans) and ``Lease``, on
memory, Redis and Redis Cluster; two stores of one test share the data like two nodes."""

from __future__ import annotations

import asyncio
import contextlib
import time

from gateway.backends.base import PresenceStore
from gateway.model import PresenceEvent
from gateway.reconcile.lease import Lease
from tests.conftest import Backend

APP = "lease"


async def two(backend: Backend) -> tuple[PresenceStore, PresenceStore]:
    """Two nodes' stores (on memory, one process: the same store twice)."""
    a = await backend.store()
    return a, (await backend.store() if backend.is_redis else a)


async def test_lease_has_one_holder_until_it_expires(backend: Backend) -> None:
    """A lease is refused to a second holder while held, renewed for its holder, and free
    once its ttl passed without a renewal or once released."""
    a, b = await two(backend)
    name = f"t/{time.time_ns()}"
    assert await a.lease(name, "A", 400)
    assert not await b.lease(name, "B", 400)
    assert await a.lease(name, "A", 400)  # renewed
    async with asyncio.timeout(5):
        while True:
            if await b.lease(name, "B", 10_000):
                break
            await asyncio.sleep(0.05)
    assert not await a.lease(name, "A", 400)
    await a.release_lease(name, "A")  # not A's: nothing happens
    assert not await a.lease(name, "A", 400)
    await b.release_lease(name, "B")
    assert await a.lease(name, "A", 400)


async def test_notes_and_work_sets(backend: Backend) -> None:
    """A note is read by anyone and taken by exactly one; a work set keeps each item once,
    in arrival order, at most cap of them, each popped by one caller."""
    a, b = await two(backend)
    tag = f"n/{time.time_ns()}"
    assert await a.get_note(tag) is None
    await a.put_note(tag, b"1", 60_000)
    assert await b.get_note(tag) == b"1"
    taken = await asyncio.gather(a.take_note(tag), b.take_note(tag))
    assert sorted(taken, key=lambda t: t or b"") == [None, b"1"]
    assert await a.push_work(tag, ["u1", "u2", "u1"], 3) == 3  # u1 counted twice, kept once
    assert await b.push_work(tag, ["u3", "u4"], 3) == 1  # u4 beyond the cap
    assert await a.pop_work(tag, 2) == ["u1", "u2"]
    assert await b.pop_work(tag, 10) == ["u3"]
    assert await a.pop_work(tag, 10) == []


async def test_scan_users_lists_every_known_user_of_the_app(backend: Backend) -> None:
    """scan_users yields every user with records in the app (offline ones too), and only them."""
    store = await backend.store()
    now = time.time_ns() // 1_000_000
    users = {f"s{i}-{now}" for i in range(30)} | {"we{ird}/%2F-" + str(now)}
    events = [PresenceEvent(u, "d", "ios", i % 2 == 0, now) for i, u in enumerate(sorted(users))]
    await store.apply(APP, events)
    await store.apply("other", [PresenceEvent("elsewhere", "d", "ios", True, now)])
    seen: list[str] = []
    async for batch in store.scan_users(APP, 7):
        seen += batch
    assert set(seen) == users


async def test_lease_runs_work_on_one_node_and_hands_over(backend: Backend) -> None:
    """Of two nodes, only the lease holder runs the work; when it stops without releasing
    (a dead node) the other takes over once the ttl ran out, and at once after a release."""
    a, b = await two(backend)
    name = f"w/{time.time_ns()}"
    running: dict[str, asyncio.Event] = {"A": asyncio.Event(), "B": asyncio.Event()}

    def work(node: str) -> object:
        async def run() -> None:
            running[node].set()
            await asyncio.Event().wait()

        return run

    la, lb = Lease(a, name, "A", 600), Lease(b, name, "B", 600)
    ta = asyncio.create_task(la.run(work("A")))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await running["A"].wait()
    tb = asyncio.create_task(lb.run(work("B")))  # type: ignore[arg-type]
    for _ in range(4):  # several of B's polls and A's renewals
        await asyncio.sleep(lb.poll_s)
    assert not running["B"].is_set()
    la.held = False  # dies: no release
    ta.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ta
    async with asyncio.timeout(5):
        await running["B"].wait()
    running["A"].clear()
    la2 = Lease(a, name, "A", 600)
    ta2 = asyncio.create_task(la2.run(work("A")))  # type: ignore[arg-type]
    tb.cancel()  # a clean stop releases
    with contextlib.suppress(asyncio.CancelledError):
        await tb
    async with asyncio.timeout(5):
        await running["A"].wait()
    ta2.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ta2
