"""Tencent IM ``State.StateChange`` webhooks."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.backends.base import PresenceSettings
from gateway.model import PLATFORMS, PresenceEvent, custom_event
from gateway.providers.base import Parsed, WebhookRejected, WebhookRequest
from gateway.providers.tencent import TencentConfig, TencentProvider, sign

APPID = 1400000000
TOKEN = "xxxxyyyy"
NOW_S = 1763700000
NOW = NOW_S * 1000


def body(action: str = "Login", reason: str = "Register", **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "CallbackCommand": "State.StateChange",
        "EventTime": NOW - 5,
        "Info": {"Action": action, "To_Account": "bob", "Reason": reason},
    }
    doc.update(extra)
    return msgspec.json.encode(doc)


def query(platform: str = "iOS", **extra: str) -> tuple[tuple[str, str], ...]:
    items = {
        "SdkAppid": str(APPID),
        "CallbackCommand": "State.StateChange",
        "contenttype": "json",
        "ClientIP": "1.2.3.4",
        "OptPlatform": platform,
    }
    items.update(extra)
    return tuple(items.items())


def request(
    q: tuple[tuple[str, str], ...] | None = None, data: bytes | None = None, now: int = NOW
) -> WebhookRequest:
    return WebhookRequest(
        path=(),
        query=query() if q is None else q,
        headers={"content-type": "application/json"},
        body=body() if data is None else data,
        client_ip="10.0.0.1",
        now_ms=now,
    )


def provider(token: str = "", **kw: Any) -> TencentProvider:
    return TencentProvider(
        TencentConfig(sdkappid=APPID, callback_token=token, **kw), PresenceSettings()
    )


def signed(request_time: int = NOW_S, **extra: str) -> tuple[tuple[str, str], ...]:
    return query(RequestTime=str(request_time), Sign=sign(TOKEN, request_time), **extra)


def rejected(p: TencentProvider, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        p.handle(req)
    return info.value


def test_sign_matches_the_documented_test_vector() -> None:
    """sha256 hex of token + RequestTime gives the vector from PROVIDERS.md."""
    expected = "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
    assert sign("xxxxyyyy", 1669872112) == expected
    assert sign("xxxxyyyy", "1669872112") == expected


def test_login_is_an_online_event_keyed_by_platform() -> None:
    """A Login gives one online event for the OptPlatform device at EventTime."""
    parsed = provider().handle(request())
    assert parsed == Parsed(
        events=[PresenceEvent("bob", "ios", "ios", True, NOW - 5, "register")],
        unused=0,
        command="State.StateChange",
    )


@pytest.mark.parametrize(
    ("action", "reason"), [("Logout", "Unregister"), ("Disconnect", "TimeOut")]
)
def test_logout_and_disconnect_are_offline(action: str, reason: str) -> None:
    """Logout and Disconnect both take the platform's device offline with the reason."""
    (ev,) = provider().handle(request(data=body(action, reason))).events
    assert (ev.online, ev.device, ev.reason) == (False, "ios", reason.lower())


def test_query_names_are_case_insensitive() -> None:
    """sdkappid / callbackcommand / optplatform / sign / requesttime match in any case."""
    q = tuple((k.lower(), v) for k, v in signed())
    (ev,) = provider(TOKEN).handle(request(q)).events
    assert ev.platform == "ios"
    q = tuple((k.upper(), v) for k, v in signed())
    assert provider(TOKEN).handle(request(q)).events == [ev]


@pytest.mark.parametrize(
    ("opt", "platform"),
    [
        ("IOS", "ios"),
        ("iOS", "ios"),
        ("Android", "android"),
        ("Web", "web"),
        ("Windows", "windows"),
        ("Mac", "mac"),
        ("macOS", "mac"),
        ("iPad", "ipad"),
        ("RESTAPI", "server"),
        ("Unknown", "unknown"),
        ("Toaster", "unknown"),
    ],
)
def test_opt_platform_is_normalized(opt: str, platform: str) -> None:
    """OptPlatform values (IOS upper case, macOS...) map to the normalized platform names."""
    (ev,) = provider().handle(request(query(opt))).events
    assert (ev.device, ev.platform) == (platform, platform)


