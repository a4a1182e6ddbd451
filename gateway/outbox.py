"""One connection's coalescing outbox (SPEC section 5), pure: no sockets, no asyncio.

Control replies (welcome, snapshot, ok, error, resync, …) go out in order, then at most one
unsent ``presence`` frame per user, the latest. ``watching[user]`` is the highest ``v``
queued for the client, so a state with a lower or equal ``v`` is never sent after it.

While a user's snapshot is being read (``watching[user] == PENDING``), its published states
are held; the read settles it: a held state newer than the read follows the snapshot, an
older one is dropped.

Bound: while the socket holds more than ``high_water`` unsent bytes the client is behind;
control frames then queue up to ``high_water`` bytes (one, whatever its size), and a client
behind for longer than ``slow_close_after`` seconds is to be closed (4008). The caller
passes the socket's buffered bytes and the clock in; the outbox only counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from gateway.model import UserState, state_encoder
from gateway.protocol import presence_frame
from gateway.types import Key

PENDING = -1  # watching[user] while its snapshot is being read


class Outbox:
    """What is queued for one client, and the version of each watched user it was sent."""

    __slots__ = (
        "behind_since",
        "closed",
        "control",
        "control_bytes",
        "held",
        "high_water",
        "pending",
        "slow_close_after",
        "watching",
    )

    def __init__(self, high_water: int, slow_close_after: float) -> None:
        self.high_water = high_water
        self.slow_close_after = slow_close_after
        self.watching: dict[str, int] = {}
        self.held: dict[str, tuple[int, bytes]] | None = None  # states published while PENDING
        self.pending: dict[str, bytes] = {}  # the latest unsent presence frame per user
        self.control: list[bytes] = []
        self.control_bytes = 0  # the size of ``control``
        self.behind_since: float | None = None
        self.closed = False  # takes nothing more

    # presence

    @property
    def outbox(self) -> Outbox:
        """Itself: an outbox is a fan-out recipient too (``fan_out`` over outboxes)."""
        return self

    def deliver(self, user: str, v: int, frame: bytes) -> bool:
        """Queue a published state; True when there is something new to flush."""
        new: list[Outbox] = []
        fan_out((self,), user, v, frame, new.append)
        return bool(new)

    def begin_read(self, users: Iterable[str]) -> None:
        """Mark new ``users`` as being read: their published states are held meanwhile."""
        for user in users:
            self.watching[user] = PENDING

    def abort_read(self, users: Iterable[str]) -> None:
        """Forget ``users`` whose read failed, and what was held for them."""
        for user in users:
            del self.watching[user]
            if self.held is not None:
                self.held.pop(user, None)

    def settle(self, state: UserState) -> bool:
        """Make ``state`` (read from the store) the client's baseline for its user.

        False when the client already has, or has queued, a newer state of an already
        watched user (the read raced a publish): ``state`` must then not be sent at all.
        """
        user = state.user
        last = self.watching.get(user, PENDING)
        held = self.held.pop(user, None) if self.held else None
        if last != PENDING and state.v < last:
            return False
        if held is not None and held[0] > state.v:  # published after the read: send it next
            self.pending[user] = held[1]
            self.watching[user] = held[0]
        else:
            self.pending.pop(user, None)  # anything queued is older: the state replaces it
            self.watching[user] = state.v
        return True

    def adopt(self, user: str, v: int) -> bool:
        """Take a known state ``v`` of a watched user as the baseline of a repeated watch.

        False (nothing changed) when the user is being read or the client has, or has
        queued, a newer state; else what is queued is older or equal and is dropped.
        """
        last = self.watching.get(user, PENDING)
        if last == PENDING or v < last:
            return False
        self.pending.pop(user, None)
        self.watching[user] = v
        return True

    def unwatch(self, users: Iterable[str]) -> list[str]:
        """Stop watching ``users``; the ones that were watched."""
        gone = [u for u in users if u in self.watching]
        for user in gone:
            del self.watching[user]
            self.pending.pop(user, None)
        return gone

    def rebase(self, app: str, states: Mapping[Key, UserState]) -> list[UserState]:
        """Take freshly read ``states`` as the baseline of the whole watch set (a resync);
        the states to send. A user being read holds its state like a published one."""
        present = []
        for user, last in list(self.watching.items()):
            state = states.get((app, user))
            if state is None:
                continue
            if last == PENDING:  # its snapshot read may predate the reset: hold this one
                self._hold(user, state.v, _presence_frame(state))
                continue
            # the states are the newest the hub knows: the baseline, even below ``last``
            # when the store lost its data; what is queued is older
            self.pending.pop(user, None)
            self.watching[user] = state.v
            present.append(state)
        return present

    def _hold(self, user: str, v: int, frame: bytes) -> None:
        held = self.held
        if held is None:
            held = self.held = {}
        known = held.get(user)
        if known is None or v > known[0]:
            held[user] = (v, frame)

    # control frames and the bound

    def queue_control(self, frame: bytes, buffered: int) -> bool:
        """Queue a control frame behind the others; False (nothing queued: close the client
        with 4008) when it would pass the bound while the socket holds ``buffered`` bytes."""
        size = self.control_bytes + len(frame)
        if size > self.high_water and self.control and buffered > self.high_water:
            return False
        self.control.append(frame)
        self.control_bytes = size
        return True

    def queued(self, buffered: int) -> int:
        """Bytes held for the client, presence aside: the socket's and the control replies."""
        return self.control_bytes + buffered

    def behind(self, buffered: int, now: float | None = None) -> bool | None:
        """Whether the client is behind with ``buffered`` bytes unsent at ``now`` (default:
        the monotonic clock, read only when over the mark — the fan-out's flush asks this
        once per delivery): False (caught up, a later fall behind counts afresh), True, or
        None once it has been behind for longer than ``slow_close_after`` (close it, 4008)."""
        if buffered <= self.high_water:
            self.behind_since = None
            return False
        if now is None:
            now = time.monotonic()
        if self.behind_since is None:
            self.behind_since = now
        elif now - self.behind_since > self.slow_close_after:
            return None
        return True

    def take_one(self) -> bytes | None:
        """The one presence frame queued when it is all there is (the fan-out's common
        case, written without a list), taken; else None and nothing taken."""
        pending = self.pending
        if len(pending) != 1 or self.control:
            return None
        (frame,) = pending.values()
        self.pending = {}
        return frame

    def take(self) -> tuple[list[bytes], int]:
        """Everything queued, in order, for one write, and how many presence frames it has."""
        frames = self.control
        sent = len(self.pending)
        if sent:
            frames += self.pending.values()
            self.pending = {}
        if frames:
            self.control = []
            self.control_bytes = 0
        return frames, sent

    def drop(self) -> None:
        """Forget everything queued (a client closed for being too slow)."""
        self.pending.clear()
        self.control.clear()
        self.control_bytes = 0


class HasOutbox(Protocol):
    """A fan-out recipient: whatever owns an outbox."""

    @property
    def outbox(self) -> Outbox: ...


R = TypeVar("R", bound=HasOutbox)


def fan_out(
    recipients: Iterable[R], user: str, v: int, frame: bytes, dirty: Callable[[R], object]
) -> None:
    """Queue one published state on every recipient; ``dirty`` each that has it new.

    The only copy of the delivery rule, and the hub's hot loop (once per recipient per
    published state): no call per recipient in the common case (watched, newer).
    """
    for recipient in recipients:
        box = recipient.outbox
        watching = box.watching
        last = watching.get(user)
        if last is not None and 0 <= last < v and not box.closed:  # watched, and newer
            watching[user] = v
            box.pending[user] = frame  # replaces an older unsent state
            dirty(recipient)
        elif last == PENDING and not box.closed:  # its snapshot is being read:
            box._hold(user, v, frame)  # held, settled by the read
        # else: not watched, closed, or not newer than what the client has


def _presence_frame(state: UserState) -> bytes:
    return presence_frame(state_encoder.encode(state))
