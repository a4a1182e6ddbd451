"""``Coordination`` (``backends.base``) in one process: leases, notes and work sets in dicts.

The memory backend runs exactly one gateway process, so every lease is taken by its one node;
the rules are still the Redis ones (expiry by ``ttl_ms``, one holder), so the scheduler runs
the same code on both backends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class MemoryCoordination:
    """The in-process ``Coordination`` methods (``MemoryStore`` inherits them)."""

    _leases: dict[str, tuple[str, int]] | None = None  # name -> (holder, expires)
    _notes: dict[str, tuple[bytes, int]] | None = None  # name -> (value, expires)
    _work: dict[str, dict[str, None]] | None = None  # name -> items in arrival order

    async def lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        if self._leases is None:
            self._leases = {}
        now = _now_ms()
        held = self._leases.get(name)
        if held is not None and held[0] != holder and held[1] > now:
            return False
        self._leases[name] = (holder, now + max(ttl_ms, 1))
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        if self._leases is not None and self._leases.get(name, ("",))[0] == holder:
            del self._leases[name]

    async def put_note(self, name: str, value: bytes, ttl_ms: int) -> None:
        if self._notes is None:
            self._notes = {}
        self._notes[name] = (value, _now_ms() + max(ttl_ms, 1))

    async def get_note(self, name: str) -> bytes | None:
        found = (self._notes or {}).get(name)
        if found is None or found[1] <= _now_ms():
            return None
        return found[0]

    async def take_note(self, name: str) -> bytes | None:
        value = await self.get_note(name)
        if self._notes is not None:
            self._notes.pop(name, None)
        return value

    async def push_work(self, name: str, items: Sequence[str], cap: int) -> int:
        if self._work is None:
            self._work = {}
        queued = self._work.setdefault(name, {})
        count = 0
        for item in items:
            if item in queued:
                count += 1
            elif len(queued) < cap:
                queued[item] = None
                count += 1
        return count

    async def pop_work(self, name: str, count: int) -> list[str]:
        queued = (self._work or {}).get(name)
        if not queued:
            return []
        out: list[str] = []
        for item in queued:
            if len(out) >= count:
                break
            out.append(item)
        for item in out:
            del queued[item]
        return out