def test_missing_opt_platform_is_unknown() -> None:
    """Without OptPlatform the device is 'unknown' rather than an error."""
    q = tuple(kv for kv in query() if kv[0] != "OptPlatform")
    (ev,) = provider().handle(request(q)).events
    assert ev.device == "unknown"


def test_kicked_devices_go_offline_with_reason_kicked() -> None:
    """Each KickedDevice platform gets an offline event at EventTime, reason 'kicked'."""
    data = body(KickedDevice=[{"Platform": "Windows"}, {"Platform": "Android"}])
    events = provider().handle(request(data=data)).events
    assert events[1:] == [
        PresenceEvent("bob", "windows", "windows", False, NOW - 5, "kicked"),
        PresenceEvent("bob", "android", "android", False, NOW - 5, "kicked"),
    ]
    assert events[0].online


def test_admin_kick_takes_every_platform_offline() -> None:
    """Logout(OpenKickInstance) ends every login of the account, whatever OptPlatform says."""
    events = provider().handle(request(query("RESTAPI"), body("Logout", "OpenKickInstance"))).events
    assert {e.device for e in events} == set(PLATFORMS)
    assert not any(e.online for e in events)


def test_missing_event_time_uses_receive_time() -> None:
    """Very old payloads without EventTime use the request's now_ms."""
    data = msgspec.json.encode({"Info": {"Action": "Login", "To_Account": "bob"}})
    (ev,) = provider().handle(request(data=data, now=NOW + 7)).events
    assert ev.time == NOW + 7


def custom_body(info_status: Any = None, top_status: Any = None) -> bytes:
    """A CustomStatusChange, with CustomStatus in Info and/or at the top level."""
    info: dict[str, Any] = {"Action": "CustomStatusChange", "To_Account": "bob"}
    info["Reason"] = "SetCustomStatus"
    if info_status is not None:
        info["CustomStatus"] = info_status
    extra = {} if top_status is None else {"CustomStatus": top_status}
    return body(Info=info, **extra)


def test_custom_status_change_sets_the_custom() -> None:
    """CustomStatusChange yields one custom event: Info.CustomStatus at EventTime."""
    parsed = provider().handle(request(data=custom_body("In a meeting")))
    assert parsed.events == [custom_event("bob", "In a meeting", NOW - 5)]
    assert parsed.unused == 0


def test_custom_status_at_the_top_level_is_read_too() -> None:
    """A top-level CustomStatus is used where Info has none; Info's wins when both are given."""
    (ev,) = provider().handle(request(data=custom_body(top_status="Lunch"))).events
    assert ev.custom == "Lunch"
    (ev,) = provider().handle(request(data=custom_body("Info's", "Top"))).events
    assert ev.custom == "Info's"


def test_custom_status_absent_or_empty_clears() -> None:
    """A CustomStatusChange with no or an empty CustomStatus clears the custom."""
    for data in (custom_body(), custom_body("")):
        (ev,) = provider().handle(request(data=data)).events
        assert ev.custom == ""


def test_custom_status_is_cut_to_100_bytes() -> None:
    """A longer text (Tencent would not resend a refused one) is cut at a character boundary."""
    (ev,) = provider().handle(request(data=custom_body("会" * 40))).events
    assert ev.custom == "会" * 33


def test_custom_status_of_wrong_type_is_400() -> None:
    """A CustomStatus that is not a string is malformed."""
    assert rejected(provider(), request(data=custom_body(7))).status == 400


def test_other_callback_commands_are_acked_and_unused() -> None:
    """Any other CallbackCommand (one URL serves all callbacks) is unused, body not parsed."""
    q = query(CallbackCommand="C2C.CallbackBeforeSendMsg")
    parsed = provider().handle(request(q, b'{"MsgBody": []}'))
    assert parsed == Parsed(events=[], unused=1, command="other")


