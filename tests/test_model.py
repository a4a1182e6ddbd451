"""The pure merge rules: the record join, since, trim and aggregate, without any store."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import (
    MAX_ONLINE_TIMES,
    DeviceRecord,
    DeviceView,
    PresenceEvent,
    UserState,
    aggregate,
    merge,
    record_of,
    trim,
)

NOW = 1_763_700_000_000


def event(online: bool, time: int, platform: str = "ios") -> PresenceEvent:
    return PresenceEvent("bob", "d1", platform, online, time)


# One device's events: times close together so ties and repeats are common.
EVENTS = st.builds(
    event,
    online=st.booleans(),
    time=st.integers(NOW - 6, NOW + 6),
    platform=st.sampled_from(["ios", "web"]),
)
HISTORIES = st.lists(EVENTS, min_size=1, max_size=20)


def fold(history: Iterable[PresenceEvent]) -> DeviceRecord:
    """The record of a device after ``history``, merged in the given order."""
    records = [record_of(ev) for ev in history]
    return functools.reduce(merge, records[1:], records[0])


def streak_since(history: Sequence[PresenceEvent]) -> tuple[bool, int]:
    """The oracle: (online, since) from walking the events in last-writer-wins order.

    The status is the last event's; ``since`` is when it began: the first online after the last
    offline, or the last offline.
    """
    online, since = False, 0
    for ev in sorted(history, key=lambda ev: record_of(ev).rank()):
        if ev.online != online or not ev.online:
            since = ev.time
        online = ev.online
    return online, since


@given(history=HISTORIES, data=st.data())
def test_since_is_when_the_current_status_began(
    history: list[PresenceEvent], data: st.DataObject
) -> None:
    """In any arrival order, since is the first online after the last offline (or that offline)."""
    record = fold(data.draw(st.permutations(history)))
    assert (record.online, record.since()) == streak_since(history)


@given(a=HISTORIES, b=HISTORIES, c=HISTORIES)
def test_merge_is_a_join(
    a: list[PresenceEvent], b: list[PresenceEvent], c: list[PresenceEvent]
) -> None:
    """The record join is commutative, associative and idempotent."""
    x, y, z = fold(a), fold(b), fold(c)
    assert merge(x, y) == merge(y, x)
    assert merge(merge(x, y), z) == merge(x, merge(y, z))
    assert merge(x, x) is x
    assert merge(merge(x, y), y) == merge(x, y)


def check_invariants(record: DeviceRecord) -> None:
    """Offline: off == time, no online times; online: sorted times >= off, ending at time."""
    if not record.online:
        assert (record.off, record.ons) == (record.time, ())
        return
    assert record.ons == tuple(sorted(set(record.ons)))
    assert record.ons[-1] == record.time
    assert record.off is None or record.off <= record.ons[0]


@given(history=HISTORIES)
def test_record_invariants(history: list[PresenceEvent]) -> None:
    """A merged record keeps the invariants and holds exactly the online times since off."""
    record = fold(history)
    check_invariants(record)
    assert set(record.ons) == {
        ev.time for ev in history if ev.online and (record.off is None or ev.time >= record.off)
    }


def test_merge_returns_current_when_nothing_changes() -> None:
    """A duplicate, or an online older than the offline, returns the very same record."""
    current = fold([event(True, NOW - 5), event(False, NOW - 3), event(True, NOW)])
    assert merge(current, record_of(event(True, NOW))) is current
    assert merge(current, record_of(event(True, NOW - 4))) is current
    assert merge(current, record_of(event(False, NOW - 4))) is current
    assert merge(current, record_of(event(True, NOW - 2))).ons == (NOW - 2, NOW)


# -- trim ------------------------------------------------------------------------------------

MAX_AGE = 10


@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2 * MAX_AGE),  # how far the clock moves first
            st.booleans(),
            st.integers(-MAX_AGE, MAX_AGE),  # event time - now: every event is fresh
        ),
        min_size=1,
        max_size=40,
    )
)
def test_trim_never_changes_since(steps: list[tuple[int, bool, int]]) -> None:
    """Trimming to now - max_age after every change keeps status and since as the full record."""
    now = NOW
    full: DeviceRecord | None = None
    trimmed: DeviceRecord | None = None
    for advance, online, offset in steps:
        now += advance
        incoming = record_of(event(online, now + offset))
        full = merge(full, incoming)
        merged = trim(merge(trimmed, incoming), now - MAX_AGE)
        if merged != trimmed:  # the stores write (and so trim) only a changed record
            trimmed = merged
            assert all(t >= now - MAX_AGE for t in trimmed.ons[1:])
        check_invariants(trimmed)
        assert (trimmed.online, trimmed.since()) == (full.online, full.since())
        assert msgspec.structs.replace(trimmed, ons=()) == msgspec.structs.replace(full, ons=())
        assert set(trimmed.ons) <= set(full.ons)


def test_trim_keeps_first_and_drops_old_middle_times() -> None:
    """Online times after the first that are older than the floor go; the first stays."""
    record = DeviceRecord(NOW, True, "ios", NOW - 90, (NOW - 80, NOW - 50, NOW - 10, NOW))
    assert trim(record, NOW - 10).ons == (NOW - 80, NOW - 10, NOW)
    assert trim(record, NOW - 100) is record
    assert trim(record, NOW + 1).ons == (NOW - 80,)  # never empty
    offline = record_of(event(False, NOW))
    assert trim(offline, NOW) is offline


def test_trim_caps_online_times() -> None:
    """Beyond the cap, the first time and the newest ones are kept."""
    times = tuple(range(NOW, NOW + 3 * MAX_ONLINE_TIMES))
    record = DeviceRecord(times[-1], True, "ios", None, times)
    assert trim(record, NOW).ons == (NOW, *times[-(MAX_ONLINE_TIMES - 1) :])
    assert trim(record, NOW, cap=3).ons == (NOW, times[-2], times[-1])
    assert len(trim(record, NOW).ons) == MAX_ONLINE_TIMES


# -- aggregate -------------------------------------------------------------------------------


def test_aggregate_uses_each_devices_streak() -> None:
    """since is the earliest streak start; a platform shows its devices' earliest streak start."""
    records = [
        fold([event(True, NOW - 50), event(True, NOW - 10, "ios")]),  # ios since NOW - 50
        fold([event(True, NOW - 90, "ios"), event(False, NOW - 40, "ios"), event(True, NOW - 30)]),
        fold([event(True, NOW - 20, "web"), event(True, NOW, "web")]),
        fold([event(True, NOW - 99, "mac"), event(False, NOW - 5, "mac")]),  # offline
    ]
    assert aggregate("bob", records, 7) == UserState(
        "bob", "online", NOW - 50, [DeviceView("ios", NOW - 50), DeviceView("web", NOW - 20)], 7
    )


def test_aggregate_offline_is_last_seen() -> None:
    """With no device online, since is the latest offline time."""
    records = [fold([event(False, NOW - 9)]), fold([event(True, NOW - 20), event(False, NOW - 3)])]
    assert aggregate("bob", records) == UserState("bob", "offline", NOW - 3, [], 0)
    assert aggregate("bob", []) == UserState("bob")
