"""The gateway's exception tree, and the one list of WebSocket close codes.

::

    GatewayError                 every error the gateway raises on purpose
    ├── ConfigError              a config value is missing or wrong (key, reason, source)
    ├── BackendError             the presence store or its feed failed
    │   ├── StoreUnavailable     the store cannot be reached; nothing was applied
    │   └── FeedLost             a pub/sub connection stopped answering
    ├── Rejected                 input from outside is refused; str() is safe to send back
    │   ├── BadMessage           a WebSocket client frame (code: a SPEC section 5 error code)
    │   ├── TokenError           a client token
    │   ├── BadQuery             a server-API query string
    │   ├── BodyTooLarge         an HTTP request body over its limit
    │   └── WebhookRejected      a provider webhook (status, reason)
    └── UpstreamError            a call the gateway makes to someone else failed
        └── PullError            a provider pull API (gateway.reconcile.base), and its kinds

Each leaf is also importable where it is raised (``gateway.protocol.BadMessage``,
``gateway.tokens.TokenError``, ``gateway.providers.base.WebhookRejected``...).
"""

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


class BackendError(GatewayError):
    """The presence store or its pub/sub feed failed."""


class StoreUnavailable(BackendError):
    """The presence store cannot be reached; nothing was applied."""


class FeedLost(BackendError):
    """A pub/sub connection stopped answering, or the feed could not be restored in time."""


class Rejected(GatewayError):
    """Input from outside (a client, a provider, an operator) is refused.

    ``str(exc)`` is a short reason that is safe to send back: it never holds a secret.
    """


class BadMessage(Rejected):
    """A client frame that is not a valid message; ``code`` is the SPEC error code."""

    def __init__(self, code: str, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class TokenError(Rejected):
    """The token is missing, malformed, expired, or not signed by this app."""


class BadQuery(Rejected):
    """The query string cannot be read; the message is the 400 reason."""


class BodyTooLarge(Rejected):
    """The request body is over its limit."""


class WebhookRejected(Rejected):
    """The request is refused; ``reason`` is short and safe to send back."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


class UpstreamError(GatewayError):
    """A call the gateway makes to someone else (a provider's pull API) failed."""
