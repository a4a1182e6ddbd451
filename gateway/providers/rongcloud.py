"""RongCloud: the user online status subscription.

The signature (query string; the same names are also read from headers) covers only the
app secret, a nonce and a timestamp, not the body: the timestamp must be within 5 minutes
of now, and a captured signed query could carry another body while it is fresh. So every
request names its signed query (``Parsed.replay_key``, a hash of nonce, timestamp and
signature) and its body's sha256; the route claims the pair in the store, which refuses the
same query with another body on every node (a retry with the same body is acked). The device
key is ``sessionId``; ``clientIp`` is never used.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from gateway.model import PresenceEvent, normalize_platform
from gateway.providers.base import (
    MAX_ID_LENGTH,
    Millis,
    Parsed,
    Provider,
    ProviderConfig,
    Reply,
    WebhookRejected,
    WebhookRequest,
    decode,
    event,
    json_encoder,
    same_secret,
)
from gateway.reconcile.config import RongCloudReconcile

COMMAND = "online_status"
WINDOW_S = 5 * 60  # signature timestamps further than this from now are refused
_CLAIM_MARGIN_MS = 60_000  # a replay claim outlives the window by this (nodes' clocks differ)
_OK = Reply(200, json_encoder.encode({"code": 200}))
_SECONDS_BELOW = 10**11  # a timestamp under this is in seconds (10**11 ms is in 1973)
_STATUS = {"0": (True, ""), "1": (False, "offline"), "2": (False, "logout")}

# Accepted names of each signature field: current, older (signTimestamp), and rc-*.
_APP_KEY = ("appkey", "rc-app-key", "rc-appkey", "app-key")
_NONCE = ("nonce", "rc-nonce")
_TIMESTAMP = ("timestamp", "signtimestamp", "rc-timestamp")
_SIGNATURE = ("signature", "rc-signature")

# build_request's wire forms: the query names of nonce, timestamp and signature of each
# generation, and whether its timestamp is in seconds (the oldest, rc-*) rather than ms.
STYLES = {
    "timestamp": (("nonce", "timestamp", "signature"), False),
    "signTimestamp": (("nonce", "signTimestamp", "signature"), False),
    "rc": (("rc-nonce", "rc-timestamp", "rc-signature"), True),
}
OS_OF = {"ios": "iOS", "android": "Android", "harmonyos": "HarmonyOS", "pc": "PC"}
OS_OF |= {"web": "Websocket", "miniprogram": "MiniProgram"}  # our platform -> ``os``


class RongCloudConfig(ProviderConfig, kw_only=True):
    """``[apps.rongcloud]``."""

    app_key: str
    app_secret: str
    reconcile: RongCloudReconcile | None = None  # the pull API (SPEC 8)

    def validate(self) -> None:
        super().validate()
        if not self.app_key:
            raise ValueError("app_key: must not be empty")
        if not self.app_secret:
            raise ValueError("app_secret: must not be empty")


class _Event(msgspec.Struct):
    userid: str
    status: str | int
    os: str = ""
    time: Millis | None = None
    session_id: str = msgspec.field(name="sessionId", default="")


def sign(app_secret: str, nonce: str, timestamp: int | str) -> str:
    """RongCloud's ``signature``: sha1 hex of app secret, nonce and timestamp."""
    return hashlib.sha1(f"{app_secret}{nonce}{timestamp}".encode()).hexdigest()


def status_of(ev: PresenceEvent) -> str:
    """The ``status`` RongCloud sends for ``ev``: "0" online, "2" logout, "1" any offline."""
    return "0" if ev.online else ("2" if ev.reason == "logout" else "1")


