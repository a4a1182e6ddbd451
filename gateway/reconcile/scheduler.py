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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import msgspec

from gateway.backends.base import PresenceStore
from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.model import PresenceEvent
from gateway.providers.base import ProviderConfig
from gateway.providers.openim import OpenIMConfig
from gateway.providers.rongcloud import RongCloudConfig
from gateway.providers.tencent import TencentConfig
from gateway.reconcile import rules
from gateway.reconcile.base import (
    Answer,
    CredentialsExpired,
    PullClient,
    PullError,
    RateLimited,
    backoff_s,
)
from gateway.reconcile.http import HttpSettings
from gateway.reconcile.lease import DEFAULT_TTL_MS, Lease
from gateway.reconcile.openim import OpenIMClient
from gateway.reconcile.rongcloud import RongCloudClient
from gateway.reconcile.tencent import TencentClient
from gateway.types import clock_ms

log = logging.getLogger(__name__)

QUEUE_CAP = 100_000  # users one work set holds at most
STATUS_TTL_MS = 30 * 86_400_000
FULL_TTL_MS = 86_400_000  # a full pass asked for and not begun within a day is forgotten
READS = 16  # record reads in flight at once
RETRY_BASE_S, RETRY_CAP_S = 1.0, 60.0


class PassStats(msgspec.Struct):
    """One provider's last pass, as ``GET /v1/apps/{app}/reconcile`` shows it."""

    last_pass_at: int | None = None
    checked: int = 0
    corrected: int = 0
    errors: int = 0


_stats_decoder = msgspec.json.Decoder(PassStats)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Target:
    """One app's provider to reconcile or to watch for silence."""

    app: str
    provider: str
    interval_s: float  # the online round's period (also the watched users' minimum)
    silence_ms: int  # 0: off
    make_client: Callable[[], PullClient] | None  # None: no pull API, silence only

    @property
    def name(self) -> str:
        return f"rc/{self.app}/{self.provider}"


def make_client(
    provider: str, table: ProviderConfig, http: HttpSettings | None = None
) -> Callable[[], PullClient] | None:
    """A factory of the pull-API client of ``table``; None without a ``reconcile`` table."""
    if isinstance(table, TencentConfig) and table.reconcile is not None:
        tencent, sdkappid = table.reconcile, table.sdkappid
        return lambda: TencentClient(tencent, sdkappid, http)
    if isinstance(table, RongCloudConfig) and table.reconcile is not None:
        rong, key, secret = table.reconcile, table.app_key, table.app_secret
        return lambda: RongCloudClient(rong, key, secret, http)
    if isinstance(table, OpenIMConfig) and table.reconcile is not None:
        openim = table.reconcile
        return lambda: OpenIMClient(openim, http)
    return None


def targets(
    apps: dict[str, dict[str, ProviderConfig]], http: HttpSettings | None = None
) -> list[Target]:
    """The targets of ``apps`` (app id -> its provider tables by name)."""
    out = []
    for app, tables in apps.items():
        for provider, table in tables.items():
            factory = make_client(provider, table, http)
            silence = table.max_silence_s * 1000
            if factory is None and silence <= 0:
                continue
            reconcile = getattr(table, "reconcile", None)
            interval = float(reconcile.interval_s) if reconcile is not None else 300.0
            out.append(Target(app, provider, interval, silence, factory))
    return out


