"""RongCloud online status subscription webhooks."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest

from gateway.backends.base import PresenceSettings
from gateway.model import PresenceEvent
from gateway.providers.base import WebhookRejected, WebhookRequest
from gateway.providers.rongcloud import RongCloudConfig, RongCloudProvider, sign

KEY = "someappKey"
SECRET = "Y1W2MeFwwwRxa0"
NOW = 1763700000000
NONCE = "14314"


def item(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "userid": "bob",
        "status": "0",
        "os": "iOS",
        "time": NOW - 100,
        "clientIp": "172.20.10.94:41748",
        "sessionId": "s-1",
    }
    doc.update(fields)
    return doc


def signed_query(ts: int | str = NOW, **names: str) -> tuple[tuple[str, str], ...]:
    """appKey, nonce, timestamp, signature under the given (possibly older) names."""
    n = {"appKey": "appKey", "nonce": "nonce", "timestamp": "timestamp", "signature": "signature"}
    n.update(names)
    return (
        (n["appKey"], KEY),
        (n["timestamp"], str(ts)),
        (n["nonce"], NONCE),
        (n["signature"], sign(SECRET, NONCE, ts)),
    )


def request(
    data: Any = None,
    q: tuple[tuple[str, str], ...] | None = None,
    headers: dict[str, str] | None = None,
    now: int = NOW,
) -> WebhookRequest:
    raw = (
        data if isinstance(data, bytes) else msgspec.json.encode([item()] if data is None else data)
    )
    return WebhookRequest(
        path=(),
        query=signed_query() if q is None else q,
        headers=headers or {},
        body=raw,
        client_ip="10.0.0.1",
        now_ms=now,
    )


def provider(max_age_s: int = 600, **kw: Any) -> RongCloudProvider:
    cfg = RongCloudConfig(app_key=KEY, app_secret=SECRET, **kw)
    return RongCloudProvider(cfg, PresenceSettings(max_event_age_s=max_age_s))


def rejected(p: RongCloudProvider, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        p.handle(req)
    return info.value


def test_sign_matches_the_documented_test_vector() -> None:
    """sha1 hex of secret + nonce + timestamp gives the vector from PROVIDERS.md."""
    expected = "30be0bbca9c9b2e27578701e9fda2358a814c88f"
    assert sign("Y1W2MeFwwwRxa0", "14314", 1408710653000) == expected
    assert sign("Y1W2MeFwwwRxa0", "14314", "1408710653000") == expected


def test_online_event_keyed_by_session() -> None:
    """status "0" is an online event for the sessionId device, at the event's time."""
    parsed = provider().handle(request())
    assert parsed.events == [PresenceEvent("bob", "s-1", "ios", True, NOW - 100, "")]
    assert (parsed.unused, parsed.command) == (0, "online_status")


@pytest.mark.parametrize(
    ("status", "online", "reason"),
    [
        ("0", True, ""),
        ("1", False, "offline"),
        ("2", False, "logout"),
        (0, True, ""),
        (1, False, "offline"),
        (2, False, "logout"),
    ],
)
def test_status_strings_and_integers(status: Any, online: bool, reason: str) -> None:
    """status "0"/"1"/"2" (or integers) mean online / offline / logged out."""
    (ev,) = provider().handle(request([item(status=status)])).events
    assert (ev.online, ev.reason) == (online, reason)


def test_unknown_status_is_unused() -> None:
    """A status value RongCloud may add later is acked and counted unused."""
    parsed = provider().handle(request([item(status="7"), item()]))
    assert (len(parsed.events), parsed.unused) == (1, 1)


def test_single_object_body_is_accepted() -> None:
    """A body that is one object instead of an array gives the same event."""
    assert provider().handle(request(item())).events == provider().handle(request([item()])).events


def test_array_gives_one_event_per_item_and_multi_device_by_session() -> None:
    """Each array item is an event; one user's sessions are distinct devices."""
    data = [
        item(sessionId="a", os="iOS"),
        item(sessionId="b", os="Websocket"),
        item(userid="carol"),
    ]
    events = provider().handle(request(data)).events
    assert [(e.user, e.device, e.platform) for e in events] == [
        ("bob", "a", "ios"),
        ("bob", "b", "web"),
        ("carol", "s-1", "ios"),
    ]


