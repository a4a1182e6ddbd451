"""What the hub needs of a connection (``Client``): a WebSocket session, an SSE stream, a
test's fake. The hub and its interest index see connections only through it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.model import UserState
from gateway.outbox import Outbox
from gateway.types import Key


class Client(Protocol):
    """A connection the hub fans out to; none of its methods awaits."""

    @property
    def outbox(self) -> Outbox: ...

    def flush(self) -> int | None:
        """Write what the outbox holds: the presence frames written, None while behind."""
        ...

    def resync(self, states: Mapping[Key, UserState]) -> bool:
        """Queue a resync of the watch set from ``states``; True when there is one to flush."""
        ...

    def close(self, code: int, reason: str) -> None: ...

    def idle_for(self, now: float) -> float:
        """Seconds since the client's last message (time.monotonic() clock)."""
        ...
