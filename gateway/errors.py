"""The gateway's small exception tree."""

from __future__ import annotations


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
