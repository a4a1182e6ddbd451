"""The in-memory backend: the whole presence map in one process.

A product feature for single-process deployments and dev mode, not a test double: it keeps
the same contract as Redis and passes the same contract tests. Nothing is shared between
processes, so run exactly one gateway process with it.
"""

from __future__ import annotations

import heapq
import inspect
from collections.abc import AsyncIterator, Sequence

import msgspec

from gateway.backends.base import (
    ApplyResult,
    MessageHandler,
    PresenceSettings,
    ResetHandler,
)
from gateway.backends.claims import Claims
from gateway.backends.coordination import MemoryCoordination
from gateway.model import (
    MAX_MARKS,
    Anchor,
    CustomRecord,
    DeviceRecord,
    PresenceEvent,
    UserState,
    aggregate,
    compact,
    evict,
    is_fresh,
    merge,
    merge_custom,
    next_version,
    prune,
    record_of,
    state_encoder,
    trim,
)
from gateway.outbound.memory import MemoryOutbox
from gateway.outbound.message import kind_of
from gateway.types import clock_ms

FORGET_PER_APPLY = 64  # expired users an apply drops at most (amortized; the sweep does more)
FORGET_PER_SWEEP = 10_000  # and a sweep: bounds one call's pause of the event loop


class _User:
    __slots__ = ("anchors", "custom", "expires", "grace_until", "queued", "records", "state")

    def __init__(self, user: str) -> None:
        self.records: dict[str, DeviceRecord] = {}
        self.anchors: dict[str | None, Anchor] = {}  # the compacted history (model.compact)
        self.custom: CustomRecord | None = None  # the custom status (model.merge_custom)
        self.state = UserState(user)
        self.grace_until: int | None = None  # an offline waiting out offline_grace_ms
        self.expires: int | None = None  # all offline: forgotten once the clock passes this
        self.queued: int | None = None  # the time of its entry in MemoryStore._expiry


def _platforms(state: UserState) -> list[str]:
    return [d.platform for d in state.devices]


class MemoryBroker:
    """Delivers published states to the local hub, by interest."""

    def __init__(self) -> None:
        self._subs: set[tuple[str, str]] = set()
        self._on_message: MessageHandler | None = None

    def set_handlers(self, on_message: MessageHandler, on_reset: ResetHandler) -> None:
        self._on_message = on_message  # the in-process feed is never lost: no reset

    async def subscribe(self, app: str, users: Sequence[str]) -> None:
        self._subs.update((app, u) for u in users)

    async def unsubscribe(self, app: str, users: Sequence[str]) -> None:
        self._subs.difference_update((app, u) for u in users)

    async def publish(self, app: str, user: str, payload: bytes) -> None:
        if self._on_message is not None and (app, user) in self._subs:
            result = self._on_message(app, user, payload)
            if inspect.isawaitable(result):
                await result

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._subs.clear()


