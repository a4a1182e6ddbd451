"""Standard Webhooks: events from any backend, signed per standardwebhooks.com.

Verification is the ``standardwebhooks`` package's (HMAC-SHA256, 5-minute tolerance
against the real clock). The body is our own format, so it is decoded strictly.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Literal

import msgspec
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.backends.base import PresenceSettings
from gateway.model import normalize_platform
from gateway.providers.base import (
    Millis,
    Parsed,
    Provider,
    ProviderConfig,
    Reply,
    WebhookRejected,
    WebhookRequest,
    clip,
    decode,
    event,
    json_encoder,
)

COMMAND = "events"
SECRET_PREFIX = "whsec_"


class StandardConfig(ProviderConfig, kw_only=True):
    """``[apps.standard]``."""

    secret: str  # whsec_<base64>

    def validate(self) -> None:
        super().validate()
        if not self.secret.startswith(SECRET_PREFIX):
            raise ValueError("secret: must start with whsec_")
        encoded = self.secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            raise ValueError("secret: not valid base64 after whsec_") from None
        if len(key) < 16:
            raise ValueError("secret: shorter than 16 bytes")


class _Event(msgspec.Struct, forbid_unknown_fields=True):
    user: str
    device: str
    status: Literal["online", "offline", "logout"]
    time: Millis
    platform: str = ""


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    events: list[_Event]


def sign(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` at ``timestamp`` (Unix s; default now)."""
    when = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    signature: str = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


class StandardProvider(Provider):
    """Standard Webhooks from a custom backend."""

    name = "standard"
    config_type = StandardConfig
    config: StandardConfig

    def __init__(self, config: ProviderConfig, settings: PresenceSettings) -> None:
        super().__init__(config, settings)
        self._webhook = Webhook(self.config.secret)

    def verify(self, req: WebhookRequest) -> None:
        try:
            self._webhook.verify(req.body, dict(req.headers), json_parse=False)
        except WebhookVerificationError as exc:
            raise WebhookRejected(401, clip(f"signature check failed: {exc}", 80)) from None
        except (ValueError, TypeError):  # bad base64, no comma, body not UTF-8
            raise WebhookRejected(401, "signature check failed: malformed header or body") from None

    def parse(self, req: WebhookRequest) -> Parsed:
        body: _Body = decode(req.body, _Body)
        parsed = Parsed(command=COMMAND)
        for item in body.events:
            online = item.status == "online"
            reason = "" if online else item.status
            platform = normalize_platform(item.platform)
            parsed.events.append(event(item.user, item.device, platform, online, item.time, reason))
        return parsed

    def ok(self) -> Reply:
        return Reply(204, b"", None)

    def error(self, status: int, reason: str) -> Reply:
        return Reply(status, json_encoder.encode({"error": reason}))
