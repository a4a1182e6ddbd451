"""Posting the simulator's webhooks: the rate, the concurrency, backoff through outages.

The only module of the simulator that posts webhooks (``heal`` asks the query API too): each
``Delivery`` is signed afresh per try (``gateway.simulate.requests.build``) and posted at a
steady rate, up to ``Options.concurrency`` at once, riding out a gateway that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from gateway.simulate.behaviour import Simulation
from gateway.simulate.delivery import ARRIVAL_ORDERED, Delivery, Dropper, clock_ms
from gateway.simulate.requests import Target, build

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class Options:
    """How fast and how long to send."""

    rate: float = 2.0  # webhooks per second
    duration_s: float | None = None  # None: until stopped
    count: int | None = None  # stop after this many webhooks (then flush the late ones)
    concurrency: int = 1  # requests in flight; > 1 delivers out of order, like OpenIM's workers
    timeout_s: float = 5.0  # per request (RongCloud waits 5 s, Tencent 2 s)
    backoff_s: float = 0.5  # first wait after a failure; doubles up to backoff_max_s
    backoff_max_s: float = 5.0
    max_5xx_tries: int = 5  # a 5xx answer is retried (nothing was applied) this many times
    drop: float = 0.0  # share of webhooks never sent (the model still counts their changes)
    drop_seed: int | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """The gateway's answer to one webhook."""

    delivery: Delivery
    status: int
    reason: str  # the error reason from a non-2xx body, else ""


