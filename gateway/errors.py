"""The gateway's small exception tree, and the one list of WebSocket close codes."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes the gateway and its client use (SPEC section 5; web/codes.js)."""

    NORMAL = 1000  # the client's own close()
    GOING_AWAY = 1001  # no message within the heartbeat limit
    POLICY_VIOLATION = 1008  # unknown app: the handshake is refused (403)
    SERVICE_RESTART = 1012  # the node is shutting down: reconnect elsewhere
    HEARTBEAT_TIMEOUT = 4000  # sent by the client when it gives up on a silent socket
    UNAUTHORIZED = 4001  # bad or expired token, or no hello in time
    ORIGIN_NOT_ALLOWED = 4003
    TOO_SLOW = 4008  # the client could not keep up
    TOO_LARGE_OR_TOO_MANY = 4009  # message too large, too many messages or connections


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A config value is missing or wrong; the message names the key and the file."""

    def __init__(self, key: str, reason: str, source: str = "<config>") -> None:
        self.key = key
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {key}: {reason}")


class StoreUnavailable(GatewayError):
    """The presence store cannot be reached; nothing was applied."""
