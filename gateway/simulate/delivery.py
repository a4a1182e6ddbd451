"""What the simulator sends: ``Change`` (one device of one user changing state) and
``Delivery`` (one webhook call carrying changes), the words for how a device changed, the
provider facts the sending relies on, and ``Dropper``. Pure: no I/O.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

PROVIDER_NAMES = ("tencent", "rongcloud", "openim", "standard", "easemob", "netease", "wukongim")
FIRST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank")  # the demo page's friends

# What happened to a device (``Change.how``); only LOGIN leaves it online.
LOGIN = "login"
LOGOUT = "logout"
DISCONNECT = "disconnect"  # connection closed (app killed, network lost)
TIMEOUT = "timeout"  # heartbeat timeout
KICKED = "kicked"  # replaced by a login elsewhere
ADMIN_KICK = "admin-kick"  # Tencent OpenKickInstance: every device of the user
CUSTOM_STATUS = "custom-status"  # Tencent CustomStatusChange: sets the custom, not presence
CUSTOM_TEXTS = ("In a meeting", "Lunch", "Focus time", "")  # "" clears; picked by event time

BATCHING = frozenset({"rongcloud", "standard", "wukongim"})  # several events in one post
# Providers whose events the gateway orders by arrival (no event time): never reordered,
# held back or re-sent from further back, and posted one at a time.
ARRIVAL_ORDERED = frozenset({"wukongim"})


def user_ids(n: int) -> list[str]:
    """``alice, bob, carol, dave, erin, frank``, then ``user7, user8, ...``."""
    return [FIRST_NAMES[i] if i < len(FIRST_NAMES) else f"user{i + 1}" for i in range(n)]


def clock_ms() -> int:
    """Wall-clock time in ms since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Change:
    """One device of one user changing state, as a provider reports it."""

    user: str
    device: str  # the device key the gateway derives: platform, session id, platform id, id
    platform: str  # as the gateway shows it (normalized)
    how: str  # LOGIN, LOGOUT, DISCONNECT, TIMEOUT, KICKED, ADMIN_KICK or CUSTOM_STATUS
    time: int  # provider event time, ms since the epoch

    @property
    def online(self) -> bool:
        return self.how == LOGIN


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook call: a provider, the changes it carries, and a note for humans."""

    id: int
    provider: str
    changes: tuple[Change, ...]
    note: str
    style: int = 0  # which of the provider's equivalent wire forms to use (see ``build``)
    msg_id: str = ""  # Standard Webhooks ``webhook-id``; a re-send keeps it
    resend_of: int | None = None  # the delivery this one repeats

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(c.user for c in self.changes))


class Dropper:
    """The webhooks a provider under load never sends: each delivery with chance ``fraction``.

    Seeded apart from the behaviour, so a run with drops makes the same changes as one
    without. A dropped delivery is never retried (its later re-sends are drawn afresh).
    """

    def __init__(self, fraction: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("the drop fraction must be within [0, 1]")
        self.fraction = fraction
        self.rng = random.Random(seed)
        self.offered = 0  # deliveries decided on
        self.dropped = 0
        self.dropped_events = 0

    def drops(self, d: Delivery) -> bool:
        """Whether ``d`` is dropped (counted)."""
        self.offered += 1
        if self.fraction <= 0.0 or self.rng.random() >= self.fraction:
            return False
        self.dropped += 1
        self.dropped_events += len(d.changes)
        return True