@dataclass
class Summary:
    """What a run did."""

    sent: int = 0  # webhooks answered (any status)
    events: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    non_2xx: int = 0
    network_errors: int = 0  # attempts that got no answer
    undelivered: int = 0  # webhooks given up (stopped while failing)
    dropped: int = 0  # webhooks never sent on purpose (``Options.drop``)
    dropped_events: int = 0
    drop: float = 0.0  # the fraction asked for
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.non_2xx == 0 and self.undelivered == 0

    def line(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (
            f"sent {self.sent} webhooks ({self.events} events) in {self.elapsed_s:.1f} s "
            f"({rate:.1f}/s); non-2xx: {self.non_2xx}"
        )
        bad = sorted((s, n) for s, n in self.statuses.items() if not 200 <= s < 300)
        if bad:
            text += " (" + ", ".join(f"{n}x {s}" for s, n in bad) + ")"
        if self.network_errors:
            text += f"; network errors: {self.network_errors}"
        if self.undelivered:
            text += f"; not delivered: {self.undelivered}"
        if self.drop > 0:
            offered = self.sent + self.dropped
            share = f", {100 * self.dropped / offered:.1f} %" if offered else ""
            text += (
                f"; dropped on purpose (never sent): {self.dropped} webhooks "
                f"({self.dropped_events} events{share})"
            )
        return text


def _reason(response: httpx.Response) -> str:
    """The short reason of a provider-shaped error body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:80]
    if isinstance(data, dict):
        for key in ("ErrorInfo", "errMsg", "error"):
            if data.get(key):
                return str(data[key])[:80]
    return ""


def format_result(result: Result) -> str:
    """One line per webhook: id, provider, users, what happened, status."""
    d = result.delivery
    users = ",".join(d.users)
    users = users if len(users) <= 14 else users[:13] + "…"
    line = f"#{d.id:<5} {d.provider:<9} {users:<14} {d.note:<52} {result.status}"
    return f"{line} {result.reason}" if result.reason else line


def format_dropped(d: Delivery) -> str:
    """The line of a webhook dropped on purpose (never sent)."""
    return format_result(Result(d, 0, "")).rsplit(" ", 1)[0] + " DROPPED (not sent)"


class _Sender:
    """Posts deliveries, retries through outages with backoff, keeps the summary."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        target: Target,
        options: Options,
        stop: asyncio.Event,
        on_result: Callable[[Result], None],
        warn: Callable[[str], None],
    ) -> None:
        self.client, self.target, self.options, self.stop = client, target, options, stop
        self.on_result, self.warn = on_result, warn
        self.summary = Summary()
        self._down_since: float | None = None
        self._jitter = random.Random()

    async def worker(self, queue: asyncio.Queue[Delivery | None]) -> None:
        while (delivery := await queue.get()) is not None:
            await self.deliver(delivery)

    async def deliver(self, d: Delivery) -> None:
        """Send ``d`` (signed afresh each try) until answered; once stopped, try only once."""
        failures = 0
        while True:
            last_try = self.stop.is_set()
            req = build(d, self.target, clock_ms())
            try:
                response = await self.client.request(
                    req.method, req.path, params=req.query, headers=req.headers, content=req.body
                )
            except httpx.TransportError as exc:
                self.summary.network_errors += 1
                failures += 1
                wait = self._backoff(failures)
                self._went_down(exc, None if last_try else wait)
                if last_try:
                    self.summary.undelivered += 1
                    return
                await stopped(self.stop, wait)
                continue
            self._came_back()
            status = response.status_code
            ok = 200 <= status < 300
            self.summary.sent += 1
            self.summary.statuses[status] += 1
            if ok:
                self.summary.events += len(d.changes)
            else:
                self.summary.non_2xx += 1
            self.on_result(Result(d, status, "" if ok else _reason(response)))
            if status < 500 or last_try:
                return
            failures += 1  # 5xx: nothing was applied; a provider that retries would retry
            if failures >= self.options.max_5xx_tries:
                self.summary.undelivered += 1
                return
            await stopped(self.stop, self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        base = min(self.options.backoff_max_s, self.options.backoff_s * 2.0 ** (failures - 1))
        return base * self._jitter.uniform(0.8, 1.2)

    def _went_down(self, exc: httpx.TransportError, wait: float | None) -> None:
        now = time.monotonic()
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        then = "giving up (stopping)" if wait is None else f"next try in {wait:.1f} s"
        if self._down_since is None:
            self._down_since = now
            self.warn(f"gateway unreachable at {self.client.base_url} ({what}); {then}")
        else:
            down = now - self._down_since
            self.warn(f"still unreachable after {down:.0f} s ({what}); {then}")

    def _came_back(self) -> None:
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self._down_since = None
            self.warn(f"gateway reachable again after {down:.1f} s")


async def stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless ``stop`` is set first; whether it was."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


def to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run(
    sim: Simulation,
    target: Target,
    url: str = DEFAULT_URL,
    options: Options | None = None,
    *,
    stop: asyncio.Event | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_drop: Callable[[Delivery], None] | None = None,
    warn: Callable[[str], None] = to_stderr,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Send ``sim``'s webhooks to the gateway at ``url`` until the duration, count or ``stop``.

    Webhooks go out at ``options.rate`` per second, up to ``options.concurrency`` at once,
    except that each ``ARRIVAL_ORDERED`` provider's go one at a time, in order (as WuKongIM
    posts its batches). A gateway that does not answer is reported through ``warn`` and
    retried with backoff; nothing raises. At the end the late deliveries still held back
    are sent too, so the gateway ends in ``sim.expected()``, unless ``options.drop`` > 0:
    each webhook is then, with that chance, never sent (reported through ``on_drop``; it
    takes its slot of the rate all the same), and the gateway is wrong for its users until
    a later webhook or reconciliation sets them right.
    """
    options = options or Options()
    dropper = Dropper(options.drop, options.drop_seed)
    stop = stop or asyncio.Event()
    report = on_result or (lambda result: None)
    started = time.monotonic()
    deadline = started + options.duration_s if options.duration_s else None
    queue: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize=options.concurrency)
    # one queue and one worker per arrival-ordered provider: its posts never overtake
    serial: dict[str, asyncio.Queue[Delivery | None]] = {
        p: asyncio.Queue(maxsize=1) for p in sorted(ARRIVAL_ORDERED)
    }

    async def put(delivery: Delivery) -> None:
        if dropper.drops(delivery):
            if on_drop is not None:
                on_drop(delivery)
            return
        await serial.get(delivery.provider, queue).put(delivery)

    timeout = httpx.Timeout(options.timeout_s)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport) as client:
        sender = _Sender(client, target, options, stop, report, warn)
        workers = [queue] * options.concurrency + list(serial.values())
        async with asyncio.TaskGroup() as group:
            for worker_queue in workers:
                group.create_task(sender.worker(worker_queue))
            try:
                # The model already counts the rest of the last step and the late ones.
                rest = await _produce(sim, options, put, stop, deadline)
                for delivery in [*rest, *sim.flush(clock_ms())]:
                    await put(delivery)
            finally:
                for worker_queue in workers:
                    await worker_queue.put(None)
    summary = sender.summary
    summary.elapsed_s = time.monotonic() - started
    summary.drop, summary.dropped = options.drop, dropper.dropped
    summary.dropped_events = dropper.dropped_events
    return summary


async def _produce(
    sim: Simulation,
    options: Options,
    put: Callable[[Delivery], Awaitable[None]],
    stop: asyncio.Event,
    deadline: float | None,
) -> list[Delivery]:
    """Queue deliveries at the rate (after a stall, resume the rate rather than burst);
    return those of the last step still unsent."""
    interval = 1.0 / options.rate
    pending: deque[Delivery] = deque()
    produced = 0
    next_at = time.monotonic()
    while not stop.is_set() and (options.count is None or produced < options.count):
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if next_at > now:
            until = next_at if deadline is None else min(next_at, deadline)
            await stopped(stop, until - now)
            continue
        if not pending:
            pending.extend(sim.step(clock_ms()))
        await put(pending.popleft())
        produced += 1
        next_at = max(next_at + interval, time.monotonic() - interval)
    return list(pending)
