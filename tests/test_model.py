"""The pure merge rules: the record join, since, compaction, eviction and aggregate."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from hypothesis import given
from hypothesis import strategies as st

from gateway.model import (
    MAX_MARKS,
    Anchor,
    DeviceRecord,
    DeviceView,
    PresenceEvent,
    UserState,
    aggregate,
    compact,
    evict,
    is_fresh,
    merge,
    record_of,
    trim,
)

NOW = 1_763_700_000_000


def event(online: bool, time: int, platform: str = "ios", device: str = "d1") -> PresenceEvent:
    return PresenceEvent("bob", device, platform, online, time)


# One device's events: times close together so ties and repeats are common.
EVENTS = st.builds(
    event,
    online=st.booleans(),
    time=st.integers(NOW - 6, NOW + 6),
    platform=st.sampled_from(["ios", "web"]),
)
HISTORIES = st.lists(EVENTS, min_size=1, max_size=20)

# Several devices' events, for the user's since.
USER_EVENTS = st.builds(
    event,
    online=st.booleans(),
    time=st.integers(NOW - 8, NOW + 8),
    platform=st.sampled_from(["ios", "web"]),
    device=st.sampled_from(["d1", "d2", "d3"]),
)
USER_HISTORIES = st.lists(USER_EVENTS, min_size=1, max_size=24)


def fold(history: Iterable[PresenceEvent]) -> DeviceRecord:
    """The record of a device after ``history``, merged in the given order."""
    records = [record_of(ev) for ev in history]
    return functools.reduce(merge, records[1:], records[0])


def fold_user(history: Iterable[PresenceEvent]) -> dict[str, DeviceRecord]:
    """The records of a user after ``history``, merged in the given order."""
    records: dict[str, DeviceRecord] = {}
    for ev in history:
        records[ev.device] = merge(records.get(ev.device), record_of(ev))
    return records


def online_at(history: Sequence[PresenceEvent], t: int) -> bool:
    """The oracle of one device's status at ms ``t``: its last event up to ``t`` by rank."""
    seen = [record_of(ev).rank() for ev in history if ev.time <= t]
    return bool(seen) and max(seen)[1]


def oracle_since(history: Sequence[PresenceEvent], grace: int) -> tuple[bool, int | None]:
    """The oracle of the user's (online, since), ms by ms from the full history (SPEC 4).

    Online if a device's last event is online. since: the first ms of the run of ms at which
    some device was online that reaches the end, runs apart by fewer than ``grace`` offline ms
    joined; offline: the latest offline time among the devices (last seen).
    """
    devices: dict[str, list[PresenceEvent]] = {}
    for ev in history:
        devices.setdefault(ev.device, []).append(ev)
    end = max(ev.time for ev in history)
    if not any(online_at(evs, end) for evs in devices.values()):
        return False, max(max(record_of(ev).rank() for ev in evs)[0] for evs in devices.values())
    covered = [
        any(online_at(evs, t) for evs in devices.values())
        for t in range(min(ev.time for ev in history), end + 1)
    ]
    start, gap = len(covered) - 1, 0
    for i in range(len(covered) - 1, -1, -1):
        if covered[i]:
            start, gap = i, 0
        else:
            gap += 1
            if gap >= max(grace, 1):
                break
    return True, min(ev.time for ev in history) + start


@given(history=USER_HISTORIES, grace=st.sampled_from([0, 1, 2, 4]), data=st.data())
def test_since_is_the_start_of_the_continuous_online_period(
    history: list[PresenceEvent], grace: int, data: st.DataObject
) -> None:
    """In any arrival order, since is where the run of online ms (gaps < grace joined) began;
    each platform's, where the run of its devices began (a device is on its latest platform)."""
    records = fold_user(data.draw(st.permutations(history)))
    state = aggregate("bob", records.values(), grace=grace)
    assert (state.status == "online", state.since) == oracle_since(history, grace)
    for view in state.devices:
        on_it = [ev for ev in history if records[ev.device].platform == view.platform]
        assert oracle_since(on_it, grace) == (True, view.since)


