"""Presence data and the pure merge rules shared by every backend.

A user's presence is a set of per-device records. A record is the join of every event seen
for its device:

- ``time, online, platform``: the last-writer-wins winner by provider event time, online
  winning a tie (and the platform name breaking any tie left, so the order is total). This is
  the device's status.
- ``off``: the latest offline time seen (None if none).
- ``ons``: the online times at or after ``off``, sorted. While the device is online its
  current streak began at ``ons[0]``: a repeated online (OpenIM's re-sends, Tencent's Login
  with no Disconnect) does not move it, and a late offline moves it to the first online after
  the offline.

The merge is commutative, associative and idempotent, so any permutation, duplication or replay
of the same events ends in the same records, and the visible state is a pure function of the
records. ``trim`` bounds ``ons`` without changing any ``since`` (see its doc).

The Redis backend runs the same rules in Lua (``backends/lua/apply.lua``); the store contract
tests check that both agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

PLATFORMS = frozenset(
    [
        "ios",
        "android",
        "ipad",
        "apad",
        "harmonyos",
        "web",
        "miniprogram",
        "windows",
        "mac",
        "linux",
        "pc",
        "server",
        "unknown",
    ]
)

_PLATFORM_ALIASES = {
    "iphone": "ios",
    "osx": "mac",
    "macos": "mac",
    "websocket": "web",
    "miniweb": "miniprogram",
    "restapi": "server",
    "admin": "server",
    "harmony": "harmonyos",
}


def normalize_platform(name: str) -> str:
    """Map a provider's platform name to one of ``PLATFORMS`` (``unknown`` when unrecognized)."""
    key = name.strip().lower()
    key = _PLATFORM_ALIASES.get(key, key)
    return key if key in PLATFORMS else "unknown"


class PresenceEvent(msgspec.Struct, frozen=True):
    """One device going online or offline, as a provider reported it.

    ``device`` is the provider's device key (platform, session id, connection id). It is
    private: it never reaches a watcher.
    """

    user: str
    device: str
    platform: str
    online: bool
    time: int  # provider event time, ms since the epoch
    reason: str = ""


MAX_ONLINE_TIMES = 32
"""At most this many times in a record's ``ons`` (against abuse; see ``trim``)."""


class DeviceRecord(msgspec.Struct, frozen=True, array_like=True):
    """What is known of one device of a user: the join of all its events (see module doc).

    Invariants: an offline record has ``off == time`` and no ``ons``; an online record has
    ``off`` None or at most ``time``, and ``ons`` sorted, unique, at least ``off``, ending with
    ``time``.
    """

    time: int
    online: bool
    platform: str
    off: int | None  # the latest offline time seen
    ons: tuple[int, ...]  # the online times seen at or after ``off``, sorted

    def rank(self) -> tuple[int, bool, str]:
        """Total order of the last-writer-wins merge: later time, then online, then platform."""
        return (self.time, self.online, self.platform)

    def since(self) -> int:
        """When the device's current status began: its streak's first online, or its offline."""
        return self.ons[0] if self.online and self.ons else self.time


class DeviceView(msgspec.Struct, frozen=True):
    """An online platform as watchers see it."""

    platform: str
    since: int


class UserState(msgspec.Struct, frozen=True):
    """What watchers see of one user (SPEC section 4)."""

    user: str
    status: str = "offline"
    since: int | None = None
    devices: list[DeviceView] = []
    v: int = 0

    def visible(self) -> tuple[str, int | None, tuple[DeviceView, ...]]:
        """The part of the state whose change is worth publishing (everything but ``v``)."""
        return (self.status, self.since, tuple(self.devices))


def merge(current: DeviceRecord | None, incoming: DeviceRecord) -> DeviceRecord:
    """Join two records of one device (see the module doc); ``current`` itself if unchanged."""
    if current is None:
        return incoming
    winner = incoming if incoming.rank() > current.rank() else current
    offs = [t for t in (current.off, incoming.off) if t is not None]
    off = max(offs) if offs else None
    ons = tuple(sorted({t for t in (*current.ons, *incoming.ons) if off is None or t >= off}))
    if winner is current and off == current.off and ons == current.ons:
        return current
    return DeviceRecord(winner.time, winner.online, winner.platform, off, ons)


def record_of(event: PresenceEvent) -> DeviceRecord:
    """The device record one event asserts."""
    if event.online:
        return DeviceRecord(event.time, True, event.platform, None, (event.time,))
    return DeviceRecord(event.time, False, event.platform, event.time, ())


def trim(record: DeviceRecord, floor: int, cap: int = MAX_ONLINE_TIMES) -> DeviceRecord:
    """Bound ``record.ons``: drop the online times after the first that are older than ``floor``,
    then, beyond ``cap`` times, the oldest after the first.

    With ``floor = now - max_event_age`` the first rule is exact: every offline accepted from
    now on is at least ``floor`` (given a clock that does not go back), so it would cut those
    times anyway, and until then the first time stays below them. Beyond ``cap`` the result is
    approximate: a late offline that cuts the first time may then show a later ``since`` than
    the full history would.
    """
    ons = record.ons
    if len(ons) <= 1:
        return record
    kept = [ons[0], *(t for t in ons[1:] if t >= floor)]
    if len(kept) > cap:
        kept = [kept[0], *kept[len(kept) - cap + 1 :]]
    if len(kept) == len(ons):
        return record
    return msgspec.structs.replace(record, ons=tuple(kept))


def is_fresh(event_time: int, now_ms: int, max_age_ms: int) -> bool:
    """Whether an event is inside the accepted window (not too old, not too far ahead)."""
    return abs(now_ms - event_time) <= max_age_ms


def aggregate(user: str, records: Iterable[DeviceRecord], v: int = 0) -> UserState:
    """Derive the visible state of ``user`` from its device records.

    Online if any device is online; ``since`` is then the earliest ``since`` among the online
    devices, else the latest offline time (last seen). Devices are deduplicated by platform
    (earliest ``since`` each) and sorted by platform name.
    """
    online: dict[str, int] = {}
    last_seen: int | None = None
    for rec in records:
        if rec.online:
            since = rec.since()
            prev = online.get(rec.platform)
            online[rec.platform] = since if prev is None else min(prev, since)
        elif last_seen is None or rec.time > last_seen:
            last_seen = rec.time
    if online:
        devices = [DeviceView(platform=p, since=online[p]) for p in sorted(online)]
        return UserState(user, "online", min(online.values()), devices, v)
    return UserState(user, "offline", last_seen, [], v)


def prune(
    records: Mapping[str, DeviceRecord], now_ms: int, retention_ms: int
) -> dict[str, DeviceRecord]:
    """Drop offline records (tombstones) older than the retention period."""
    cutoff = now_ms - retention_ms
    return {d: r for d, r in records.items() if r.online or r.time >= cutoff}


def next_version(previous: int, now_ms: int) -> int:
    """The version of a newly published state.

    At least ``previous + 1``, and never below the current time in ms: a version stays
    monotonic even when a user's records expire or the store loses its data, so a
    long-connected client never discards a newer state as stale.
    """
    return max(previous + 1, now_ms)


state_encoder = msgspec.json.Encoder()
state_decoder = msgspec.json.Decoder(UserState)
