"""Standard Webhooks from a custom backend."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from gateway.backends.base import PresenceSettings
from gateway.model import PresenceEvent, custom_event
from gateway.providers.base import WebhookRejected, WebhookRequest
from gateway.providers.standard import StandardConfig, StandardProvider, sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_dGhpcy1pcy1hbm90aGVyLXNlY3JldC1rZXk="
T = 1763700000000
T_S = T // 1000


def events(*items: dict[str, Any]) -> bytes:
    default = {"user": "bob", "device": "s-1", "platform": "web", "status": "online", "time": T}
    return msgspec.json.encode({"events": [{**default, **i} for i in items] or [default]})


def request(
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    secret: str = SECRET,
    client_ip: str | None = "10.0.0.1",
) -> WebhookRequest:
    raw = events() if data is None else data
    if headers is None:
        headers = sign(secret, "msg_1", raw, timestamp=T_S)
    return WebhookRequest(
        path=(), query=(), headers=headers, body=raw, client_ip=client_ip, now_ms=T
    )


def provider(**kw: Any) -> StandardProvider:
    return StandardProvider(StandardConfig(secret=SECRET, **kw), PresenceSettings())


def rejected(p: StandardProvider, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        p.handle(req)
    return info.value


def test_sign_produces_the_three_headers() -> None:
    """sign() gives webhook-id, webhook-timestamp and a v1 signature for that timestamp."""
    headers = sign(SECRET, "msg_1", b"{}", timestamp=1700000000)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers != sign(SECRET, "msg_1", b"{}", timestamp=1700000001)


def test_signed_events_are_parsed() -> None:
    """A correctly signed body yields its events with normalized platforms."""
    parsed = provider().handle(request())
    assert parsed.events == [PresenceEvent("bob", "s-1", "web", True, T, "")]
    assert (parsed.unused, parsed.command) == (0, "events")


def test_statuses_and_several_events() -> None:
    """online / offline / logout map to online / offline / offline with the status as reason."""
    data = events(
        {"status": "online", "platform": "iOS"},
        {"status": "offline", "device": "s-2"},
        {"status": "logout", "device": "s-3", "user": "carol"},
    )
    got = [
        (e.user, e.device, e.platform, e.online, e.reason)
        for e in provider().handle(request(data)).events
    ]
    assert got == [
        ("bob", "s-1", "ios", True, ""),
        ("bob", "s-2", "web", False, "offline"),
        ("carol", "s-3", "web", False, "logout"),
    ]


def test_platform_is_optional() -> None:
    """An event without platform is on the 'unknown' platform."""
    data = msgspec.json.encode(
        {"events": [{"user": "u", "device": "d", "status": "offline", "time": T}]}
    )
    assert provider().handle(request(data)).events[0].platform == "unknown"


def test_wrong_secret_is_401() -> None:
    """A body signed with another secret is refused."""
    err = rejected(provider(), request(secret=OTHER))
    assert err.status == 401


def test_tampered_body_is_401() -> None:
    """A body changed after signing is refused."""
    headers = sign(SECRET, "msg_1", events(), T_S)
    assert rejected(provider(), request(events({"status": "offline"}), headers)).status == 401


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_401(drop: str) -> None:
    """Each of the three headers is required."""
    headers = {k: v for k, v in sign(SECRET, "msg_1", events(), T_S).items() if k != drop}
    assert rejected(provider(), request(headers=headers)).status == 401


@pytest.mark.parametrize("offset_s", [-400, 400])
def test_timestamp_outside_five_minutes_is_401(offset_s: int) -> None:
    """A signature more than 5 minutes old or ahead of the receive time is refused."""
    headers = sign(SECRET, "msg_1", events(), timestamp=T_S + offset_s)
    assert rejected(provider(), request(headers=headers)).status == 401


def test_timestamp_inside_five_minutes_is_accepted() -> None:
    """A signature a few minutes old is still inside the tolerance."""
    headers = sign(SECRET, "msg_1", events(), timestamp=T_S - 200)
    assert provider().handle(request(headers=headers)).events


def test_any_of_several_signatures_may_match() -> None:
    """During secret rotation a sender may list several signatures; one match suffices."""
    good = sign(SECRET, "msg_1", events(), T_S)
    bad = sign(OTHER, "msg_1", events(), T_S)
    headers = {
        **good,
        "webhook-signature": f"{bad['webhook-signature']} {good['webhook-signature']}",
    }
    assert provider().handle(request(headers=headers)).events


@pytest.mark.parametrize("signature", ["garbage", "v1,not-base64!!", "v1,a,b", ""])
def test_malformed_signature_header_is_401(signature: str) -> None:
    """An unparsable signature header is a 401, not a crash."""
    headers = {**sign(SECRET, "msg_1", events(), T_S), "webhook-signature": signature}
    assert rejected(provider(), request(headers=headers)).status == 401


def test_body_not_matching_signature_is_401_even_if_not_utf8() -> None:
    """A non-UTF-8 body that was not the one signed is a bad signature, not a crash."""
    headers = sign(SECRET, "msg_1", b"{}", T_S)
    assert rejected(provider(), request(b"\xff\xfe", headers)).status == 401


@pytest.mark.parametrize("data", [b"\xff\xfe", b'{"events": ["\xc3"]}', b"\x00", b"not json"])
def test_signed_body_that_is_not_utf8_json_is_400(data: bytes) -> None:
    """A correctly signed body that is not UTF-8 JSON is malformed (400), not a bad signature."""
    err = rejected(provider(), request(data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def test_signature_agrees_with_the_standardwebhooks_package() -> None:
    """The package's own Webhook.verify accepts what sign() makes, and the provider accepts
    what the package signs."""
    now_s = int(time.time())
    headers = sign(SECRET, "msg_9", events(), now_s)
    Webhook(SECRET).verify(events(), headers, json_parse=False)
    theirs = Webhook(SECRET).sign("msg_9", datetime.fromtimestamp(now_s, UTC), events().decode())
    assert theirs == headers["webhook-signature"]
    got = StandardProvider(StandardConfig(secret=SECRET), PresenceSettings()).handle(
        WebhookRequest(
            path=(),
            query=(),
            headers={**headers, "webhook-signature": theirs},
            body=events(),
            client_ip=None,
            now_ms=now_s * 1000,
        )
    )
    assert len(got.events) == 1


@pytest.mark.parametrize(
    "timestamp", ["1763700000.5", "1e9", "", "-1763700000", "9" * 5000, "nan", " 1763700000"]
)
def test_malformed_timestamp_header_is_401(timestamp: str) -> None:
    """A webhook-timestamp that is not plain Unix seconds is refused, never a crash."""
    headers = {**sign(SECRET, "msg_1", events(), T_S), "webhook-timestamp": timestamp}
    assert rejected(provider(), request(headers=headers)).status == 401


def test_overlong_signature_list_and_id_are_401() -> None:
    """A huge webhook-signature list is cut short; a webhook-id over 256 chars is refused."""
    good = sign(SECRET, "msg_1", events(), T_S)
    many = " ".join(["v1,AAAA"] * 10_000 + [good["webhook-signature"]])
    assert rejected(provider(), request(headers={**good, "webhook-signature": many})).status == 401
    long_id = sign(SECRET, "m" * 257, events(), T_S)
    assert rejected(provider(), request(headers=long_id)).status == 401


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"events": {}}',
        b'{"events": [{"user": "u", "device": "d", "status": "away", "time": 1}]}',
        b'{"events": [{"user": "u", "device": "d", "status": "online"}]}',
        b'{"events": [{"user": "u", "device": "d", "status": "online", "time": "1"}]}',
        b'{"events": [{"user": "u", "device": "d", "status": "online", "time": -1}]}',
        b'{"events": [{"user": "", "device": "d", "status": "online", "time": 1}]}',
        b'{"events": [{"user": "u", "device": "", "status": "online", "time": 1}]}',
        b'{"events": [{"user": "u", "device": "d", "status": "online", "time": 1, "x": 1}]}',
        b'{"events": [], "extra": true}',
    ],
)
def test_malformed_body_is_400(data: bytes) -> None:
    """Wrong shapes, unknown statuses or fields, bad times and empty ids are 400."""
    err = rejected(provider(), request(data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def custom_body(*items: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"events": [{"user": "bob", "time": T, **i} for i in items]})


def test_custom_events_are_parsed() -> None:
    """An event with custom and no device/status sets the custom; null (or "") clears it."""
    data = custom_body({"custom": "In a meeting"}, {"custom": None}, {"custom": ""})
    parsed = provider().handle(request(data))
    assert parsed.events == [
        custom_event("bob", "In a meeting", T),
        custom_event("bob", "", T),
        custom_event("bob", "", T),
    ]


def test_custom_events_mix_with_device_events() -> None:
    """One body may carry device events and custom events, in order."""
    data = msgspec.json.encode(
        {
            "events": [
                msgspec.json.decode(events())["events"][0],
                {"user": "bob", "time": T, "custom": "x"},
            ]
        }
    )
    parsed = provider().handle(request(data))
    assert parsed.events == [
        PresenceEvent("bob", "s-1", "web", True, T, ""),
        custom_event("bob", "x", T),
    ]


def test_custom_of_100_bytes_passes_and_101_is_400() -> None:
    """The custom's limit is 100 UTF-8 bytes: multi-byte characters count by their bytes."""
    assert provider().handle(request(custom_body({"custom": "é" * 50}))).events[0].custom
    for text in ("x" * 101, "é" * 50 + "x"):
        err = rejected(provider(), request(custom_body({"custom": text})))
        assert (err.status, err.reason) == (400, "malformed body: custom over 100 bytes (UTF-8)")