@given(history=HISTORIES, data=st.data())
def test_device_since_is_when_its_status_began(
    history: list[PresenceEvent], data: st.DataObject
) -> None:
    """A device's since is the first ms of its current run of online ms (or its last offline)."""
    record = fold(data.draw(st.permutations(history)))
    assert (record.online, record.since()) == oracle_since(history, 0)


def test_second_device_then_first_offline_keeps_since() -> None:
    """A second device coming online and the first then going offline do not move since."""
    history = [event(True, NOW - 9), event(True, NOW - 5, "web", "d2"), event(False, NOW - 2)]
    state = aggregate("bob", fold_user(history).values())
    assert state == UserState("bob", "online", NOW - 9, [DeviceView("web", NOW - 5)])


def test_gap_shorter_than_grace_keeps_since() -> None:
    """An offline gap shorter than the grace does not break the period; one as long does."""
    history = [event(True, NOW - 90), event(False, NOW - 50), event(True, NOW - 41)]
    records = fold_user(history).values()
    assert aggregate("bob", records, grace=10).since == NOW - 90
    assert aggregate("bob", records, grace=9).since == NOW - 41
    assert aggregate("bob", records).since == NOW - 41
    # Back online in the ms it went offline: online all along, grace or not.
    tie = fold_user([event(True, NOW - 9), event(False, NOW - 4), event(True, NOW - 4, "web")])
    assert aggregate("bob", tie.values()).since == NOW - 9


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


@given(history=HISTORIES)
def test_record_holds_every_mark(history: list[PresenceEvent]) -> None:
    """An untrimmed record holds every online and offline time; its winner is the last mark."""
    record = fold(history)
    assert record.ons == tuple(sorted({ev.time for ev in history if ev.online}))
    assert record.offs == tuple(sorted({ev.time for ev in history if not ev.online}))
    assert record.marks()[-1] == (record.time, record.online)
    assert record.base is None


def test_merge_returns_current_when_nothing_changes() -> None:
    """A duplicate returns the very same record; an unseen older online is kept as history."""
    current = fold([event(True, NOW - 5), event(False, NOW - 3), event(True, NOW)])
    assert merge(current, record_of(event(True, NOW))) is current
    assert merge(current, record_of(event(False, NOW - 3))) is current
    older = merge(current, record_of(event(True, NOW - 4)))
    assert (older.ons, older.online, older.since()) == ((NOW - 5, NOW - 4, NOW), True, NOW)


def test_is_fresh_is_asymmetric() -> None:
    """Events may be max_age old but only future_skew ahead of the clock."""
    assert is_fresh(NOW - 600, NOW, 600, 60) and not is_fresh(NOW - 601, NOW, 600, 60)
    assert is_fresh(NOW + 60, NOW, 600, 60) and not is_fresh(NOW + 61, NOW, 600, 60)


# -- compaction -------------------------------------------------------------------------------

MAX_AGE = 10


@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2 * MAX_AGE),  # how far the clock moves first
            st.sampled_from(["d1", "d2", "d3"]),
            st.booleans(),
            st.integers(-MAX_AGE, 2),  # event time - now: every event is fresh
        ),
        min_size=1,
        max_size=50,
    ),
    grace=st.sampled_from([0, 3, 12]),
)
def test_compaction_never_changes_what_shows(
    steps: list[tuple[int, str, bool, int]], grace: int
) -> None:
    """Compacting at now - max_age after every change shows what the full history shows."""
    now = NOW
    full: dict[str, DeviceRecord] = {}
    kept: dict[str, DeviceRecord] = {}
    anchors: dict[str | None, Anchor] = {}
    for advance, device, online, offset in steps:
        now += advance
        incoming = record_of(event(online, now + offset, device=device))
        full[device] = merge(full.get(device), incoming)
        merged = merge(kept.get(device), incoming)
        if merged is kept.get(device):
            continue  # the stores compact only when a record changed
        kept[device] = merged
        changed, anchors = compact(kept, anchors, now - MAX_AGE, grace, cap=1000)
        kept.update(changed)
        for name, record in kept.items():
            assert all(t >= now - MAX_AGE for t in (*record.ons, *record.offs))
            assert (record.online, record.since()) == (full[name].online, full[name].since())
        want = aggregate("bob", full.values(), grace=grace)
        assert aggregate("bob", kept.values(), grace=grace, anchors=anchors) == want
    for device, record in kept.items():
        assert record.rank() == full[device].rank()


