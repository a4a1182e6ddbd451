"""What every fake pull API shares: the users it answers from, faults, the request log."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Payload = dict[str, Any]
Lookup = Callable[[str], "set[str] | None"]  # user -> online platforms; None: unknown user


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as a fake received it."""

    path: str
    at: float  # time.monotonic() on arrival
    users: tuple[str, ...] = ()  # the users asked about (status requests)
    peer: str = ""  # the client's ip:port: one per connection


@dataclass
class FakePullApi:
    """What every fake shares: state, faults, the request log."""

    users: dict[str, set[str]] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    credentials: set[str] = field(default_factory=set)
    stall_s: float = 30.0
    lookup: Lookup | None = None
    record: bool = True  # False: keep no request log or credentials, only ``calls``
    calls: Counter[str] = field(default_factory=Counter)  # requests per path
    status_path = ""
    _release: asyncio.Event | None = field(default=None, init=False, repr=False)

    def routes(self) -> list[Route]:
        raise NotImplementedError

    @property
    def queries(self) -> list[Seen]:
        """The status requests (credential requests left out)."""
        return [seen for seen in self.requests if seen.path == self.status_path]

    def online(self, user: str, *platforms: str) -> None:
        self.users[user] = set(platforms or ("unknown",))

    def offline(self, user: str) -> None:
        self.users[user] = set()

    def platforms(self, user: str) -> set[str] | None:
        """Where ``user`` is online (empty: offline); None for a user the provider does not know."""
        if self.lookup is not None:
            return self.lookup(user)
        return self.users.get(user)

    def _credential(self, value: str) -> None:
        if self.record:
            self.credentials.add(value)

    def release(self) -> None:
        """End every stalled request (the server calls it before it stops)."""
        if self._release is not None:
            self._release.set()

    def _seen(self, request: Request, path: str, users: Sequence[str] = ()) -> None:
        self.calls[path] += 1
        if not self.record:
            return
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        self.requests.append(Seen(path, time.monotonic(), tuple(users), peer))

    async def _transport_fault(self) -> Response | str | None:
        """The next fault: a Response for the HTTP ones, its name for provider ones."""
        if not self.faults:
            return None
        fault = self.faults.pop(0)
        if fault == "http500":
            return Response("internal error", status_code=500)
        if fault == "http429":
            return Response("slow down", status_code=429)
        if fault == "stall":
            if self._release is None:
                self._release = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.stall_s)
            return Response("stalled", status_code=500)
        return fault
