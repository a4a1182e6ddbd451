"""Request claims in one process: the in-memory side of ``PresenceStore.claim_request``.

A bounded table of ``key -> (digest, expiry)``. Expired entries are dropped as new ones come
in; at ``limit`` live entries the one closest to expiry goes first (the contract's window is
then shorter for it, which only a flood of distinct signed requests can cause).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

MAX_CLAIMS = 100_000


class Claims:
    """``claim`` keys with a digest for a while; see ``PresenceStore.claim_request``."""

    def __init__(self, limit: int = MAX_CLAIMS) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._live: dict[Hashable, tuple[bytes, int]] = {}
        self._expiry: list[tuple[int, int, Hashable]] = []  # heap of (expires, order, key)
        self._order = 0  # tie-breaker: keys need not be comparable

    def __len__(self) -> int:
        return len(self._live)

    def claim(self, key: Hashable, digest: bytes, ttl_ms: int, now_ms: int) -> bool:
        """True when ``key`` is new (now held with ``digest``) or held with ``digest``."""
        self._prune(now_ms)
        held = self._live.get(key)
        if held is not None:
            return held[0] == digest
        while len(self._live) >= self.limit:
            self._drop_first()
        expires = now_ms + max(ttl_ms, 1)
        self._live[key] = (digest, expires)
        self._order += 1
        heapq.heappush(self._expiry, (expires, self._order, key))
        return True

    def _prune(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] <= now_ms:
            self._drop_first()

    def _drop_first(self) -> None:
        expires, _, key = heapq.heappop(self._expiry)
        held = self._live.get(key)
        if held is not None and held[1] == expires:
            del self._live[key]
