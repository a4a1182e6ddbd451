"""One target's checks (``Worker``), while its node holds the target's lease.

What comes first is in ``scheduler``'s doc (the API's users, the online round, a full pass,
watched users, retries, the silence sweep); ``rules`` decides what answers and silences change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from gateway.backends.base import PresenceStore
from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.model import PresenceEvent
from gateway.reconcile import rules
from gateway.reconcile.base import (
    Answer,
    CredentialsExpired,
    PullClient,
    PullError,
    RateLimited,
    backoff_s,
)
from gateway.reconcile.lease import DEFAULT_TTL_MS, Lease
from gateway.reconcile.stats import STATUS_TTL_MS, PassStats, stats_encoder
from gateway.reconcile.targets import Target
from gateway.types import clock_ms

log = logging.getLogger(__name__)

QUEUE_CAP = 100_000  # users one work set holds at most
READS = 16  # record reads in flight at once
RETRY_BASE_S, RETRY_CAP_S = 1.0, 60.0


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
        await self.store.put_note(self.status_note, stats_encoder.encode(self.stats), STATUS_TTL_MS)
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
