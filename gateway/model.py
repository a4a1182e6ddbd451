"""Presence data and the pure merge rules shared by every backend.

A user's presence is a set of per-device records plus, once old history has been compacted,
*anchors*. A record is the join of every event seen for its device:

- ``time, online, platform``: the last-writer-wins winner by provider event time, online
  winning a tie (and the platform name breaking any tie left, so the order is total). This is
  the device's status.
- ``ons``, ``offs``: the online and the offline times seen (at or after the record's horizon,
  see ``trim``), sorted. They are the device's *marks*.
- ``base``: set once marks were folded away (``trim``): the start of the device's online
  interval in progress at the horizon, None if it was offline there.

Walking the marks in rank order (time, an offline before an online of the same ms) from
``base`` gives the device's online *intervals*: an online while offline starts one, an offline
while online ends it, ``[start, end)`` in ms; the last is open while the device is online. An
online in the very ms of the offline continues the interval (online wins a tie: the device was
online at every ms). Its start is the device's ``since`` (a repeated online does not move it;
a late offline moves it to the first online after the offline).

The user's ``since`` while online (SPEC 4) is the start of the continuous period in which at
least one device was online at every ms, gaps shorter than ``offline_grace_ms`` bridged: the
intervals of every device (and the anchor) are sorted by start and chained, an interval joining
the chain when it starts less than ``max(grace, 1)`` ms after the chain's end (an overlap or a
touch always joins; any gap breaks it without a grace); ``since`` is the start of the last
chain, the one holding the online devices. So a second device coming online and the first then
going offline do not move it, nor does an offline that a device (any device) ends within the
grace. A platform in ``devices`` shows the same for its own devices: the start of the last
chain of the intervals of the user's devices on that platform (so one phone replacing another
within the grace moves nothing either). Offline, ``since`` is the latest offline time (last
seen).

The record merge is commutative, associative and idempotent (a set union of marks), so any
permutation, duplication or replay of the same events ends in the same records, and the visible
state is a pure function of the records. Compaction (``compact``) keeps them bounded without
changing any ``since``: events older than ``now - max_event_age`` are ignored, so what any
device showed before that *floor* can never change; marks below it are folded into ``base``
and the intervals they ended into the anchors: the user's and each platform's last chain of
everything below the floor (only that chain can still join anything later). Every record of the
user is folded at the same floor, so nothing below it is left anywhere else. Beyond
``MAX_MARKS`` marks a record folds its oldest marks too (against floods; then a late event
before them may be treated approximately).

At most ``max_devices_per_user`` records are kept (``evict``): the oldest offline go first,
then the online with the oldest time.

The user's *custom status* (SPEC 4) is a record of its own, independent of the devices: a
``CustomRecord`` ``(time, text)``, ``text`` "" once cleared (shown as null). A custom event
(a ``PresenceEvent`` whose ``custom`` is not None, see ``custom_event``; its device fields are
unused) asserts ``(time, text)``; the record is the maximum of those seen (``merge_custom``):
the later time wins, and on equal time the larger text in code point order (the UTF-8 byte
order; "" the smallest, so a clear loses a tie to a text). A max is commutative, associative
and idempotent, so any order of the same events ends in the same custom. Device events never
touch it; it lives as long as the user's state does (the user's last-seen retention).

The Redis backend runs the same rules in Lua (``backends/redis/lua/apply.lua``); the store contract
and property tests check that both agree.
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
    """One device going online or offline, as a provider reported it; or, when ``custom`` is
    not None, the user's custom status set (``custom_event``; "" clears it).

    ``device`` is the provider's device key (platform, session id, connection id). It is
    private: it never reaches a watcher. A custom event leaves the device fields empty.
    """

    user: str
    device: str
    platform: str
    online: bool
    time: int  # provider event time, ms since the epoch
    reason: str = ""
    custom: str | None = None  # not None: a custom status event (the device fields unused)


MAX_CUSTOM_BYTES = 100
"""The longest custom status text, in UTF-8 bytes (SPEC 4)."""

CustomRecord = tuple[int, str]
"""A user's custom status: the winning ``(time, text)``; text "" once cleared."""


def custom_event(user: str, text: str | None, time: int) -> PresenceEvent:
    """The event that sets ``user``'s custom status to ``text`` at ``time`` (None or "" clears)."""
    return PresenceEvent(user, "", "", False, time, custom=text or "")


def custom_too_long(text: str) -> bool:
    """Whether ``text`` is over ``MAX_CUSTOM_BYTES`` (or not encodable as UTF-8 at all)."""
    try:
        return len(text.encode("utf-8")) > MAX_CUSTOM_BYTES
    except UnicodeEncodeError:  # a lone surrogate
        return True