class MemoryStore(MemoryCoordination):
    """The presence map as a dict; apply runs without awaiting, so it is atomic per call."""

    def __init__(self, settings: PresenceSettings, broker: MemoryBroker | None = None) -> None:
        self.settings = settings
        self.broker = broker or MemoryBroker()
        self._users: dict[tuple[str, str], _User] = {}
        self._due: list[tuple[int, str, str]] = []  # heap of (grace end, app, user)
        self._expiry: list[tuple[int, str, str]] = []  # heap of (expires, app, user), see _forget
        self.outbox: MemoryOutbox | None = None  # webhooks out: set by the gateway

    async def apply(
        self, app: str, events: Sequence[PresenceEvent], now_ms: int | None = None
    ) -> ApplyResult:
        now = clock_ms() if now_ms is None else now_ms
        max_age = self.settings.max_event_age_s * 1000
        retention = self.settings.session_retention_s * 1000
        result = ApplyResult(published=[])
        touched: dict[str, _User] = {}
        skew = self.settings.future_skew_s * 1000
        max_devices = self.settings.max_devices_per_user
        floor = now - max_age
        folded: dict[str, list[tuple[str, int, int]]] = {}  # intervals trimmed while merging
        moved: set[str] = set()  # the users whose device records changed
        for ev in events:
            if not is_fresh(ev.time, now, max_age, skew):
                result.ignored += 1
                continue
            entry = self._users.get((app, ev.user))
            if entry is not None and entry.expires is not None and entry.expires < now:
                entry = None  # expired (Redis: the key is gone), not yet swept
            if entry is None:
                entry = self._users[(app, ev.user)] = _User(ev.user)
            if ev.custom is not None:  # the custom status: its own record (model.merge_custom)
                custom = merge_custom(entry.custom, (ev.time, ev.custom))
                if custom is entry.custom:
                    result.ignored += 1
                    continue
                entry.custom = custom
                result.applied += 1
                touched[ev.user] = entry
                continue
            current = entry.records.get(ev.device)
            merged = merge(current, record_of(ev))
            if merged is current:
                result.ignored += 1
                continue
            # Bounded as apply.lua does it: a record past twice the marks cap is trimmed at
            # once, and past twice max_devices records the oldest are evicted at once.
            if len(merged.ons) + len(merged.offs) > 2 * MAX_MARKS:
                merged, ended = trim(merged, floor)
                folded.setdefault(ev.user, []).extend((merged.platform, *e) for e in ended)
            entry.records[ev.device] = merged
            if current is None and len(entry.records) > 2 * max_devices:
                for device in evict(entry.records, max_devices):
                    del entry.records[device]
            result.applied += 1
            touched[ev.user] = entry
            moved.add(ev.user)
        grace = self.settings.offline_grace_ms
        for user, entry in touched.items():
            was_online = entry.state.status == "online"
            if user not in moved:  # only the custom changed: the devices shown stay as they are
                if self._publish(entry, entry.state, now):
                    result.published.append(entry.state)
                    self._enqueue(app, was_online, entry.state, now)
                continue
            for device in evict(entry.records, max_devices):
                del entry.records[device]
            entry.records = prune(entry.records, now, retention)
            changed, entry.anchors = compact(
                entry.records, entry.anchors, floor, grace, folded.get(user, ())
            )
            entry.records.update(changed)
            fresh = aggregate(user, entry.records.values(), 0, grace, entry.anchors)
            if grace > 0 and fresh.status == "offline" and entry.state.status == "online":
                if entry.grace_until is None:
                    entry.grace_until = now + grace
                    heapq.heappush(self._due, (entry.grace_until, app, user))
                fresh = entry.state  # the offline waits; a custom change shows at once
            elif entry.grace_until is not None:
                entry.grace_until = None
                if _platforms(fresh) == _platforms(entry.state):
                    fresh = entry.state  # back on the same platforms within the grace
            if self._publish(entry, fresh, now):
                result.published.append(entry.state)
                self._enqueue(app, was_online, entry.state, now)
        for entry in touched.values():
            self._expire_later(app, entry, now)
        self._forget(now, FORGET_PER_APPLY)
        for state in result.published:
            await self.broker.publish(app, state.user, state_encoder.encode(state))
        return result

    def _expire_later(self, app: str, entry: _User, now: int) -> None:
        """Set when ``entry`` is forgotten: never while a device is online; else, as on Redis,
        ``last_seen_retention`` after its last-seen time (its latest offline record)."""
        seen: int | None = None
        for rec in entry.records.values():
            if rec.online:
                entry.expires = None
                return
            if seen is None or rec.time > seen:
                seen = rec.time
        entry.expires = (now if seen is None else seen) + self.settings.last_seen_retention_s * 1000
        if entry.queued is None or entry.expires < entry.queued:
            entry.queued = entry.expires  # one live heap entry per user, so the heap stays small
            heapq.heappush(self._expiry, (entry.expires, app, entry.state.user))

    def _forget(self, now: int, limit: int) -> None:
        """Drop up to ``limit`` users whose expiry passed: they read as unknown again.

        Each user has at most one live entry in the heap (at ``queued``); a user whose
        expiry moved later since is queued again at the new time.
        """
        heap = self._expiry
        while limit > 0 and heap and heap[0][0] < now:
            at, app, user = heapq.heappop(heap)
            entry = self._users.get((app, user))
            if entry is None or entry.queued != at:
                continue  # forgotten already, or superseded by an earlier entry
            entry.queued = None
            limit -= 1
            if entry.expires is None:
                continue  # online again
            if entry.expires < now:
                del self._users[(app, user)]
            else:
                entry.queued = entry.expires
                heapq.heappush(heap, (entry.expires, app, user))

    def __len__(self) -> int:
        """The users held (operators and tests: memory use follows it)."""
        return len(self._users)

    def _publish(self, entry: _User, fresh: UserState, now: int) -> bool:
        """Store ``fresh``'s devices part with the user's custom status as the published state,
        if watchers would see a change."""
        custom = entry.custom[1] or None if entry.custom is not None else None
        state = UserState(fresh.user, fresh.status, fresh.since, fresh.devices, 0, custom)
        if state.visible() == entry.state.visible():
            return False
        entry.state = msgspec.structs.replace(state, v=next_version(entry.state.v, now))
        return True

    def _enqueue(self, app: str, was_online: bool, state: UserState, now: int) -> None:
        """Queue the outbound webhook of a state just published (same step, see outbound)."""
        if self.outbox is not None and self.outbox.wants(app):
            kind = kind_of(was_online, state.status == "online")
            self.outbox.enqueue(app, kind, state_encoder.encode(state), now)

    async def sweep(self, now_ms: int | None = None) -> int:
        now = clock_ms() if now_ms is None else now_ms
        self._forget(now, FORGET_PER_SWEEP)
        published = 0
        while self._due and self._due[0][0] <= now:
            due, app, user = heapq.heappop(self._due)
            entry = self._users.get((app, user))
            if entry is None or entry.grace_until != due:
                continue  # cancelled by a reconnect, or superseded
            entry.grace_until = None
            fresh = aggregate(
                user, entry.records.values(), 0, self.settings.offline_grace_ms, entry.anchors
            )
            was_online = entry.state.status == "online"
            if self._publish(entry, fresh, now):
                self._enqueue(app, was_online, entry.state, now)
                published += 1
                await self.broker.publish(app, user, state_encoder.encode(entry.state))
        return published

    async def get(self, app: str, users: Sequence[str]) -> list[UserState]:
        out = []
        for user in users:
            entry = self._users.get((app, user))
            out.append(entry.state if entry is not None else UserState(user))
        return out

    async def records(self, app: str, user: str) -> dict[str, DeviceRecord]:
        entry = self._users.get((app, user))
        return dict(entry.records) if entry is not None else {}

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def scan_users(self, app: str, batch: int = 1000) -> AsyncIterator[list[str]]:
        """The users of ``app`` not yet forgotten (reconciliation's full pass), in batches."""
        now = clock_ms()
        users = [
            user
            for (a, user), entry in self._users.items()
            if a == app and (entry.expires is None or entry.expires >= now)
        ]
        for i in range(0, len(users), max(batch, 1)):
            yield users[i : i + batch]

    _claims: Claims | None = None  # replay claims (claim_request), made on first use

    async def claim_request(self, app: str, key: str, digest: bytes, ttl_ms: int) -> bool:
        if self._claims is None:
            self._claims = Claims()
        return self._claims.claim((app, key), digest, ttl_ms, clock_ms())
