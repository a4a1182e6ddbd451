"""Easemob / Agora Chat: the ``userStatus`` login / logout / replaced callbacks.

One JSON event per request, signed inside the body: ``security`` is the MD5 of ``callId``,
the callback rule's secret and ``timestamp``. The signature covers no user, device or
reason, so the signed ``timestamp`` must be fresh and is also the event time; a replay
inside that window carries the same time and so changes nothing. The device key is the
resource of ``user`` (``{os}_{deviceId}``); ``ip`` and ``host`` are never used.

Because the signature does not cover the body, a captured callback's signed fields could be
sent again with another body while they are fresh. ``callId`` is unique per callback, so a
``callId`` seen again with a different body is refused (401); the same body again (Easemob's
own resend) is accepted and changes nothing. That memory is per process (bounded); across
nodes it needs the store-backed claim the RongCloud adapter uses.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict

import msgspec

from gateway.backends.base import PresenceSettings
from gateway.model import PresenceEvent, normalize_platform
from gateway.providers.base import (
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

COMMAND = "userStatus"
DOMAIN = "@easemob.com"
_OK = Reply(200, b"{}")
# reason -> (online, our reason); anything else is acked and counted unused
REASONS = {"login": (True, ""), "logout": (False, "logout"), "replaced": (False, "kicked")}
_OS_ALIASES = {"win": "windows", "webim": "web", "harmony": "harmonyos", "ohos": "harmonyos"}
# platform -> the ``os`` value build_request sends (the inverse of the aliases)
OS_OF = {"windows": "win"}
MAX_CALL_IDS = 100_000  # callIds remembered per process (oldest forgotten first)


class EasemobConfig(ProviderConfig, kw_only=True):
    """``[apps.easemob]``."""

    appkey: str  # "org#app": requests whose appkey differs are rejected
    secret: str  # the callback rule's secret

    def validate(self) -> None:
        super().validate()
        org, sep, app = self.appkey.partition("#")
        if not sep or not org or not app or self.appkey.strip() != self.appkey:
            raise ValueError("appkey: must be 'org#app'")
        if not self.secret:
            raise ValueError("secret: must not be empty")


class _Body(msgspec.Struct):
    call_id: str = msgspec.field(name="callId", default="")
    security: str = ""
    timestamp: Millis | str | None = None
    appkey: str = ""
    reason: str = ""
    user: str = ""
    os: str = ""
    event_type: str | None = msgspec.field(name="eventType", default=None)


def sign(call_id: str, secret: str, timestamp: int | str) -> str:
    """Easemob's ``security``: lower-case hex MD5 of callId + secret + timestamp."""
    return hashlib.md5(f"{call_id}{secret}{timestamp}".encode()).hexdigest()


def platform_of(os_name: str) -> str:
    """The platform an Easemob ``os`` value names."""
    key = os_name.strip().lower()
    return normalize_platform(_OS_ALIASES.get(key, key))


def build_request(
    config: EasemobConfig,
    ev: PresenceEvent,
    *,
    call_id: str | None = None,
    now_ms: int | None = None,
    domain: bool = True,
) -> WebhookRequest:
    """The signed callback Easemob would send for ``ev`` (the inverse of ``parse``).

    ``ev.device`` is the resource (``{os}_{deviceId}``); an offline ``ev`` with reason
    ``kicked`` is sent as ``replaced``, any other offline as ``logout``.
    """
    call_id = call_id or f"{config.appkey}_{uuid.uuid4()}"
    reason = "login" if ev.online else ("replaced" if ev.reason == "kicked" else "logout")
    os_name = OS_OF.get(ev.platform, ev.platform)
    user = f"{config.appkey}_{ev.user}{DOMAIN if domain else ''}/{ev.device}"
    body = {
        "callId": call_id,
        "reason": reason,
        "security": sign(call_id, config.secret, ev.time),
        "os": os_name,
        "ip": "203.0.113.7:52709",
        "host": "msync@ebs-ali-beijing-msync40",
        "appkey": config.appkey,
        "user": user,
        "version": "4.0.0",
        "timestamp": ev.time,
        "status": "online" if ev.online else "offline",
    }
    return WebhookRequest(
        path=(),
        query=(),
        headers={"content-type": "application/json"},
        body=json_encoder.encode(body),
        client_ip=None,
        now_ms=ev.time if now_ms is None else now_ms,
    )


class EasemobProvider(Provider):
    """Easemob / Agora Chat user status callbacks."""

    name = "easemob"
    config_type = EasemobConfig
    config: EasemobConfig

    def __init__(self, config: ProviderConfig, settings: PresenceSettings) -> None:
        super().__init__(config, settings)
        self._calls: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # callId -> (sha, ms)

    def verify(self, req: WebhookRequest) -> None:
        signed: _Body = decode(req.body, _Body)
        if not signed.call_id or not signed.security or signed.timestamp is None:
            raise WebhookRejected(401, "missing callId, security or timestamp")
        if not same_secret(signed.appkey, self.config.appkey):
            raise WebhookRejected(401, "unknown appkey")
        ts = signed.timestamp
        if isinstance(ts, str):
            if not ts.isascii() or not ts.isdigit() or len(ts) > 16:
                raise WebhookRejected(401, "invalid timestamp")
            ts = int(ts)
        if abs(req.now_ms - ts) > self.settings.max_event_age_s * 1000:
            raise WebhookRejected(401, "stale timestamp")
        expected = sign(signed.call_id, self.config.secret, signed.timestamp)
        if not same_secret(signed.security.lower(), expected):
            raise WebhookRejected(401, "invalid security")
        self._claim(signed.call_id, req)

    def _claim(self, call_id: str, req: WebhookRequest) -> None:
        """Refuse a fresh callId seen before with another body (see the module doc)."""
        calls = self._calls
        horizon = req.now_ms - 2 * self.settings.max_event_age_s * 1000
        while calls and (len(calls) >= MAX_CALL_IDS or next(iter(calls.values()))[1] < horizon):
            calls.popitem(last=False)
        digest = hashlib.sha256(req.body).digest()
        seen = calls.get(call_id)
        if seen is not None and seen[0] != digest:
            raise WebhookRejected(401, "callId already used with another body")
        calls[call_id] = (digest, req.now_ms)

    def parse(self, req: WebhookRequest) -> Parsed:
        body: _Body = decode(req.body, _Body)
        state = REASONS.get(body.reason)
        if state is None:
            if body.reason or body.event_type is not None:  # a newer reason, or a message
                return Parsed(unused=1, command="other")  # callback on the same URL
            raise WebhookRejected(400, "malformed body: missing reason")
        online, reason = state
        assert body.timestamp is not None  # verify() checked it: an int or a string of digits
        user, resource = self._split_user(body.user)
        platform = platform_of(body.os or resource.partition("_")[0])
        ev = event(user, resource, platform, online, int(body.timestamp), reason)
        return Parsed(events=[ev], command=COMMAND)

    def _split_user(self, jid: str) -> tuple[str, str]:
        """``{appkey}_{username}[@easemob.com]/{resource}`` -> (username, resource)."""
        bare, sep, resource = jid.rpartition("/")
        if not sep or not resource:
            raise WebhookRejected(400, "malformed body: user has no /resource")
        bare = bare.partition("@")[0]
        prefix = self.config.appkey + "_"
        if bare[: len(prefix)].lower() != prefix.lower():
            raise WebhookRejected(400, "malformed body: user is not of this appkey")
        return bare[len(prefix) :], resource

    def ok(self) -> Reply:
        return _OK

    def error(self, status: int, reason: str) -> Reply:
        return Reply(status, json_encoder.encode({"error": reason}))