def fit_custom(text: str) -> str:
    """``text`` cut to at most ``MAX_CUSTOM_BYTES`` UTF-8 bytes at a character boundary (for a
    provider's text, which cannot be refused usefully); lone surrogates become "?"."""
    return text.encode("utf-8", "replace")[:MAX_CUSTOM_BYTES].decode("utf-8", "ignore")


def merge_custom(current: CustomRecord | None, incoming: CustomRecord) -> CustomRecord:
    """The custom record after ``incoming``: the max by (time, text); ``current`` if it wins."""
    if current is not None and current >= incoming:
        return current
    return incoming


MAX_MARKS = 32
"""At most this many marks (online and offline times) in one record (against floods; ``trim``)."""

Span = tuple[int, int | None]
"""An online interval ``[start, end)``; end None while it lasts."""

Anchor = tuple[int, int]
"""The last chain of a user's (or a platform's) compacted history: ``[start, end)``."""


class DeviceRecord(msgspec.Struct, frozen=True, array_like=True):
    """What is known of one device of a user: the join of all its events (see module doc).

    Invariants: ``ons`` and ``offs`` sorted and unique; the winner is the last mark in rank
    order when there are marks, else ``online`` is ``base is not None``.
    """

    time: int
    online: bool
    platform: str
    ons: tuple[int, ...] = ()  # online times at or after the horizon, sorted
    offs: tuple[int, ...] = ()  # offline times at or after the horizon, sorted
    base: int | None = None  # start of the online interval in progress at the horizon

    def rank(self) -> tuple[int, bool, str]:
        """Total order of the last-writer-wins merge: later time, then online, then platform."""
        return (self.time, self.online, self.platform)

    def marks(self) -> list[tuple[int, bool]]:
        """The marks in rank order: (time, online), an offline before an online of one ms."""
        return sorted([(t, True) for t in self.ons] + [(t, False) for t in self.offs])

    def spans(self) -> list[Span]:
        """The device's online intervals, oldest first (see the module doc)."""
        return _walk(self.base, self.marks())[0]

    def since(self) -> int:
        """When the device's current status began: its open interval's start, or its offline."""
        if self.online:
            spans = self.spans()
            if spans and spans[-1][1] is None:
                return spans[-1][0]
        return self.time


def _walk(start: int | None, marks: Iterable[tuple[int, bool]]) -> tuple[list[Span], int | None]:
    """The intervals of ``marks`` walked from ``start``; and the start of the one still open."""
    spans: list[Span] = []
    for t, online in marks:
        if online:
            if start is None:
                # Back online in the ms it went offline: it never was offline (online wins).
                start = spans.pop()[0] if spans and spans[-1][1] == t else t
        elif start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans, start


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
    custom: str | None = None  # last so positional (user, status, since, devices, v) still fit

    def visible(self) -> tuple[str, int | None, tuple[DeviceView, ...], str | None]:
        """The part of the state whose change is worth publishing (everything but ``v``)."""
        return (self.status, self.since, tuple(self.devices), self.custom)