def test_trim_folds_old_marks_into_base() -> None:
    """Marks older than the floor go; the interval open at the floor is kept as base."""
    record = fold([event(True, NOW - 80), event(False, NOW - 60), event(True, NOW - 50)])
    record = merge(record, record_of(event(True, NOW)))
    trimmed, ended = trim(record, NOW - 10)
    assert (trimmed.ons, trimmed.offs, trimmed.base) == ((NOW,), (), NOW - 50)
    assert ended == [(NOW - 80, NOW - 60)]
    assert trimmed.since() == NOW - 50
    assert trim(record, NOW - 100) == (record, [])


def test_trim_caps_marks() -> None:
    """Beyond the cap the oldest marks are folded too; the since stays."""
    times = tuple(range(NOW, NOW + 3 * MAX_MARKS))
    record = fold([event(True, t) for t in times])
    trimmed, _ = trim(record, NOW)
    assert (trimmed.base, trimmed.ons) == (NOW, times[-MAX_MARKS:])
    assert trimmed.since() == NOW


def test_anchor_keeps_a_chain_through_folded_history() -> None:
    """Phone online, laptop online, phone offline long ago: since is still the phone's online."""
    history = [event(True, NOW - 900), event(True, NOW - 800, "mac", "d2"), event(False, NOW - 700)]
    records = fold_user(history)
    changed, anchors = compact(records, {}, NOW - 100, 0)
    records.update(changed)
    assert all(not r.ons and not r.offs for r in records.values())
    assert anchors == {None: (NOW - 900, NOW - 100), "mac": (NOW - 800, NOW - 100)}
    state = aggregate("bob", records.values(), anchors=anchors)
    assert (state.since, state.devices) == (NOW - 900, [DeviceView("mac", NOW - 800)])
    assert aggregate("bob", records.values()).since == NOW - 800  # without it: wrong
    # With nothing online any more and the floor past them, the anchors are dropped.
    records = {"d1": records["d1"], "d2": merge(records["d2"], record_of(event(False, NOW, "mac")))}
    assert compact(records, anchors, NOW + 10, 0)[1] == {}


# -- eviction and aggregate -------------------------------------------------------------------


def test_evict_drops_oldest_offline_then_oldest_online() -> None:
    """Beyond the cap the oldest offline records go first, then the oldest online."""
    records = {
        "a": fold([event(True, NOW - 5)]),
        "b": fold([event(False, NOW - 1)]),
        "c": fold([event(False, NOW - 9)]),
        "d": fold([event(True, NOW - 7)]),
        "e": fold([event(True, NOW - 7)]),
    }
    assert evict(records, 5) == []
    assert evict(records, 4) == ["c"]
    assert evict(records, 2) == ["c", "b", "d"]
    assert evict(records, 0) == ["c", "b", "d", "e", "a"]


def test_aggregate_uses_each_devices_streak() -> None:
    """since is where the union of all intervals began; a platform, of its devices' intervals."""
    records = [
        fold([event(True, NOW - 50), event(True, NOW - 10, "ios")]),  # online since NOW - 50
        fold([event(True, NOW - 90, "ios"), event(False, NOW - 40, "ios"), event(True, NOW - 30)]),
        fold([event(True, NOW - 20, "web"), event(True, NOW, "web")]),
        fold([event(True, NOW - 99, "mac"), event(False, NOW - 95, "mac")]),  # offline, apart
    ]
    assert aggregate("bob", records, 7) == UserState(
        "bob", "online", NOW - 90, [DeviceView("ios", NOW - 90), DeviceView("web", NOW - 20)], 7
    )


def test_aggregate_offline_is_last_seen() -> None:
    """With no device online, since is the latest offline time."""
    records = [fold([event(False, NOW - 9)]), fold([event(True, NOW - 20), event(False, NOW - 3)])]
    assert aggregate("bob", records) == UserState("bob", "offline", NOW - 3, [], 0)
    assert aggregate("bob", []) == UserState("bob")