def test_empty_session_falls_back_to_os() -> None:
    """Without sessionId the os name is the device key."""
    (ev,) = provider().handle(request([item(sessionId="", os="Android")])).events
    assert ev.device == "Android"


def test_no_session_and_no_os_is_400() -> None:
    """An item with neither sessionId nor os has no device key: 400."""
    data = [{"userid": "bob", "status": "1", "time": NOW}]
    assert rejected(provider(), request(data)).status == 400


@pytest.mark.parametrize(
    ("os", "platform"),
    [
        ("iOS", "ios"),
        ("Android", "android"),
        ("HarmonyOS", "harmonyos"),
        ("Websocket", "web"),
        ("PC", "pc"),
        ("MiniProgram", "miniprogram"),
        ("", "unknown"),
    ],
)
def test_os_is_normalized(os: str, platform: str) -> None:
    """RongCloud os names map to the normalized platforms (Websocket is web)."""
    (ev,) = provider().handle(request([item(os=os)])).events
    assert ev.platform == platform


def test_client_ip_never_reaches_events() -> None:
    """clientIp is dropped: no field of any event carries it."""
    (ev,) = provider().handle(request()).events
    assert "172.20.10.94" not in repr(ev)


def test_missing_time_uses_receive_time() -> None:
    """An item without time uses the request's now_ms."""
    data = [{k: v for k, v in item().items() if k != "time"}]
    (ev,) = provider().handle(request(data)).events
    assert ev.time == NOW


def test_unknown_fields_are_tolerated() -> None:
    """Fields RongCloud may add later do not break parsing."""
    assert provider().handle(request([item(extra={"a": 1}, deviceId="x")])).events


def test_empty_array_is_ok_with_no_events() -> None:
    """An empty array is a valid, empty delivery."""
    assert provider().handle(request([])).events == []


@pytest.mark.parametrize(
    "names",
    [
        {},
        {"timestamp": "signTimestamp"},
        {"nonce": "rc-nonce", "signature": "rc-signature"},
        {"appKey": "appkey", "nonce": "NONCE", "signature": "Signature"},
    ],
)
def test_accepted_parameter_names(names: dict[str, str]) -> None:
    """appKey/nonce/timestamp/signature, signTimestamp and rc-* names (any case) verify."""
    assert provider().handle(request(q=signed_query(**names))).events


