"""Presence data and the pure merge rules shared by every backend.

A user's presence is a set of per-device records. Each record is last-writer-wins by the
provider's event time, with online winning a tie (and the platform name breaking any tie
left, so the merge is a total order). Because the merge is commutative, associative and
idempotent, any permutation, duplication or replay of the same events ends in the same
records, and the visible state is a pure function of the records.

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


class DeviceRecord(msgspec.Struct, frozen=True, array_like=True):
    """The last known state of one device of a user."""

    time: int
    online: bool
    platform: str

    def rank(self) -> tuple[int, bool, str]:
        """Total order of the last-writer-wins merge: later time, then online, then platform."""
        return (self.time, self.online, self.platform)


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
    """Return the winner of two records of the same device."""
    if current is None or incoming.rank() > current.rank():
        return incoming
    return current


def record_of(event: PresenceEvent) -> DeviceRecord:
    """The device record an event asserts."""
    return DeviceRecord(time=event.time, online=event.online, platform=event.platform)


def is_fresh(event_time: int, now_ms: int, max_age_ms: int) -> bool:
    """Whether an event is inside the accepted window (not too old, not too far ahead)."""
    return abs(now_ms - event_time) <= max_age_ms


def aggregate(user: str, records: Iterable[DeviceRecord], v: int = 0) -> UserState:
    """Derive the visible state of ``user`` from its device records.

    Online if any device is online; ``since`` is then the earliest online time among the
    online devices, else the latest offline time (last seen). Devices are deduplicated by
    platform (earliest online time each) and sorted by platform name.
    """
    online: dict[str, int] = {}
    last_seen: int | None = None
    for rec in records:
        if rec.online:
            prev = online.get(rec.platform)
            online[rec.platform] = rec.time if prev is None else min(prev, rec.time)
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
