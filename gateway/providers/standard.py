"""Standard Webhooks: events from any backend, signed per standardwebhooks.com.

The signature is checked on the raw body bytes with the ``standardwebhooks`` package's HMAC
primitive (its ``Webhook.verify`` decodes the body as UTF-8 first, so a signed body that is
not UTF-8 would look like a bad signature): HMAC-SHA256 over ``{id}.{timestamp}.{body}``,
``v1,<base64>`` signatures (any of several, space-separated), a 5-minute tolerance against
the request's receive time. Only then is the body decoded, strictly (it is our own format):
a correctly signed body that is not UTF-8 JSON is a 400.

An event either reports a device (``device``, ``status``) or sets the user's custom status
(``custom``: a string of at most 100 UTF-8 bytes, or null to clear; then no device/status).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
import uuid
from collections.abc import Sequence
from typing import Literal

import msgspec
from standardwebhooks.webhooks import hmac_data

from gateway.backends.base import PresenceSettings
from gateway.model import (
    MAX_CUSTOM_BYTES,
    PresenceEvent,
    custom_event,
    custom_too_long,
    normalize_platform,
)
from gateway.providers.base import (
    Millis,
    Parsed,
    Provider,
    ProviderConfig,
    Reply,
    WebhookRejected,
    WebhookRequest,
    check_id,
    decode,
    event,
    json_encoder,
)

COMMAND = "events"
SECRET_PREFIX = "whsec_"
TOLERANCE_S = 5 * 60
_MAX_ID = 256  # webhook-id characters
_MAX_SIGNATURES = 16  # entries of one webhook-signature header that are looked at
_DIGEST_SIZE = 32  # bytes of an HMAC-SHA256


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
    time: Millis
    device: str | None = None
    status: Literal["online", "offline", "logout"] | None = None
    platform: str = ""
    custom: str | msgspec.UnsetType | None = msgspec.UNSET  # null clears; absent: a device event


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    events: list[_Event]


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (padding optional)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def _raw(header: str) -> bytes:
    """A header value's bytes as sent (the route decodes headers as Latin-1)."""
    try:
        return header.encode("latin-1")
    except UnicodeEncodeError:  # not from the wire: a caller's own str
        return header.encode()


def _mac(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac_data(key, b"%s.%s.%s" % (_raw(msg_id), timestamp.encode(), body))


def sign(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` at ``timestamp`` (Unix s; default now)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = _mac(secret_key(secret), msg_id, ts, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def build_request(
    config: StandardConfig,
    events: Sequence[PresenceEvent],
    *,
    now_ms: int,
    msg_id: str | None = None,
) -> WebhookRequest:
    """The signed Standard Webhooks call carrying ``events`` (the inverse of ``parse``).

    An offline with reason ``logout`` is status ``logout``, any other offline ``offline``
    (parsed back with that reason); a custom event (``ev.custom`` set) is ``{user, time,
    custom}``, null for a clear. ``msg_id`` (``webhook-id``) defaults to a fresh one; a
    re-send keeps it. Signed at ``now_ms`` (in s).
    """
    items: list[dict[str, object]] = []
    for ev in events:
        if ev.custom is not None:
            items.append({"user": ev.user, "time": ev.time, "custom": ev.custom or None})
            continue
        status = "online" if ev.online else ("logout" if ev.reason == "logout" else "offline")
        item = {"user": ev.user, "device": ev.device, "platform": ev.platform, "status": status}
        items.append(item | {"time": ev.time})
    body = json_encoder.encode({"events": items})
    msg_id = f"msg_{uuid.uuid4().hex}" if msg_id is None else msg_id
    return WebhookRequest(
        path=(),
        query=(),
        headers={"content-type": "application/json"}
        | sign(config.secret, msg_id, body, now_ms // 1000),
        body=body,
        client_ip=None,
        now_ms=now_ms,
    )


def _signatures(header: str) -> list[bytes]:
    """The v1 signatures of a ``webhook-signature`` header; malformed entries are skipped."""
    found = []
    for entry in header.split(" ")[:_MAX_SIGNATURES]:
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


class StandardProvider(Provider):
    """Standard Webhooks from a custom backend."""

    name = "standard"
    config_type = StandardConfig
    config: StandardConfig

    def __init__(self, config: ProviderConfig, settings: PresenceSettings) -> None:
        super().__init__(config, settings)
        self._key = secret_key(self.config.secret)

    def verify(self, req: WebhookRequest) -> None:
        msg_id = req.headers.get("webhook-id", "")
        timestamp = req.headers.get("webhook-timestamp", "")
        header = req.headers.get("webhook-signature", "")
        if not msg_id or not timestamp or not header:
            raise WebhookRejected(401, "signature check failed: missing required headers")
        if len(msg_id) > _MAX_ID:
            raise WebhookRejected(401, "signature check failed: webhook-id too long")
        if not (0 < len(timestamp) <= 12 and timestamp.isascii() and timestamp.isdigit()):
            raise WebhookRejected(401, "signature check failed: invalid webhook-timestamp")
        if abs(req.now_ms // 1000 - int(timestamp)) > TOLERANCE_S:
            raise WebhookRejected(401, "signature check failed: timestamp outside 5 minutes")
        expected = _mac(self._key, msg_id, timestamp, req.body)
        if not any(
            len(given) == _DIGEST_SIZE and hmac.compare_digest(given, expected)
            for given in _signatures(header)
        ):
            raise WebhookRejected(401, "signature check failed: no matching signature")

    def parse(self, req: WebhookRequest) -> Parsed:
        body: _Body = decode(req.body, _Body)
        parsed = Parsed(command=COMMAND)
        for item in body.events:
            if item.custom is not msgspec.UNSET:
                if item.device is not None or item.status is not None:
                    raise WebhookRejected(400, "malformed body: custom with device or status")
                if item.custom is not None and custom_too_long(item.custom):
                    raise WebhookRejected(
                        400, f"malformed body: custom over {MAX_CUSTOM_BYTES} bytes (UTF-8)"
                    )
                check_id(item.user, "user")
                parsed.events.append(custom_event(item.user, item.custom, item.time))
                continue
            if item.device is None or item.status is None:
                raise WebhookRejected(400, "malformed body: an event needs device and status")
            online = item.status == "online"
            reason = "" if online else item.status
            platform = normalize_platform(item.platform)
            parsed.events.append(event(item.user, item.device, platform, online, item.time, reason))
        return parsed

    def ok(self) -> Reply:
        return Reply(204, b"", None)

    def error(self, status: int, reason: str) -> Reply:
        return Reply(status, json_encoder.encode({"error": reason}))