def _union(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not b or set(b) <= set(a):
        return a
    return tuple(sorted({*a, *b}))


def merge(current: DeviceRecord | None, incoming: DeviceRecord) -> DeviceRecord:
    """Join two records of one device (see the module doc); ``current`` itself if unchanged."""
    if current is None:
        return incoming
    winner = incoming if incoming.rank() > current.rank() else current
    ons, offs = _union(current.ons, incoming.ons), _union(current.offs, incoming.offs)
    bases = [b for b in (current.base, incoming.base) if b is not None]
    base = min(bases) if bases else None
    if winner is current and ons is current.ons and offs is current.offs and base == current.base:
        return current
    return DeviceRecord(winner.time, winner.online, winner.platform, ons, offs, base)


def record_of(event: PresenceEvent) -> DeviceRecord:
    """The device record one event asserts."""
    if event.online:
        return DeviceRecord(event.time, True, event.platform, (event.time,), ())
    return DeviceRecord(event.time, False, event.platform, (), (event.time,))


def trim(
    record: DeviceRecord, floor: int, cap: int = MAX_MARKS
) -> tuple[DeviceRecord, list[tuple[int, int]]]:
    """Fold the marks older than ``floor``, and beyond ``cap`` marks the oldest, into ``base``.

    Returns the record (itself if unchanged) and the intervals the folded marks ended. With
    ``floor = now - max_event_age`` this is exact (see the module doc): every event accepted from
    now on is at least ``floor`` (given a clock that does not go back).
    """
    marks = record.marks()
    count = max(len(marks) - cap, 0)
    while count < len(marks) and marks[count][0] < floor:
        count += 1
    if not count:
        return record, []
    spans, base = _walk(record.base, marks[:count])
    ended = [(s, e) for s, e in spans if e is not None]
    kept = marks[count:]
    return (
        DeviceRecord(
            record.time,
            record.online,
            record.platform,
            tuple(t for t, online in kept if online),
            tuple(t for t, online in kept if not online),
            base,
        ),
        ended,
    )


def _chains(spans: Iterable[Span], grace: int) -> Span | None:
    """The last chain of ``spans``: start and end (None while open); None for no spans."""
    join = max(grace, 1)  # a gap of at least 1 ms breaks the chain without a grace
    start: int | None = None
    end: int | None = None
    for s, e in sorted(spans, key=lambda span: span[0]):
        if start is None or (end is not None and s >= end + join):
            start, end = s, e
        elif end is not None and (e is None or e > end):
            end = e
    if start is None:
        return None
    return (start, end)


def compact(
    records: Mapping[str, DeviceRecord],
    anchors: Mapping[str | None, Anchor],
    floor: int,
    grace: int,
    ended: Iterable[tuple[str, int, int]] = (),
    cap: int = MAX_MARKS,
) -> tuple[dict[str, DeviceRecord], dict[str | None, Anchor]]:
    """Trim every record at ``floor`` and fold what they drop into the anchors.

    ``anchors`` holds the user's (key None) and each platform's. Returns the records that
    changed and the new anchors (see the module doc): for the user and for each platform, the
    last chain of its old anchor, its folded intervals (those ``trim`` returned, and ``ended``:
    ``(platform, start, end)`` folded while merging) and its intervals still open at the floor
    (clipped to it); none where nothing from below the floor can join anything any more.
    """
    changed: dict[str, DeviceRecord] = {}
    spans: dict[str | None, list[Span]] = {None: []}
    for platform, start, end in ended:
        spans[None].append((start, end))
        spans.setdefault(platform, []).append((start, end))
    for device, record in records.items():
        trimmed, folded = trim(record, floor, cap)
        if trimmed is not record:
            changed[device] = trimmed
            spans[None] += folded
            spans.setdefault(record.platform, []).extend(folded)
    if not changed and not spans[None]:
        return changed, dict(anchors)
    for key, anchor in anchors.items():
        spans.setdefault(key, []).append(anchor)
    crossing: set[str | None] = set()
    for device, record in records.items():
        base = changed.get(device, record).base
        if base is not None:
            crossing.update((None, record.platform))
            if base < floor:
                spans[None].append((base, floor))
                spans.setdefault(record.platform, []).append((base, floor))
    out: dict[str | None, Anchor] = {}
    for key, key_spans in spans.items():
        chain = _chains(key_spans, grace)
        if chain is None or chain[1] is None:
            continue
        if key in crossing or chain[1] + max(grace, 1) > floor:
            out[key] = (chain[0], chain[1])
    return changed, out


def evict(records: Mapping[str, DeviceRecord], cap: int) -> list[str]:
    """The devices to drop so at most ``cap`` records remain: the oldest offline first, then
    the online with the oldest time (ties: the smaller device key)."""
    if len(records) <= cap:
        return []
    order = sorted(records, key=lambda d: (records[d].online, records[d].time, d))
    return order[: len(records) - cap]


def is_fresh(event_time: int, now_ms: int, max_age_ms: int, future_skew_ms: int) -> bool:
    """Whether an event is inside the accepted window: at most ``max_age_ms`` old, at most
    ``future_skew_ms`` ahead of the gateway clock."""
    return now_ms - max_age_ms <= event_time <= now_ms + future_skew_ms


def aggregate(
    user: str,
    records: Iterable[DeviceRecord],
    v: int = 0,
    grace: int = 0,
    anchors: Mapping[str | None, Anchor] | None = None,
) -> UserState:
    """Derive the visible state of ``user`` from its device records (see the module doc).

    Online if any device is online; ``since`` is then the start of the last chain of every
    device's intervals and the user's anchor (gaps shorter than ``grace`` joined), else the
    latest offline time (last seen). ``devices``: the online platforms, sorted, each with the
    start of the last chain of its devices' intervals and its anchor.
    """
    anchors = anchors or {}
    online: set[str] = set()
    last_seen: int | None = None
    spans: dict[str | None, list[Span]] = {key: [a] for key, a in anchors.items()}
    every = spans.setdefault(None, [])
    for rec in records:
        rec_spans = rec.spans()
        every += rec_spans
        spans.setdefault(rec.platform, []).extend(rec_spans)
        if rec.online:
            online.add(rec.platform)
        elif last_seen is None or rec.time > last_seen:
            last_seen = rec.time
    if not online:
        return UserState(user, "offline", last_seen, [], v)
    devices = []
    for platform in sorted(online):
        chain = _chains(spans[platform], grace)
        assert chain is not None
        devices.append(DeviceView(platform, chain[0]))
    chain = _chains(every, grace)
    assert chain is not None
    return UserState(user, "online", chain[0], devices, v)


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
