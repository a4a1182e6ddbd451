"""The per-connection coalescing outbox (gateway.outbox), without sockets or an event loop."""

from __future__ import annotations

import json

from gateway.model import UserState
from gateway.outbox import PENDING, Outbox, fan_out
from gateway.protocol import frame_payload

HIGH_WATER = 1000


def frame(user: str, v: int) -> bytes:
    """A presence frame as the hub builds it (the bytes only matter by identity here)."""
    return b"\x81\x00presence:%b:%d" % (user.encode(), v)


def watching(*users: str, v: int = 0) -> Outbox:
    box = Outbox(HIGH_WATER, slow_close_after=5.0)
    for user in users:
        box.watching[user] = v
    return box


def test_a_newer_state_replaces_the_unsent_one() -> None:
    """Several states of a user collapse into the latest unsent one; its v is remembered."""
    box = watching("bob")
    assert box.deliver("bob", 1, frame("bob", 1))
    assert box.deliver("bob", 3, frame("bob", 3))
    assert box.pending == {"bob": frame("bob", 3)} and box.watching["bob"] == 3


def test_an_older_or_equal_state_is_never_queued() -> None:
    """A state with a v at or below what the client has or has queued is dropped."""
    box = watching("bob", v=5)
    assert not box.deliver("bob", 5, frame("bob", 5))
    assert not box.deliver("bob", 4, frame("bob", 4))
    assert box.pending == {} and box.watching["bob"] == 5


def test_unwatched_users_and_closed_outboxes_take_nothing() -> None:
    """A state of a user not watched, or for a closed outbox, queues nothing."""
    box = watching("bob")
    assert not box.deliver("carol", 1, frame("carol", 1))
    box.closed = True
    assert not box.deliver("bob", 1, frame("bob", 1))
    assert box.pending == {} and box.watching == {"bob": 0}


def test_states_published_during_the_read_are_held_then_settled() -> None:
    """While its snapshot is read a user's states are held; one newer than the read follows
    the snapshot, one older is dropped."""
    box = watching()
    box.begin_read(["bob", "carol"])
    assert box.watching == {"bob": PENDING, "carol": PENDING}
    assert not box.deliver("bob", 7, frame("bob", 7))  # held, nothing to flush yet
    assert not box.deliver("bob", 6, frame("bob", 6))  # older than the held one: ignored
    assert not box.deliver("carol", 2, frame("carol", 2))
    assert box.pending == {}
    assert box.settle(UserState("bob", v=5))  # the read predates the held state
    assert box.settle(UserState("carol", v=3))  # the read is newer than the held state
    assert box.pending == {"bob": frame("bob", 7)}
    assert box.watching == {"bob": 7, "carol": 3}
    assert not box.held


def test_a_read_older_than_what_the_client_has_is_not_sent() -> None:
    """Settling a stale read of an already watched user says no and changes nothing."""
    box = watching("bob", v=9)
    assert not box.settle(UserState("bob", v=8))
    assert box.watching["bob"] == 9


def test_a_failed_read_forgets_the_users_and_what_was_held() -> None:
    """abort_read drops the users being read and their held states."""
    box = watching()
    box.begin_read(["bob"])
    box.deliver("bob", 2, frame("bob", 2))
    box.abort_read(["bob"])
    assert box.watching == {} and not box.held


def test_adopt_takes_a_known_state_unless_the_client_has_newer() -> None:
    """A repeated watch adopts the hub's state (dropping older queued ones), not a staler one."""
    box = watching("bob")
    box.deliver("bob", 4, frame("bob", 4))
    assert box.adopt("bob", 4)  # equal: the snapshot carries it instead of the queued frame
    assert box.pending == {} and box.watching["bob"] == 4
    assert not box.adopt("bob", 3)
    box.begin_read(["carol"])
    assert not box.adopt("carol", 1)  # being read: the read settles it
    assert box.watching["carol"] == PENDING