def test_command_falls_back_to_body() -> None:
    """Without CallbackCommand in the query, the body's CallbackCommand decides."""
    q = tuple(kv for kv in query() if kv[0] != "CallbackCommand")
    assert len(provider().handle(request(q)).events) == 1
    other = msgspec.json.encode({"CallbackCommand": "Group.CallbackAfterNewMemberJoin"})
    assert provider().handle(request(q, other)).unused == 1


@pytest.mark.parametrize("appid", [str(APPID + 1), "", "abc"])
def test_wrong_sdkappid_is_401(appid: str) -> None:
    """A SdkAppid that is not ours is refused with 401."""
    assert rejected(provider(), request(query(SdkAppid=appid))).status == 401


def test_missing_sdkappid_is_401() -> None:
    """A request without SdkAppid is refused with 401."""
    q = tuple(kv for kv in query() if kv[0] != "SdkAppid")
    assert rejected(provider(), request(q)).status == 401


def test_signed_request_is_accepted() -> None:
    """With a callback token, a correct Sign and fresh RequestTime pass."""
    assert len(provider(TOKEN).handle(request(signed())).events) == 1


def test_unsigned_request_is_401_when_token_set() -> None:
    """With a callback token, a request without Sign/RequestTime is refused."""
    assert rejected(provider(TOKEN), request()).status == 401


def test_wrong_sign_is_401() -> None:
    """A Sign made with another token is refused."""
    q = query(RequestTime=str(NOW_S), Sign=sign("other", NOW_S))
    err = rejected(provider(TOKEN), request(q))
    assert (err.status, err.reason) == (401, "invalid Sign")


@pytest.mark.parametrize("skew", [-60, 60])
def test_request_time_within_60s_is_fresh(skew: int) -> None:
    """RequestTime up to 60 s either side of now is accepted."""
    assert provider(TOKEN).handle(request(signed(NOW_S + skew))).events


@pytest.mark.parametrize("skew", [-61, 61])
def test_request_time_beyond_60s_is_401(skew: int) -> None:
    """RequestTime more than 60 s from now is refused, even with a valid Sign."""
    err = rejected(provider(TOKEN), request(signed(NOW_S + skew)))
    assert (err.status, err.reason) == (401, "stale RequestTime")


def test_non_numeric_request_time_is_401() -> None:
    """A RequestTime that is not an integer is refused."""
    q = query(RequestTime="1e9", Sign=sign(TOKEN, "1e9"))
    assert rejected(provider(TOKEN), request(q)).status == 401


