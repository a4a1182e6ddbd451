"""What a check or a silence changes (SPEC 8, SPEC 2 ``max_silence_s``): pure functions.

Events, never direct writes: whatever these return goes through ``store.apply`` and so through
the one merge (last-writer-wins per device by event time, online winning a tie), on memory and
Redis alike.

- **Whose devices.** The store does not record which provider reported a device: a device
  belongs to provider P unless it was put there by a check of another provider (device key
  ``~reconcile:<Q>:<platform>``). So an app is expected to take presence for one user from
  one IM provider (the usual case); with several IM provider tables on one app, a check of P
  also judges the devices the others reported.
- **A check's answer** (gateway clock ``now`` = when the answer arrived, reason ``reconcile``):
  offline (PushOnline, unknown user included) → each of P's devices shown online goes offline
  at ``now``; online while none of P's devices is online → online at ``now`` on each platform
  the answer names (``unknown`` for none), device key ``~reconcile:<P>:<platform>``; online
  while one is → nothing (an answer that agrees changes nothing), except that with
  ``max_silence_s`` on, each online device on a platform the answer names (all, when it names
  none) gets an online at ``now``: the check confirms it. That changes its record (the
  device's last-heard time is its record's time) but never what watchers see (a repeated
  online does not move ``since``), so nothing is published.
- **A real offline clears the checks' devices** (``cleared``): an offline event of P for a
  user at time t also turns each of the user's ``~reconcile:<P>:*`` devices shown online
  offline at t. As an event at t it is order-independent against the check's own online
  (last writer wins by time); it reaches only the checks' devices that exist when it arrives
  (an offline stamped later than a check that arrives before it — a provider clock ahead of
  ours — leaves that check's device to the next check).
- **Silence** (``silent``): a device of P shown online whose record time (its latest online
  event or confirming check) is ``max_silence_s`` or more ago goes offline with reason
  ``silence`` at ``time + max_silence``: a time that depends only on the record, so two
  nodes expiring it at once write the same event and exactly one state is published. Past
  ``max_event_age`` (a sweep that lagged, e.g. the gateway was down) the event is stamped at
  the oldest accepted time instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.model import DeviceRecord, PresenceEvent
from gateway.reconcile.base import Answer

PREFIX = "~reconcile:"
REASON = "reconcile"
SILENCE = "silence"


def check_device(provider: str, platform: str) -> str:
    """The device key of a device a check of ``provider`` put online on ``platform``."""
    return f"{PREFIX}{provider}:{platform}"


def belongs(device: str, provider: str) -> bool:
    """Whether ``device`` counts as ``provider``'s (see the module doc)."""
    return not device.startswith(PREFIX) or device.startswith(f"{PREFIX}{provider}:")


def from_answer(
    user: str,
    records: Mapping[str, DeviceRecord],
    answer: Answer,
    provider: str,
    now: int,
    *,
    confirm: bool = False,
) -> tuple[list[PresenceEvent], bool]:
    """The events of one answer, and whether they correct what is shown (else they confirm
    or are none)."""
    online = {d: r for d, r in records.items() if r.online and belongs(d, provider)}
    if not answer.online:
        events = [PresenceEvent(user, d, r.platform, False, now, REASON) for d, r in online.items()]
        return events, bool(events)
    if not online:
        platforms = answer.platforms or ("unknown",)
        events = [
            PresenceEvent(user, check_device(provider, p), p, True, now, REASON) for p in platforms
        ]
        return events, True
    if not confirm:
        return [], False
    named = set(answer.platforms)
    return [
        PresenceEvent(user, d, r.platform, True, now, REASON)
        for d, r in online.items()
        if not named or r.platform in named
    ], False


def cleared(
    records: Mapping[str, DeviceRecord], offline: Iterable[PresenceEvent], provider: str
) -> list[PresenceEvent]:
    """The offlines that a real offline of ``provider`` (events of one user) brings to the
    user's devices put online by its checks."""
    latest = max((ev for ev in offline if not ev.online), key=lambda ev: ev.time, default=None)
    if latest is None:
        return []
    mine = f"{PREFIX}{provider}:"
    return [
        PresenceEvent(latest.user, d, r.platform, False, latest.time, latest.reason or REASON)
        for d, r in records.items()
        if r.online and d.startswith(mine) and r.time <= latest.time
    ]


def silent(
    user: str,
    records: Mapping[str, DeviceRecord],
    provider: str,
    silence_ms: int,
    now: int,
    max_age_ms: int,
) -> list[PresenceEvent]:
    """The offlines of ``user``'s devices of ``provider`` silent for ``silence_ms`` by ``now``."""
    if silence_ms <= 0:
        return []
    oldest = now - max_age_ms + 1000  # a little inside the accepted window
    return [
        PresenceEvent(user, d, r.platform, False, max(r.time + silence_ms, oldest), SILENCE)
        for d, r in records.items()
        if r.online and belongs(d, provider) and r.time + silence_ms <= now
    ]