def test_unwatch_drops_the_users_and_their_unsent_states() -> None:
    """unwatch returns the users that were watched and forgets their unsent frames."""
    box = watching("bob", "carol")
    box.deliver("bob", 1, frame("bob", 1))
    assert box.unwatch(["bob", "dave"]) == ["bob"]
    assert box.watching == {"carol": 0} and box.pending == {}


def test_take_gives_control_frames_first_then_presence_once() -> None:
    """One write holds the control replies in order, then one frame per user; then nothing."""
    box = watching("bob", "carol")
    box.deliver("bob", 1, frame("bob", 1))
    assert box.queue_control(b"welcome", buffered=0)
    box.deliver("carol", 1, frame("carol", 1))
    assert box.queue_control(b"ok", buffered=0)
    frames, sent = box.take()
    assert frames == [b"welcome", b"ok", frame("bob", 1), frame("carol", 1)] and sent == 2
    assert box.take() == ([], 0) and box.control_bytes == 0


def test_control_frames_are_bounded_while_the_socket_is_behind() -> None:
    """Behind the socket, control frames queue up to high_water bytes (at least one)."""
    box = watching()
    behind = HIGH_WATER + 1
    assert box.queue_control(b"x" * 2000, buffered=behind)  # the first, whatever its size
    assert not box.queue_control(b"y", buffered=behind)  # past the bound: close with 4008
    assert box.control == [b"x" * 2000]
    assert box.queue_control(b"y", buffered=HIGH_WATER)  # a socket not behind takes more
    assert box.queued(buffered=10) == 2001 + 10


def test_behind_counts_from_the_first_time_and_restarts_after_catching_up() -> None:
    """behind() is True while within slow_close_after, None past it, False once caught up."""
    box = watching()
    over = HIGH_WATER + 1
    assert box.behind(over, now=100.0) is True
    assert box.behind(over, now=104.0) is True
    assert box.behind(over, now=105.5) is None  # 5.5 s behind: too slow
    assert box.behind(HIGH_WATER, now=106.0) is False and box.behind_since is None
    assert box.behind(over, now=107.0) is True  # a fresh count
    assert box.behind(over, now=111.0) is True


def test_drop_forgets_what_was_queued() -> None:
    """drop() empties the control and presence queues (a client closed as too slow)."""
    box = watching("bob")
    box.deliver("bob", 1, frame("bob", 1))
    box.queue_control(b"ok", buffered=0)
    box.drop()
    assert box.take() == ([], 0)


def test_rebase_makes_the_read_states_the_baseline_even_lower() -> None:
    """A resync's states replace what is queued, even below v; a user being read holds it."""
    box = watching("bob", v=9)
    box.deliver("bob", 10, frame("bob", 10))
    box.begin_read(["carol"])
    states = {("a", "bob"): UserState("bob", v=2), ("a", "carol"): UserState("carol", v=4)}
    present = box.rebase("a", states)
    assert [st.user for st in present] == ["bob"]
    assert box.watching == {"bob": 2, "carol": PENDING} and box.pending == {}
    assert box.held is not None
    v, held = box.held["carol"]
    assert v == 4 and json.loads(frame_payload(held))["type"] == "presence"


class Recipient:
    """Something that owns an outbox, as a session does."""

    def __init__(self, box: Outbox) -> None:
        self.outbox = box


def test_fan_out_marks_each_recipient_with_a_new_state_dirty_once() -> None:
    """fan_out queues one state on every recipient and reports those with something new."""
    fresh, stale = Recipient(watching("bob")), Recipient(watching("bob", v=8))
    reading = Recipient(watching())
    reading.outbox.begin_read(["bob"])
    dirty: list[Recipient] = []
    fan_out([fresh, stale, reading], "bob", 5, frame("bob", 5), dirty.append)
    assert dirty == [fresh]
    assert fresh.outbox.pending["bob"] == frame("bob", 5)
    assert stale.outbox.pending == {}
    assert reading.outbox.held == {"bob": (5, frame("bob", 5))}
