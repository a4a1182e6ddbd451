"""Tencent Cloud IM: the ``State.StateChange`` callback.

Tencent posts every callback of an app to one URL, so commands other than
``State.StateChange`` are acked and counted as unused. The device key is the platform
(``OptPlatform``); devices listed in ``KickedDevice`` go offline with reason ``kicked``.
``Info.Action`` ``CustomStatusChange`` sets the user's custom status to ``Info.CustomStatus``
(or a top-level ``CustomStatus``; absent or empty clears it), cut to 100 UTF-8 bytes: Tencent
does not retry, so refusing a longer text would only lose the change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import msgspec

from gateway.model import PLATFORMS, PresenceEvent, custom_event, fit_custom, normalize_platform
from gateway.providers.base import (
    MAX_MS,
    Millis,
    Parsed,
    Provider,
    ProviderConfig,
    Reply,
    WebhookRejected,
    WebhookRequest,
    check_id,
    clip,
    decode,
    event,
    json_encoder,
    query_value,
    same_secret,
)
from gateway.reconcile.config import TencentReconcile

COMMAND = "State.StateChange"
_OK = Reply(200, json_encoder.encode({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}))
MAX_SKEW_S = 60  # Tencent's advice for RequestTime
_MAX_DIGITS = 16  # of a RequestTime or string EventTime: more is no time (int() fails past 4300)

# build_request's wire names. This callback sends "IOS" in OptPlatform, "iOS" in KickedDevice.
OPT_PLATFORM = {"ios": "IOS", "android": "Android", "windows": "Windows", "mac": "Mac"}
OPT_PLATFORM |= {"web": "Web", "ipad": "iPad", "linux": "Linux", "server": "RESTAPI"}
KICKED_PLATFORM = OPT_PLATFORM | {"ios": "iOS"}
# an event's reason (Info.Reason lower-cased, as parse reports it) -> (Action, Reason) sent
ACTIONS = {
    "register": ("Login", "Register"),
    "unregister": ("Logout", "Unregister"),
    "openkickinstance": ("Logout", "OpenKickInstance"),  # every platform goes offline
    "linkclose": ("Disconnect", "LinkClose"),
    "timeout": ("Disconnect", "TimeOut"),
}


class TencentConfig(ProviderConfig, kw_only=True):
    """``[apps.tencent]``."""

    sdkappid: int
    callback_token: str = ""  # non-empty: Sign and RequestTime are required
    reconcile: TencentReconcile | None = None  # the pull API (SPEC 8)

    def validate(self) -> None:
        super().validate()
        if self.sdkappid <= 0:
            raise ValueError("sdkappid: must be a positive integer")


class _Info(msgspec.Struct):
    Action: str  # required: a StateChange without it is malformed
    To_Account: str
    Reason: str = ""
    CustomStatus: str | None = None  # CustomStatusChange: the new text


class _Kicked(msgspec.Struct):
    Platform: str = ""


class _Body(msgspec.Struct):
    Info: _Info
    EventTime: Millis | str | None = None  # an integer or a string of digits
    KickedDevice: list[_Kicked] | None = None
    CustomStatus: str | None = None  # CustomStatusChange: the text, where not in Info


class _Command(msgspec.Struct):
    CallbackCommand: str = ""


def _digits(text: str) -> bool:
    """Whether ``text`` is a plain decimal integer short enough to be a time."""
    return 0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit()


def _event_time(value: int | str | None, now_ms: int) -> int:
    """``EventTime`` in ms: an integer, a string of digits, or absent (receive time)."""
    if value is None:
        return now_ms
    if isinstance(value, int):
        return value
    if not _digits(value) or int(value) > MAX_MS:
        raise WebhookRejected(400, "malformed body: EventTime is not a time in ms")
    return int(value)


def sign(token: str, request_time: int | str) -> str:
    """Tencent's callback ``Sign``: sha256 hex of the token followed by RequestTime."""
    return hashlib.sha256(f"{token}{request_time}".encode()).hexdigest()