class Worker:
    """One target's checks; they run only while this node holds the target's lease."""

    def __init__(
        self,
        target: Target,
        store: PresenceStore,
        metrics: Metrics,
        node: str,
        *,
        max_age_ms: int,
        lease_ttl_ms: int = DEFAULT_TTL_MS,
        tick_s: float = 1.0,
    ) -> None:
        self.target = target
        self.store = store
        self.metrics = metrics
        self.lease = Lease(store, target.name, node, lease_ttl_ms)
        self.max_age_ms = max_age_ms
        self.tick_s = tick_s
        self.client: PullClient | None = None
        self.checked_at: dict[str, float] = {}  # user -> monotonic time of its last answer
        self.retries: dict[str, tuple[float, int]] = {}  # user -> (due, failures so far)
        self.stats = PassStats()
        self.round: list[str] = []  # the online round still to check
        self.next_round = 0.0
        self.next_silence = 0.0
        self.full: AsyncIterator[list[str]] | None = None
        self.paused_until = 0.0  # a rate limit or failure: no calls before this
        self.wake = asyncio.Event()
        p = target.provider
        self._checks = metrics.reconcile_checks.labels(p)
        self._corrections = metrics.reconcile_corrections.labels(p)
        self._silenced = metrics.silence_expired.labels(p)
        self.chunk = 50  # users per step: the client batches and rate-limits below this

    @property
    def demand(self) -> str:
        return self.target.name + "/demand"

    @property
    def watched(self) -> str:
        return self.target.name + "/watched"

    @property
    def full_note(self) -> str:
        return self.target.name + "/full"

    @property
    def status_note(self) -> str:
        return self.target.name + "/status"

    async def run(self) -> None:
        """Forever: hold the lease when it is free and work under it."""
        try:
            await self.lease.run(self._work)
        finally:
            if self.client is not None:
                await self.client.aclose()
                self.client = None

    def open(self) -> None:
        """Make the pull-API client (on first use)."""
        if self.target.make_client is not None and self.client is None:
            self.client = self.target.make_client()
            self.chunk = max(self.client.batch_size, 50)

    async def _work(self) -> None:
        self.open()
        self.next_round = 0.0  # a new term starts with a round
        while True:
            try:
                busy = await self._step()
            except StoreUnavailable as exc:
                log.warning("reconcile %s: store unavailable: %s", self.target.name, exc)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick_s):
                        await self.wake.wait()
                self.wake.clear()

    async def _step(self) -> bool:
        """Do the most urgent chunk of work; False when there was none."""
        now = time.monotonic()
        if self.target.silence_ms > 0 and now >= self.next_silence:
            self.next_silence = now + min(30.0, max(1.0, self.target.silence_ms / 10_000))
            await self.sweep_silence()
        if self.client is None or now < self.paused_until:
            return False
        users = await self.store.pop_work(self.demand, self.chunk)
        if users:
            await self.check(users)
            return True
        if now >= self.next_round:
            self.next_round = now + self.target.interval_s
            self._forget(now - 2 * self.target.interval_s)
            online = await self._online_users()
            self.round = sorted(online, key=lambda u: self.checked_at.get(u, float("-inf")))
            if not self.round:
                await self._finish_pass()
        if self.round:
            batch, self.round = self.round[: self.chunk], self.round[self.chunk :]
            await self.check(batch)
            if not self.round:
                await self._finish_pass()
            return True
        if self.full is None and await self.store.take_note(self.full_note) is not None:
            self.full = self.store.scan_users(self.target.app, self.chunk)
        if self.full is not None:
            batch = await anext(self.full, [])  # scan_users yields no empty batch
            if not batch:
                self.full = None
                await self._finish_pass()
                return True
            await self.check(batch)
            return True
        users = await self.store.pop_work(self.watched, self.chunk)
        if users:
            recent = now - self.target.interval_s
            due = [u for u in users if self.checked_at.get(u, float("-inf")) <= recent]
            if due:
                await self.check(due)
            return True
        retry = [u for u, (at, _) in self.retries.items() if at <= now][: self.chunk]
        if retry:
            await self.check(retry)
            return True
        return False

    def _forget(self, before: float) -> None:
        """Drop check times older than ``before`` (such a user sorts first either way) and
        retries beyond ``QUEUE_CAP``, so neither grows with every user ever seen."""
        self.checked_at = {u: at for u, at in self.checked_at.items() if at >= before}
        if len(self.retries) > QUEUE_CAP:
            keep = sorted(self.retries.items(), key=lambda item: item[1][0])[:QUEUE_CAP]
            self.retries = dict(keep)

    async def _online_users(self) -> list[str]:
        """Every user of the app shown online (from the published states)."""
        out: list[str] = []
        async for batch in self.store.scan_users(self.target.app):
            states = await self.store.get(self.target.app, batch)
            out.extend(s.user for s in states if s.status == "online")
        return out

    async def _finish_pass(self) -> None:
        self.stats.last_pass_at = clock_ms()
        await self.store.put_note(self.status_note, _encoder.encode(self.stats), STATUS_TTL_MS)
        self.stats = PassStats()

    async def check(self, users: Sequence[str]) -> int:
        """Ask about ``users`` and apply the answers; returns how many users were corrected."""
        assert self.client is not None
        checked = await self.client.check(users)
        now = clock_ms()
        mono = time.monotonic()
        for user in checked.answers:
            self.checked_at[user] = mono
            self.retries.pop(user, None)
        self._failed(checked.failed, checked.errors, mono)
        self._checks.inc(len(checked.answers))
        self.stats.checked += len(checked.answers)
        self.stats.errors += len(checked.errors)
        corrected = await self.apply(checked.answers, now)
        self._corrections.inc(corrected)
        self.stats.corrected += corrected
        return corrected

    def _failed(self, users: list[str], errors: list[PullError], mono: float) -> None:
        hint = 0.0
        for exc in errors:
            kind = (
                "rate_limited"
                if isinstance(exc, RateLimited)
                else "credentials"
                if isinstance(exc, CredentialsExpired)
                else "error"
            )
            self.metrics.reconcile_errors.labels(self.target.provider, kind).inc()
            hint = max(hint, exc.retry_after_s or 0.0)
            log.warning("reconcile %s: %s: %s", self.target.name, kind, exc)
        for user in users:
            _, failures = self.retries.get(user, (0.0, 0))
            delay = max(hint, backoff_s(failures, RETRY_BASE_S, RETRY_CAP_S))
            self.retries[user] = (mono + delay, failures + 1)
        if errors:
            failures = max((self.retries[u][1] for u in users), default=1)
            self.paused_until = mono + max(hint, backoff_s(failures - 1, 0.2, RETRY_CAP_S))

    async def apply(self, answers: dict[str, Answer], now: int) -> int:
        """Apply ``answers`` (``rules.from_answer``); returns how many users they corrected."""
        if not answers:
            return 0
        gate = asyncio.Semaphore(READS)
        confirm = self.target.silence_ms > 0
        provider, app = self.target.provider, self.target.app

        async def one(user: str, answer: Answer) -> tuple[list[PresenceEvent], bool]:
            async with gate:
                records = await self.store.records(app, user)
            return rules.from_answer(user, records, answer, provider, now, confirm=confirm)

        decided = await asyncio.gather(*(one(u, a) for u, a in answers.items()))
        events = [ev for evs, _ in decided for ev in evs]
        if events:
            await self.store.apply(app, events)
        return sum(1 for _, corrects in decided if corrects)

    async def sweep_silence(self) -> int:
        """Take the devices silent for ``max_silence_s`` offline; returns how many."""
        app, provider = self.target.app, self.target.provider
        now = clock_ms()
        events: list[PresenceEvent] = []
        for user in await self._online_users():
            records = await self.store.records(app, user)
            events += rules.silent(
                user, records, provider, self.target.silence_ms, now, self.max_age_ms
            )
        if events:
            await self.store.apply(app, events)
            self._silenced.inc(len(events))
        return len(events)


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
                    stats = _stats_decoder.decode(raw)
            out[worker.target.provider] = stats
        return out