def signed_query(
    config: RongCloudConfig,
    now_ms: int,
    *,
    style: Literal["timestamp", "signTimestamp", "rc"] = "timestamp",
    nonce: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """``appKey`` and the signed nonce / timestamp / signature of ``style``, at ``now_ms``."""
    names, seconds = STYLES[style]
    nonce = secrets.token_hex(8) if nonce is None else nonce
    ts = str(now_ms // 1000 if seconds else now_ms)
    values = (nonce, ts, sign(config.app_secret, nonce, ts))
    return (("appKey", config.app_key), *zip(names, values, strict=True))


def build_request(
    config: RongCloudConfig,
    events: Sequence[PresenceEvent],
    *,
    now_ms: int,
    style: Literal["timestamp", "signTimestamp", "rc"] = "timestamp",
    single: bool = False,
    nonce: str | None = None,
    client_ip: str | Callable[[PresenceEvent], str] = "10.1.2.3:50000",
) -> WebhookRequest:
    """The signed status batch RongCloud would send for ``events`` (the inverse of ``parse``).

    Each ``ev.device`` is its ``sessionId``; an offline with reason ``logout`` is status "2",
    any other offline "1" (parsed back with reason ``offline``). ``single`` sends the one
    event as an object, not an array. ``style`` picks the parameter names (``STYLES``);
    ``nonce`` defaults to a random one (a reused nonce is a replay).
    """
    assert not single or len(events) == 1, "a single object carries one event"
    items = [
        {
            "userid": ev.user,
            "status": status_of(ev),
            "os": OS_OF.get(ev.platform, ev.platform),
            "time": ev.time,
            "clientIp": client_ip if isinstance(client_ip, str) else client_ip(ev),
            "sessionId": ev.device,
        }
        for ev in events
    ]
    return WebhookRequest(
        path=(),
        query=signed_query(config, now_ms, style=style, nonce=nonce),
        headers={"content-type": "application/json"},
        body=json_encoder.encode(items[0] if single else items),
        client_ip=None,
        now_ms=now_ms,
    )


def _param(req: WebhookRequest, names: tuple[str, ...]) -> str | None:
    """A signature field from the query (names case-insensitive), else from the headers."""
    for key, value in req.query:
        if key.lower() in names:
            return value
    for name in names:
        if name in req.headers:
            return req.headers[name]
    return None


def _replay_claim(req: WebhookRequest, parsed: Parsed) -> None:
    """Name the verified signed query and the body in ``parsed``, for the route to claim."""
    nonce = _param(req, _NONCE) or ""
    timestamp = _param(req, _TIMESTAMP) or ""
    signature = (_param(req, _SIGNATURE) or "").lower()
    if not (0 < len(timestamp) <= 16 and timestamp.isascii() and timestamp.isdigit()):
        return  # not a verified request (``verify`` refuses this): nothing to claim
    signed = f"{nonce}\n{timestamp}\n{signature}".encode()
    parsed.replay_key = hashlib.sha256(signed).hexdigest()
    parsed.digest = hashlib.sha256(req.body).digest()
    ts = int(timestamp)
    ts_ms = ts * 1000 if ts < _SECONDS_BELOW else ts
    # Until the timestamp leaves the window (plus a margin): the query is refused after that.
    parsed.replay_ttl_ms = max(ts_ms + WINDOW_S * 1000 - req.now_ms, 0) + _CLAIM_MARGIN_MS


class RongCloudProvider(Provider):
    """RongCloud online status webhooks."""

    name = "rongcloud"
    config_type = RongCloudConfig
    config: RongCloudConfig

    def verify(self, req: WebhookRequest) -> None:
        app_key = _param(req, _APP_KEY)
        if app_key is not None and not same_secret(app_key, self.config.app_key):
            raise WebhookRejected(401, "unknown appKey")
        nonce = _param(req, _NONCE)
        timestamp = _param(req, _TIMESTAMP)
        signature = _param(req, _SIGNATURE)
        if not nonce or not timestamp or not signature:
            raise WebhookRejected(401, "missing nonce, timestamp or signature")
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 16:
            raise WebhookRejected(401, "invalid timestamp")
        ts = int(timestamp)
        ts_ms = ts * 1000 if ts < _SECONDS_BELOW else ts
        if abs(req.now_ms - ts_ms) > WINDOW_S * 1000:
            raise WebhookRejected(401, "stale timestamp")
        expected = sign(self.config.app_secret, nonce, timestamp)
        if not same_secret(signature.lower(), expected):
            raise WebhookRejected(401, "invalid signature")

    def parse(self, req: WebhookRequest) -> Parsed:
        decoded: list[_Event] | _Event = decode(req.body, list[_Event] | _Event)
        items = decoded if isinstance(decoded, list) else [decoded]
        parsed = Parsed(command=COMMAND)
        _replay_claim(req, parsed)
        events = parsed.events
        platforms: dict[str, str] = {}  # a batch repeats a few os names
        for item in items:
            status = item.status
            state = _STATUS.get(status) if isinstance(status, str) else None
            if state is None:
                state = _STATUS.get(str(status).strip())
            if state is None:
                parsed.unused += 1
                continue
            online, reason = state
            user, os_name = item.userid, item.os
            device = item.session_id or os_name
            time = req.now_ms if item.time is None else item.time
            platform = platforms.get(os_name)
            if platform is None:
                platform = platforms[os_name] = normalize_platform(os_name)
            if 0 < len(user) <= MAX_ID_LENGTH and 0 < len(device) <= MAX_ID_LENGTH:
                events.append(PresenceEvent(user, device, platform, online, time, reason))
            else:
                events.append(event(user, device, platform, online, time, reason))  # raises a 400
        return parsed

    def ok(self) -> Reply:
        return _OK

    def error(self, status: int, reason: str) -> Reply:
        return Reply(status, json_encoder.encode({"code": status, "error": reason}))