@pytest.mark.parametrize(
    "item",
    [
        {"custom": "x", "device": "d"},
        {"custom": "x", "status": "online"},
        {"custom": 5},
        {"custom": "x", "user": ""},
        {"device": "d"},
        {"status": "online"},
        {},
    ],
)
def test_malformed_custom_events_are_400(item: dict[str, Any]) -> None:
    """custom with a device or status, a non-string custom, or neither custom nor both of
    device and status, is malformed."""
    err = rejected(provider(), request(custom_body(item)))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def test_reason_does_not_echo_large_input() -> None:
    """A huge bad value is not echoed back whole in the reason."""
    data = events({"status": "x" * 5000})
    assert len(rejected(provider(), request(data)).reason) <= 160


def test_ip_allow_list_is_403() -> None:
    """A caller outside allowed_ips is refused with 403 before the signature is checked."""
    p = provider(allowed_ips=["10.1.0.0/16"])
    assert rejected(p, request(headers={})).status == 403
    assert p.handle(request(client_ip="10.1.2.3")).events


def test_ok_ack_is_204_empty() -> None:
    """OK is 204 with no body and no content type."""
    reply = provider().ok()
    assert (reply.status, reply.body, reply.content_type) == (204, b"", None)


@pytest.mark.parametrize("status", [400, 401, 403, 413, 503])
def test_error_ack_bytes(status: int) -> None:
    """Failures use the given status and {"error": reason}."""
    reply = provider().error(status, "why")
    assert (reply.status, reply.body) == (status, b'{"error":"why"}')