def test_sign_ignored_without_token() -> None:
    """Without a configured token, Sign and RequestTime are not checked."""
    q = query(RequestTime="1", Sign="garbage")
    assert provider().handle(request(q)).events


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"EventTime": 1}',
        b'{"EventTime": 1.5, "Info": {"Action": "Login", "To_Account": "bob"}}',
        b'{"EventTime": -1, "Info": {"Action": "Login", "To_Account": "bob"}}',
        b'{"Info": {"Action": "Login", "To_Account": 7}}',
        b'{"Info": {"Action": "Login", "To_Account": ""}}',
        b'{"Info": {"Action": "Login", "To_Account": "bob"}, "KickedDevice": [1]}',
    ],
)
def test_malformed_body_is_400(data: bytes) -> None:
    """Non-JSON, missing Info, wrong types, negative times and empty users are 400."""
    err = rejected(provider(), request(data=data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def test_event_time_may_be_a_string_of_digits() -> None:
    """EventTime "1763699999995" (a string) is read as the same time as the integer."""
    (ev,) = provider().handle(request(data=body(EventTime=str(NOW - 5)))).events
    assert ev.time == NOW - 5
    assert provider().handle(request(data=body(EventTime=NOW - 5))).events == [ev]


@pytest.mark.parametrize(
    "value", ["", "abc", "12a", "-5", "+5", " 5", "1e12", "1.5", "\u0661", "9" * 17, "9" * 5000]
)
def test_event_time_string_that_is_not_digits_is_400(value: str) -> None:
    """A string EventTime that is not a short run of ASCII digits is malformed."""
    err = rejected(provider(), request(data=body(EventTime=value)))
    assert (err.status, err.reason) == (400, "malformed body: EventTime is not a time in ms")


def test_event_time_string_beyond_max_ms_is_400() -> None:
    """A string EventTime above 2**53 - 1 is refused like the same integer."""
    assert rejected(provider(), request(data=body(EventTime=str(2**53)))).status == 400
    assert rejected(provider(), request(data=body(EventTime=2**53))).status == 400


def test_huge_integer_event_time_is_400() -> None:
    """A 5,000-digit EventTime literal is a 400, not an error from int parsing."""
    data = body().replace(b'"EventTime":%d' % (NOW - 5), b'"EventTime":' + b"9" * 5000)
    assert b"9" * 5000 in data
    assert rejected(provider(), request(data=data)).status == 400


@pytest.mark.parametrize(
    "info",
    [
        {"To_Account": "bob", "Reason": "Register"},
        {"Action": "", "To_Account": "bob"},
        {"Action": "Login", "Reason": "Register"},
        {"Action": "CustomStatusChange", "Reason": "SetCustomStatus"},
        {"Action": "CustomStatusChange", "To_Account": ""},
        {"Action": "SomethingNew"},
    ],
)
def test_state_change_without_action_or_account_is_400(info: dict[str, str]) -> None:
    """A State.StateChange lacking Info.Action or Info.To_Account is malformed, never acked."""
    err = rejected(provider(), request(data=body(Info=info)))
    assert err.status == 400
    assert err.reason.startswith("malformed body")
    reply = provider().error(err.status, err.reason)
    assert msgspec.json.decode(reply.body)["ActionStatus"] == "FAIL"


def test_unknown_action_with_account_is_acked_and_unused() -> None:
    """An Action Tencent may add later (with To_Account) is acked and counted unused."""
    parsed = provider().handle(request(data=body(Info={"Action": "New", "To_Account": "bob"})))
    assert (parsed.events, parsed.unused) == ([], 1)


@pytest.mark.parametrize("request_time", ["9" * 5000, "9" * 17, "0" * 4400 + "1"])
def test_huge_request_time_is_401(request_time: str) -> None:
    """A RequestTime of thousands of digits is refused as invalid, never a 500."""
    q = query(RequestTime=request_time, Sign=sign(TOKEN, request_time))
    err = rejected(provider(TOKEN), request(q))
    assert (err.status, err.reason) == (401, "invalid RequestTime")


def test_unknown_body_fields_are_tolerated() -> None:
    """Fields Tencent may add later do not break parsing."""
    assert provider().handle(request(data=body(NewField={"x": 1}))).events


def test_ip_allow_list_is_403() -> None:
    """A caller outside allowed_ips is refused with 403; one inside is served."""
    p = provider(allowed_ips=["192.168.0.0/16"])
    assert rejected(p, request()).status == 403
    p = provider(allowed_ips=["10.0.0.0/8"])
    assert p.handle(request()).events


def test_ok_ack_bytes() -> None:
    """OK is HTTP 200 with Tencent's exact JSON ack."""
    reply = provider().ok()
    assert reply.status == 200
    assert reply.body == b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'
    assert reply.content_type == "application/json"


@pytest.mark.parametrize("status", [400, 401, 403, 413, 503])
def test_error_ack_bytes(status: int) -> None:
    """Failures use the given HTTP status and ActionStatus FAIL, ErrorCode 1, the reason."""
    reply = provider().error(status, "why")
    assert reply.status == status
    assert reply.body == b'{"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":"why"}'
