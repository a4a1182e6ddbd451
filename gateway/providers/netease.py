"""NetEase Yunxin IM (网易云信): the login / logout copies (抄送).

Headers sign the body: ``MD5`` is the hex MD5 of the raw body and ``CheckSum`` the SHA-1 of
the app secret, ``MD5`` and ``CurTime`` (not the server API's formula, which has a Nonce).
Copies are not necessarily paired or in order (NetEase's own warning), so the event time is
the copy's ``timestamp``. The device key is ``deviceId`` (else ``clientType``); ``clientIp``
is never used. Every other copy (messages, teams, ...) shares the URL: acked, counted.
"""

from __future__ import annotations

import hashlib

import msgspec

from gateway.model import PresenceEvent
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

COMMAND = "login_logout"
_OK = Reply(200, b"{}")
LOGIN, LOGOUT = "2", "3"
CLIENT_TYPES = {
    "AOS": "android",
    "IOS": "ios",
    "PC": "windows",
    "WEB": "web",
    "MAC": "mac",
    "LINUX": "linux",
    "HARMONY": "harmonyos",
}
CLIENT_TYPE_OF = {platform: name for name, platform in CLIENT_TYPES.items()}
_MAX_DIGITS = 16


class NetEaseConfig(ProviderConfig, kw_only=True):
    """``[apps.netease]``."""

    app_key: str  # requests whose AppKey header differs are rejected
    app_secret: str  # CheckSum key

    def validate(self) -> None:
        super().validate()
        if not self.app_key:
            raise ValueError("app_key: must not be empty")
        if not self.app_secret:
            raise ValueError("app_secret: must not be empty")


class _Kind(msgspec.Struct):
    event_type: str | int | None = msgspec.field(name="eventType", default=None)


class _Copy(msgspec.Struct):
    accid: str = ""
    client_type: str = msgspec.field(name="clientType", default="")
    device_id: str = msgspec.field(name="deviceId", default="")
    timestamp: str | Millis | None = None
    code: str | int | None = None  # login result; only 200 (or none) is a login


def body_md5(body: bytes) -> str:
    """The ``MD5`` header NetEase sends for ``body``: lower-case hex MD5."""
    return hashlib.md5(body).hexdigest()


def sign(app_secret: str, md5: str, cur_time: int | str) -> str:
    """NetEase's copy ``CheckSum``: lower-case hex SHA-1 of AppSecret + MD5 + CurTime."""
    return hashlib.sha1(f"{app_secret}{md5}{cur_time}".encode()).hexdigest()


def signed_headers(config: NetEaseConfig, body: bytes, cur_time: int) -> dict[str, str]:
    """The four headers (lower-case names) that sign ``body`` at ``cur_time`` (ms)."""
    md5 = body_md5(body)
    return {
        "content-type": "application/json",
        "appkey": config.app_key,
        "curtime": str(cur_time),
        "md5": md5,
        "checksum": sign(config.app_secret, md5, cur_time),
    }


def build_request(
    config: NetEaseConfig, ev: PresenceEvent, *, now_ms: int | None = None
) -> WebhookRequest:
    """The signed copy NetEase would send for ``ev`` (the inverse of ``parse``).

    ``ev.device`` is the ``deviceId``; ``ev.platform`` one of ``CLIENT_TYPES``' platforms.
    """
    now = ev.time if now_ms is None else now_ms
    doc = {
        "clientType": CLIENT_TYPE_OF.get(ev.platform, "WINPHONE"),
        "code": "200",
        "clientIp": "203.0.113.7",
        "accid": ev.user,
        "sdkVersion": "152",
        "eventType": LOGIN if ev.online else LOGOUT,
        "deviceId": ev.device,
        "timestamp": str(ev.time),
    }
    body = json_encoder.encode(doc)
    return WebhookRequest(
        path=(),
        query=(),
        headers=signed_headers(config, body, now),
        body=body,
        client_ip=None,
        now_ms=now,
    )


def _millis(value: str | int, what: str) -> int:
    """A ms time given as an integer or a string of digits; 400 otherwise."""
    if isinstance(value, int):
        return value
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_DIGITS:
        raise WebhookRejected(400, f"malformed body: {what} is not a ms time")
    return int(value)


class NetEaseProvider(Provider):
    """NetEase Yunxin IM login / logout copies."""

    name = "netease"
    config_type = NetEaseConfig
    config: NetEaseConfig

    def verify(self, req: WebhookRequest) -> None:
        headers = req.headers
        app_key = headers.get("appkey")
        cur_time = headers.get("curtime")
        md5 = headers.get("md5")
        checksum = headers.get("checksum")
        if not app_key or not cur_time or not md5 or not checksum:
            raise WebhookRejected(401, "missing AppKey, CurTime, MD5 or CheckSum")
        if not same_secret(app_key, self.config.app_key):
            raise WebhookRejected(401, "unknown AppKey")
        if not cur_time.isascii() or not cur_time.isdigit() or len(cur_time) > _MAX_DIGITS:
            raise WebhookRejected(401, "invalid CurTime")
        if abs(req.now_ms - int(cur_time)) > self.settings.max_event_age_s * 1000:
            raise WebhookRejected(401, "stale CurTime")
        if not same_secret(checksum.lower(), sign(self.config.app_secret, md5, cur_time)):
            raise WebhookRejected(401, "invalid CheckSum")
        if not same_secret(md5.lower(), body_md5(req.body)):
            raise WebhookRejected(401, "MD5 does not match the body")

    def parse(self, req: WebhookRequest) -> Parsed:
        kind = decode(req.body, _Kind).event_type
        if kind is None:
            if decode(req.body, dict[str, object]) == {}:  # the console's check of a new URL
                return Parsed(command="probe")
            raise WebhookRejected(400, "malformed body: missing eventType")
        kind = str(kind)
        if kind not in (LOGIN, LOGOUT):
            return Parsed(unused=1, command="other")
        body: _Copy = decode(req.body, _Copy)
        online = kind == LOGIN
        if online and body.code is not None and str(body.code) != "200":
            return Parsed(unused=1, command=COMMAND)  # a failed login attempt
        if body.timestamp is None:  # not seen in NetEase's samples: fall back to the signed
            time = _millis(req.headers["curtime"], "CurTime")  # send time
        else:
            time = _millis(body.timestamp, "timestamp")
        platform = CLIENT_TYPES.get(body.client_type.strip().upper(), "unknown")
        device = body.device_id or body.client_type
        ev = event(body.accid, device, platform, online, time, "" if online else "logout")
        return Parsed(events=[ev], command=COMMAND)

    def ok(self) -> Reply:
        return _OK

    def error(self, status: int, reason: str) -> Reply:
        return Reply(status, json_encoder.encode({"error": reason}))
