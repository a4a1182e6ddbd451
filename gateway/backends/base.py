"""The contracts every backend keeps.

A backend is a *store* (the presence map) plus a *broker* (the feed of published states).
The store publishes through its own broker, in the same atomic step as the write where the
backend allows it (Redis: inside the Lua call), so a state is published exactly when it is
stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import msgspec

from gateway.model import DeviceRecord, PresenceEvent, UserState, state_decoder


class PresenceSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[presence]`` table: merge windows shared by every app."""

    offline_grace_ms: int = 0
    session_retention_s: int = 86400
    max_event_age_s: int = 600
    future_skew_s: int = 60  # events stamped further ahead of the gateway clock are ignored
    last_seen_retention_s: int = 2_592_000  # an offline user's last-seen outlives its records
    max_devices_per_user: int = 64  # device records kept per user (oldest offline go first)


class ApplyResult:
    """What one ``apply`` did.

    ``published``: the states published, in the order they were published. A store whose
    broker delivers later (Redis) fills ``payloads`` instead, (user, the state's bytes as
    published): the hub fans those out at once (``Hub.deliver``) and ``published`` decodes
    them only if asked (the webhook route never asks: one decode per state saved).
    """

    __slots__ = ("_published", "applied", "ignored", "payloads")

    def __init__(
        self,
        applied: int = 0,  # events that changed a device record
        ignored: int = 0,  # duplicates, events beaten by a newer record, out of the window
        published: list[UserState] | None = None,
        payloads: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.applied = applied
        self.ignored = ignored
        self._published = published
        self.payloads: list[tuple[str, bytes]] = [] if payloads is None else payloads

    @property
    def published(self) -> list[UserState]:
        if self._published is None:
            self._published = [state_decoder.decode(p) for _, p in self.payloads]
        return self._published

    @property
    def count(self) -> int:
        """How many states were published, without decoding them."""
        return len(self._published) if self._published is not None else len(self.payloads)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ApplyResult):
            return NotImplemented
        return (self.applied, self.ignored, self.published) == (
            other.applied,
            other.ignored,
            other.published,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (
            f"ApplyResult(applied={self.applied}, ignored={self.ignored}, "
            f"published={self.published!r})"
        )


# Called with (app, user, payload) for every published state the broker receives; payload
# is the state's JSON as published (``UserState`` encoded).
MessageHandler = Callable[[str, str, bytes], Awaitable[None] | None]
# Called after the broker lost its feed and subscribed again: states may have been missed.
ResetHandler = Callable[[], Awaitable[None] | None]


class Coordination(Protocol):
    """What the nodes sharing a store coordinate through (reconciliation, SPEC 8).

    Names are short, brace-free strings chosen by the caller (``gateway.reconcile.lease``).
    Every method raises ``StoreUnavailable`` when the store is down.
    """

    async def lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take the lease ``name`` for ``holder``, or renew it if ``holder`` has it, for
        ``ttl_ms``. Contract: True when ``holder`` holds it now; across every node sharing the
        store at most one holder at a time (until ``ttl_ms`` pass without a renewal)."""
        ...

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up if ``holder`` has it (another node may take it at once)."""
        ...

    async def put_note(self, name: str, value: bytes, ttl_ms: int) -> None:
        """Store a small shared value for ``ttl_ms`` (replacing any)."""
        ...

    async def get_note(self, name: str) -> bytes | None:
        """The value of ``name``, None when absent or expired."""
        ...

    async def take_note(self, name: str) -> bytes | None:
        """Read and delete ``name`` atomically: of concurrent takers exactly one gets it."""
        ...

    async def push_work(self, name: str, items: Sequence[str], cap: int) -> int:
        """Add ``items`` to the work set ``name`` (an item already queued stays once, in its
        place); at most ``cap`` items are kept (the newest beyond it are dropped). Returns
        how many of ``items`` are queued now."""
        ...

    async def pop_work(self, name: str, count: int) -> list[str]:
        """Remove and return up to ``count`` items, oldest first; each to exactly one caller."""
        ...

    def scan_users(self, app: str, batch: int = 1000) -> AsyncIterator[list[str]]:
        """Every user the store knows for ``app`` (device records or a last-seen kept), in
        batches of about ``batch``; users added or dropped meanwhile may or may not appear,
        one present throughout appears at least once."""
        ...


class PresenceStore(Coordination, Protocol):
    """The presence map. Every method raises ``StoreUnavailable`` when the store is down."""

    async def apply(
        self, app: str, events: Sequence[PresenceEvent], now_ms: int | None = None
    ) -> ApplyResult:
        """Merge ``events`` into the map atomically per user, and publish changed states.

        Contract: per user all of that user's events are applied in one atomic step; a
        state is published (at most once per call and user) only when its visible part
        changed, with ``v`` greater than every ``v`` published before for that user.
        Events outside ``max_event_age_s`` of ``now_ms`` are ignored. Either the call
        returns and every event was applied, or it raises ``StoreUnavailable``; a raised
        call may have applied some users' events (a retry is harmless: merges are
        idempotent).
        """
        ...

    async def sweep(self, now_ms: int | None = None) -> int:
        """Finish offline grace periods that are due; return how many states it published.

        With ``offline_grace_ms`` > 0, ``apply`` does not publish a user whose last device
        went offline: it marks the user pending until ``now + offline_grace_ms``. A device
        coming back before then cancels it (publishing nothing if the state is as before).
        ``sweep`` publishes the offline of every pending user that is due and still offline.
        Contract: exactly once per grace period, even with many nodes sweeping at once.
        """
        ...

    async def get(self, app: str, users: Sequence[str]) -> list[UserState]:
        """The last published state of each user, in the order asked.

        Unknown users come back as ``UserState(user)`` (offline, since None, v 0).
        """
        ...

    async def records(self, app: str, user: str) -> dict[str, DeviceRecord]:
        """The device records of ``user`` (private: for tests and operators, never watchers)."""
        ...

    async def ping(self) -> None:
        """Return when the store is reachable; raise ``StoreUnavailable`` otherwise."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...

    async def claim_request(self, app: str, key: str, digest: bytes, ttl_ms: int) -> bool:
        """Claim the signed request ``key`` of ``app`` for a body with sha256 ``digest``.

        Contract: True when ``key`` was not claimed within the last ``ttl_ms`` (it is now held
        with ``digest`` for ``ttl_ms``) or is held with the same ``digest`` (a retry: the hold
        is not extended); False when it is held with another digest (a replayed signature
        carrying another body). Atomic across every node sharing the store: of concurrent
        claims of one key with different digests exactly one returns True. ``key`` is
        bounded and brace-free (a hex hash); raises ``StoreUnavailable`` when the store is down.
        """
        ...


class Broker(Protocol):
    """The feed of published states, by interest.

    Contract: after ``subscribe(app, users)`` returns, every state published for those users
    is delivered to the handler (at most once, in publish order per user) until
    ``unsubscribe``. When the feed is lost and restored, the reset handler runs once the
    subscriptions are back, because states published meanwhile were missed.
    """

    def set_handlers(self, on_message: MessageHandler, on_reset: ResetHandler) -> None: ...

    async def subscribe(self, app: str, users: Sequence[str]) -> None: ...

    async def unsubscribe(self, app: str, users: Sequence[str]) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
