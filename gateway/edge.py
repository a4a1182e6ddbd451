"""The network edge: who a client is, how many connections it may hold, what may be logged.

Pure helpers, no I/O: ``gateway.transport`` (the uvicorn protocols) and ``gateway.app`` use
them. The client address of SPEC section 3 is the TCP peer, unless that peer is a trusted
proxy: then the right-most ``X-Forwarded-For`` entry that is not a trusted proxy.
``Forwarded`` is never read (no proxy we are told to trust is assumed to write it).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.providers.base import Network, ip_allowed, parse_networks

if TYPE_CHECKING:
    from gateway.config import ServerConfig

log = logging.getLogger(__name__)

# uvicorn's and websockets' own per-connection lines carry the client ip:port and the path
# with its query string (a token may be in it); the protocols log to this logger instead,
# which lets through only warnings and errors (none of which name the client).
quiet_log = logging.getLogger("gateway.edge.server")
quiet_log.setLevel(logging.WARNING)

_SECRET_PATH = re.compile(r"(/webhooks/(?:openim|wukongim))/[^?]*")


def redact_path(path: str) -> str:
    """A path safe to log: OpenIM and WuKongIM may carry their token as a path segment."""
    return _SECRET_PATH.sub(r"\1/…", path)


def is_loopback(host: str) -> bool:
    """Whether the bind address ``host`` is a loopback one (127.0.0.0/8, ::1, localhost)."""
    host = host.strip()
    if host.lower() == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _address(entry: str) -> str | None:
    """One ``X-Forwarded-For`` entry as a normalized IP (ports and brackets dropped)."""
    entry = entry.strip()
    if entry.startswith("["):  # [v6]:port
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:  # v4:port
        entry = entry.partition(":")[0]
    try:
        addr = ipaddress.ip_address(entry)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


class ClientResolver:
    """The client address of a request, from its TCP peer and ``[server] trusted_proxies``."""

    __slots__ = ("trusted",)

    def __init__(self, trusted_proxies: list[str]) -> None:
        self.trusted: tuple[Network, ...] = parse_networks(trusted_proxies)

    def is_trusted(self, peer: str | None) -> bool:
        return bool(self.trusted) and ip_allowed(peer, self.trusted)

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The peer, or for a trusted-proxy peer the right-most untrusted forwarded entry.

        A forwarded chain whose right-most untrusted entry is not an address gives None (an
        unknown address, which no allow-list admits): failing closed beats guessing.
        """
        if not self.is_trusted(peer):
            return peer
        entries: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                entries.extend(value.decode("latin-1").split(","))
        found = peer
        for entry in reversed(entries):
            found = _address(entry)
            if found is None or not ip_allowed(found, self.trusted):
                return found
        return found  # every hop is a trusted proxy: the left-most one started it


class Slot:
    """One open connection's place in ``ConnectionLimits``; ``release`` is idempotent."""

    __slots__ = ("_key", "_limits")

    def __init__(self, limits: ConnectionLimits, key: str | None) -> None:
        self._limits: ConnectionLimits | None = limits
        self._key = key

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.release(self._key)


class ConnectionLimits:
    """Open connections per process and per source address (HTTP and WebSocket alike).

    The source is the TCP peer: the only address known before a byte is read. Connections
    from a trusted proxy count towards the process limit only, since the proxy carries many
    clients (per-client limits belong to the proxy then).
    """

    def __init__(self, total: int, per_ip: int, resolver: ClientResolver) -> None:
        self.total = total
        self.per_ip = per_ip
        self.resolver = resolver
        self.open = 0
        self.by_ip: dict[str, int] = {}

    def acquire(self, peer: str | None) -> Slot | None:
        """A slot for a new connection from ``peer``, or None when it must be refused."""
        if self.open >= self.total:
            return None
        key = None if self.resolver.is_trusted(peer) else (peer or "")
        if key is not None:
            held = self.by_ip.get(key, 0)
            if held >= self.per_ip:
                return None
            self.by_ip[key] = held + 1
        self.open += 1
        return Slot(self, key)

    def release(self, key: str | None) -> None:
        self.open -= 1
        if key is not None:
            held = self.by_ip.pop(key, 1) - 1
            if held > 0:
                self.by_ip[key] = held


class Edge:
    """One process's edge policy: client resolution, connection limits, request deadline.

    ``create_app`` builds it from ``[server]`` and publishes it in the lifespan state, where
    uvicorn hands it to every connection's protocol (``gateway.transport``), in every worker.
    """

    STATE_KEY = "presence.edge"
    WARN_EVERY_S = 10.0

    def __init__(self, server: ServerConfig) -> None:
        self.resolver = ClientResolver(server.trusted_proxies)
        self.limits = ConnectionLimits(
            server.max_connections, server.max_connections_per_ip, self.resolver
        )
        self.request_timeout_s = server.request_timeout_s
        self.pong_high_water = server.pong_high_water_bytes  # gateway.transport's pings
        self._warned_at = -self.WARN_EVERY_S
        self.refused = 0

    def note_refused(self) -> None:
        """Count a refused connection; warn at most every few seconds (never naming it)."""
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= self.WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "connection limit reached: refusing with 503 (%d open, limits %d per process "
                "and %d per address; %d refused so far)",
                self.limits.open,
                self.limits.total,
                self.limits.per_ip,
                self.refused,
            )
