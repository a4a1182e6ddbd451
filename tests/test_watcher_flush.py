"""``Watcher.flush``: what one flush writes to the sink, held back or closed when behind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from gateway.backends.base import PresenceSettings
from gateway.backends.memory import MemoryBroker, MemoryStore
from gateway.config import ConnectionsConfig, dev_settings
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.outbox import fan_out
from gateway.protocol import presence_frame
from gateway.watcher import Watcher

HIGH_WATER = 1000


class Recorder:
    """A sink that records what it was handed; ``buffered`` is whatever the test sets."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.sends: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.unsent = 0

    def write(self, frames: list[bytes]) -> None:
        self.writes.append(list(frames))

    def send(self, frame: bytes) -> None:
        self.sends.append(frame)

    def buffered(self) -> int:
        return self.unsent

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@pytest.fixture
async def watcher() -> AsyncIterator[tuple[Watcher, Recorder]]:
    broker = MemoryBroker()
    config = ConnectionsConfig(high_water_bytes=HIGH_WATER, slow_close_after_s=5.0)
    hub = Hub(MemoryStore(PresenceSettings(), broker), broker, Metrics(), config)
    w = Watcher(dev_settings().apps["demo"], hub)
    w.sink = sink = Recorder()
    w.outbox.watching.update(bob=1, carol=1)
    yield w, sink


def publish(w: Watcher, user: str, v: int) -> bytes:
    frame = presence_frame(b'{"user":"%b","v":%d}' % (user.encode(), v))
    fan_out((w,), user, v, frame, lambda _: None)
    return frame


async def test_one_state_alone_is_sent_as_is(watcher: tuple[Watcher, Recorder]) -> None:
    """A flush holding one presence frame and nothing else hands the sink that frame."""
    w, sink = watcher
    frame = publish(w, "bob", 2)
    assert w.flush() == 1
    assert sink.sends == [frame] and sink.writes == []
    assert w.outbox.pending == {} and w.flush() == 0  # nothing twice


async def test_replies_then_states_go_in_one_write_in_order(
    watcher: tuple[Watcher, Recorder],
) -> None:
    """Control replies first, then the latest state of each user, in one write."""
    w, sink = watcher
    publish(w, "bob", 2)
    newest = publish(w, "bob", 3)
    carol = publish(w, "carol", 2)
    assert w.queue_control(b"reply")
    assert w.flush() == 2
    assert sink.writes == [[b"reply", newest, carol]] and sink.sends == []


async def test_a_client_behind_is_held_back_then_closed_4008(
    watcher: tuple[Watcher, Recorder],
) -> None:
    """Past high water a flush writes nothing; behind for longer than the bound: 4008."""
    w, sink = watcher
    frame = publish(w, "bob", 2)
    sink.unsent = HIGH_WATER + 1
    assert w.flush() is None and sink.sends == [] and w.outbox.pending == {"bob": frame}
    sink.unsent = 0
    assert w.flush() == 1 and w.outbox.behind_since is None  # caught up: counted afresh
    publish(w, "bob", 3)
    sink.unsent = HIGH_WATER + 1
    assert w.flush() is None
    w.outbox.behind_since = time.monotonic() - 6.0  # behind for longer than 5 s
    assert w.flush() == 0
    assert sink.closed is not None and sink.closed[0] == 4008
    assert sink.sends == [frame]  # the dropped state was never written