def build_request(
    config: TencentConfig,
    ev: PresenceEvent,
    *,
    kicked: Sequence[str] = (),
    opt_platform: str | None = None,
    custom_in: Literal["Info", "top"] = "Info",
    client_ip: str = "10.1.2.3",
    now_ms: int | None = None,
) -> WebhookRequest:
    """The ``State.StateChange`` Tencent would send for ``ev`` (the inverse of ``parse``).

    ``ev.device`` is its platform; ``ev.reason`` one of ``ACTIONS`` picks Action and Reason
    (any other: ``Login``/``Register`` online, ``Logout``/``Unregister`` offline). ``kicked``
    platforms (of a Login) are listed in ``KickedDevice``; ``opt_platform`` overrides the
    ``OptPlatform`` sent (e.g. ``macOS``). A custom event (``ev.custom`` set) is a
    ``CustomStatusChange`` with the text in ``Info`` or at the top level. Signed (``Sign``,
    ``RequestTime`` = ``now_ms`` in s, default ``ev.time``) when ``callback_token`` is set.
    """
    now = ev.time if now_ms is None else now_ms
    info: dict[str, object]
    if ev.custom is not None:
        info = {"Action": "CustomStatusChange", "To_Account": ev.user, "Reason": "SetCustomStatus"}
    else:
        action, reason = ACTIONS.get(ev.reason) or (
            ("Login", "Register") if ev.online else ("Logout", "Unregister")
        )
        assert (action == "Login") == ev.online, f"reason {ev.reason!r} of an online={ev.online}"
        info = {"Action": action, "To_Account": ev.user, "Reason": reason}
    body: dict[str, object] = {"CallbackCommand": COMMAND, "EventTime": ev.time, "Info": info}
    if ev.custom is not None:
        (info if custom_in == "Info" else body)["CustomStatus"] = ev.custom
    if kicked:
        assert ev.online, "KickedDevice comes with a Login"
        body["KickedDevice"] = [{"Platform": KICKED_PLATFORM.get(p, p)} for p in kicked]
    if opt_platform is None:
        opt_platform = "RESTAPI" if ev.reason == "openkickinstance" else ev.platform
        opt_platform = OPT_PLATFORM.get(opt_platform, opt_platform)
    query = [
        ("SdkAppid", str(config.sdkappid)),
        ("CallbackCommand", COMMAND),
        ("contenttype", "json"),
        ("ClientIP", client_ip),
        ("OptPlatform", opt_platform),
    ]
    if config.callback_token:
        request_time = str(now // 1000)
        query += [
            ("RequestTime", request_time),
            ("Sign", sign(config.callback_token, request_time)),
        ]
    return WebhookRequest(
        path=(),
        query=tuple(query),
        headers={"content-type": "application/json"},
        body=json_encoder.encode(body),
        client_ip=None,
        now_ms=now,
    )


class TencentProvider(Provider):
    """Tencent IM ``State.StateChange`` webhooks."""

    name = "tencent"
    config_type = TencentConfig
    config: TencentConfig

    def verify(self, req: WebhookRequest) -> None:
        appid = query_value(req, "SdkAppid", fold=True)
        if appid is None or appid.strip() != str(self.config.sdkappid):
            raise WebhookRejected(401, "unknown SdkAppid")
        token = self.config.callback_token
        if not token:
            return
        signature = query_value(req, "Sign", fold=True)
        request_time = query_value(req, "RequestTime", fold=True)
        if not signature or not request_time:
            raise WebhookRejected(401, "missing Sign or RequestTime")
        if not _digits(request_time):
            raise WebhookRejected(401, "invalid RequestTime")
        if abs(req.now_ms - int(request_time) * 1000) > MAX_SKEW_S * 1000:
            raise WebhookRejected(401, "stale RequestTime")
        if not same_secret(signature.lower(), sign(token, request_time)):
            raise WebhookRejected(401, "invalid Sign")

    def parse(self, req: WebhookRequest) -> Parsed:
        command = query_value(req, "CallbackCommand", fold=True)
        if command is None:
            command = decode(req.body, _Command).CallbackCommand
        if command != COMMAND:
            return Parsed(unused=1, command="other")
        body: _Body = decode(req.body, _Body)
        info = body.Info
        if not info.Action:
            raise WebhookRejected(400, "malformed body: empty Info.Action")
        check_id(info.To_Account, "Info.To_Account")
        time = _event_time(body.EventTime, req.now_ms)
        reason = clip(info.Reason.lower(), 32)
        if info.Action == "Login":
            online = True
        elif info.Action in ("Logout", "Disconnect"):
            online = False
        elif info.Action == "CustomStatusChange":
            text = info.CustomStatus if info.CustomStatus is not None else body.CustomStatus
            custom = custom_event(info.To_Account, fit_custom(text or ""), time)
            return Parsed(events=[custom], command=COMMAND)
        else:  # anything newer
            return Parsed(unused=1, command=COMMAND)
        platform = normalize_platform(query_value(req, "OptPlatform", fold=True) or "")
        if not online and info.Reason == "OpenKickInstance":
            # The admin kick API ends every login of the account, whatever OptPlatform says.
            events = [event(info.To_Account, p, p, False, time, reason) for p in sorted(PLATFORMS)]
            return Parsed(events=events, command=COMMAND)
        events = [event(info.To_Account, platform, platform, online, time, reason)]
        for kicked in body.KickedDevice or ():
            p = normalize_platform(kicked.Platform)
            events.append(event(info.To_Account, p, p, False, time, "kicked"))
        return Parsed(events=events, command=COMMAND)

    def ok(self) -> Reply:
        return _OK

    def error(self, status: int, reason: str) -> Reply:
        body = {"ActionStatus": "FAIL", "ErrorCode": 1, "ErrorInfo": reason}
        return Reply(status, json_encoder.encode(body))