def test_rc_timestamp_in_seconds() -> None:
    """rc-timestamp is in seconds; it is checked for freshness as seconds."""
    q = signed_query(
        NOW // 1000, timestamp="rc-timestamp", nonce="rc-nonce", signature="rc-signature"
    )
    assert provider().handle(request(q=q)).events
    stale = signed_query(NOW // 1000 - 301, timestamp="rc-timestamp")
    assert rejected(provider(), request(q=stale)).status == 401


def test_signature_fields_from_headers() -> None:
    """The same fields sent as headers are accepted too."""
    headers = {k.lower(): v for k, v in signed_query()}
    assert provider().handle(request(q=(), headers=headers)).events


def test_signature_compared_case_insensitively() -> None:
    """An upper-case hex signature still verifies."""
    q = tuple((k, v.upper() if k == "signature" else v) for k, v in signed_query())
    assert provider().handle(request(q=q)).events


def test_wrong_app_key_is_401() -> None:
    """An appKey that is not ours is refused even when the signature is right."""
    q = (("appKey", "other"), *signed_query()[1:])
    err = rejected(provider(), request(q=q))
    assert (err.status, err.reason) == (401, "unknown appKey")


def test_missing_app_key_relies_on_signature() -> None:
    """Without appKey (rc-* form) the signature alone authenticates the request."""
    assert provider().handle(request(q=signed_query()[1:])).events


def test_wrong_signature_is_401() -> None:
    """A signature made with another secret is refused."""
    q = (*signed_query()[:3], ("signature", sign("other", NONCE, NOW)))
    err = rejected(provider(), request(q=q))
    assert (err.status, err.reason) == (401, "invalid signature")


@pytest.mark.parametrize("drop", ["nonce", "timestamp", "signature"])
def test_missing_signature_field_is_401(drop: str) -> None:
    """nonce, timestamp and signature are all required."""
    q = tuple(kv for kv in signed_query() if kv[0] != drop)
    assert rejected(provider(), request(q=q)).status == 401


@pytest.mark.parametrize("ts", ["abc", "-5", "1e12", "12345678901234567890"])
def test_invalid_timestamp_is_401(ts: str) -> None:
    """A timestamp that is not a plain integer is refused."""
    assert rejected(provider(), request(q=signed_query(ts))).status == 401


@pytest.mark.parametrize("skew_s", [-301, 301])
def test_stale_timestamp_is_401(skew_s: int) -> None:
    """A signature timestamp further than 5 minutes from now is refused."""
    err = rejected(provider(), request(q=signed_query(NOW + skew_s * 1000)))
    assert (err.status, err.reason) == (401, "stale timestamp")


@pytest.mark.parametrize("max_age_s", [60, 600, 3600])
def test_timestamp_window_is_five_minutes_whatever_max_event_age(max_age_s: int) -> None:
    """The signature window is 5 minutes, not max_event_age_s (which bounds event times)."""
    assert provider(max_age_s=max_age_s).handle(request(q=signed_query(NOW - 299_000))).events
    assert provider(max_age_s=max_age_s).handle(request(q=signed_query(NOW + 299_000))).events
    err = rejected(provider(max_age_s=max_age_s), request(q=signed_query(NOW - 301_000)))
    assert err.status == 401


def test_replay_claim_names_the_signed_query_and_the_body() -> None:
    """The replay key depends on nonce, timestamp and signature only; the digest on the body."""
    a = provider().handle(request([item()]))
    again = provider().handle(request([item()]))
    other_body = provider().handle(request([item(status="1")]))
    assert a.replay_key is not None and len(a.replay_key) == 64
    assert (again.replay_key, again.digest) == (a.replay_key, a.digest)
    assert other_body.replay_key == a.replay_key and other_body.digest != a.digest
    assert a.digest == hashlib.sha256(msgspec.json.encode([item()])).digest()
    later = provider().handle(request(q=signed_query(NOW + 1)))
    assert later.replay_key != a.replay_key
    upper = tuple((k, v.upper() if k == "signature" else v) for k, v in signed_query())
    assert provider().handle(request(q=upper)).replay_key == a.replay_key


@pytest.mark.parametrize(("ts", "ttl_ms"), [(NOW, 360_000), (NOW - 300_000, 60_000)])
def test_replay_claim_lasts_until_the_timestamp_leaves_the_window(ts: int, ttl_ms: int) -> None:
    """The claim is kept while the signed query could still be accepted, plus a margin."""
    assert provider().handle(request(q=signed_query(ts))).replay_ttl_ms == ttl_ms
    q = signed_query(ts // 1000, timestamp="rc-timestamp")
    assert provider().handle(request(q=q)).replay_ttl_ms == ttl_ms


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"7",
        b'[{"status": "0", "sessionId": "s"}]',
        b'[{"userid": "", "status": "0", "sessionId": "s"}]',
        b'[{"userid": 5, "status": "0", "sessionId": "s"}]',
        b'[{"userid": "bob", "status": null, "sessionId": "s"}]',
        b'[{"userid": "bob", "status": "0", "sessionId": "s", "time": "now"}]',
        b'[{"userid": "bob", "status": "0", "sessionId": "s", "time": -1}]',
    ],
)
def test_malformed_body_is_400(data: bytes) -> None:
    """Non-JSON, wrong types, negative times and empty or missing users are 400."""
    err = rejected(provider(), request(data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def test_overlong_session_is_400() -> None:
    """A device key over 256 characters is refused."""
    assert rejected(provider(), request([item(sessionId="s" * 257)])).status == 400


def test_ip_allow_list_is_403() -> None:
    """A caller outside allowed_ips is refused with 403 before the signature is checked."""
    assert rejected(provider(allowed_ips=["192.168.0.0/16"]), request(q=())).status == 403
    assert provider(allowed_ips=["10.0.0.1"]).handle(request()).events


def test_ok_ack_bytes() -> None:
    """OK is HTTP 200 with a small JSON body."""
    reply = provider().ok()
    assert (reply.status, reply.body) == (200, b'{"code":200}')


@pytest.mark.parametrize("status", [400, 401, 403, 413, 503])
def test_error_ack_bytes(status: int) -> None:
    """Failures use the given HTTP status and {"code": status, "error": reason}."""
    reply = provider().error(status, "why")
    assert reply.status == status
    assert reply.body == b'{"code":%d,"error":"why"}' % status
