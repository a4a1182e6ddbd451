"""The Redis backend's connection timeouts, shared by the store and the broker."""

from __future__ import annotations

CONNECT_TIMEOUT_S = 1.0  # webhooks get ~2 s in all (Tencent): fail fast, answer 503
SOCKET_TIMEOUT_S = 2.0
