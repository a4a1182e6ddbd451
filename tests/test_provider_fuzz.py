"""Every provider's ``handle()`` on generated input: a Parsed or a 4xx, never another error.

Requests are signed correctly where the provider allows it (so the parser is reached) and
carry arbitrary bytes, arbitrary JSON (deeply nested, huge integers), valid bodies with a
field replaced by any JSON value, and arbitrary query strings, headers and path segments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.backends.base import PresenceSettings
from gateway.providers import easemob, netease, rongcloud, standard, tencent
from gateway.providers.base import (
    MAX_ID_LENGTH,
    MAX_MS,
    Parsed,
    Provider,
    WebhookRejected,
    WebhookRequest,
)
from gateway.providers.easemob import EasemobConfig, EasemobProvider
from gateway.providers.netease import NetEaseConfig, NetEaseProvider
from gateway.providers.openim import OpenIMConfig, OpenIMProvider
from gateway.providers.rongcloud import RongCloudConfig, RongCloudProvider
from gateway.providers.standard import StandardConfig, StandardProvider
from gateway.providers.tencent import TencentConfig, TencentProvider
from gateway.providers.wukongim import WuKongIMConfig, WuKongIMProvider

NOW = 1763700000000
NOW_S = NOW // 1000
STATUSES = {400, 401, 403, 404}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TENCENT_TOKEN = "fuzz-token"
RC_KEY, RC_SECRET = "rk", "rs"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OPENIM_TOKEN = "fuzz-openim-token"
EASEMOB_SECRET = "fuzz-easemob-secret"
NETEASE = NetEaseConfig(app_key="nk", app_secret="fuzz-netease-secret")

# -- bodies -------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["0", "1", "2", "Login", "Logout", "online", "", "9" * 40]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


def nested(depth: int, kind: str) -> bytes:
    """``depth`` nested arrays or objects, optionally inside a valid-looking field."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"Info":' + b"[" * depth + b"]" * depth + b"}"


deep = st.builds(
    nested, st.integers(min_value=500, max_value=20_000), st.sampled_from(["array", "object", "in"])
)
huge_int = st.integers(min_value=1, max_value=6000).map(lambda n: b"9" * n)

TEMPLATES: dict[str, Any] = {
    "tencent": {
        "CallbackCommand": "State.StateChange",
        "EventTime": NOW - 5,
        "Info": {"Action": "Login", "To_Account": "bob", "Reason": "Register"},
        "KickedDevice": [{"Platform": "Web"}],
    },
    "rongcloud": [
        {
            "userid": "bob",
            "status": "0",
            "os": "iOS",
            "time": NOW - 9,
            "clientIp": "1.2.3.4:5",
            "sessionId": "s1",
        }
    ],
    "openim": {
        "callbackCommand": "callbackAfterUserOnlineCommand",
        "operationID": "op",
        "platformID": 5,
        "platform": "Web",
        "userID": "bob",
        "seq": NOW - 9,
        "isAppBackground": False,
        "connID": "c1",
    },
    "standard": {
        "events": [
            {"user": "bob", "device": "d1", "platform": "web", "status": "online", "time": NOW}
        ]
    },
    "easemob": {
        "callId": "org#app_260ae3eb",
        "reason": "login",
        "security": "",
        "os": "ios",
        "ip": "223.71.97.198:52709",
        "host": "msync@ebs",
        "appkey": "org#app",
        "user": "org#app_bob@easemob.com/ios_a5fa01fd",
        "version": "3.8.9.1",
        "timestamp": NOW - 5,
        "status": "online",
    },
    "netease": {
        "clientType": "AOS",
        "code": "200",
        "accid": "bob",
        "eventType": "2",
        "deviceId": "c25f82d0",
        "timestamp": str(NOW - 5),
    },
    "wukongim": ["bob-1-1-1001-1-1", "carol-0-0-7-0-0"],
}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc``."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _copy(doc: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(doc))


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = _copy(doc)
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A valid body of ``name`` with one value replaced (or removed), or a huge int spliced in."""
    doc = TEMPLATES[name]
    path = draw(st.sampled_from(_paths(doc)))
    how = draw(st.sampled_from(["replace", "remove", "huge"]))
    if how == "huge":
        marker = "__HUGE__"
        raw = msgspec.json.encode(_replace(doc, path, marker))
        return raw.replace(b'"__HUGE__"', draw(huge_int))
    if how == "remove":
        parent = _copy(doc)
        target = parent
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        return msgspec.json.encode(parent)
    return msgspec.json.encode(_replace(doc, path, draw(json_value)))


def bodies(name: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        json_value.map(msgspec.json.encode),
        deep,
        huge_int,
        mutated(name),
        st.just(msgspec.json.encode(TEMPLATES[name])),
    )


text = st.text(max_size=30)
pairs = st.lists(st.tuples(text, text), max_size=4).map(tuple)
header_map = st.dictionaries(st.text(max_size=20).map(str.lower), text, max_size=4)
segments = st.lists(st.text(max_size=20), max_size=3).map(tuple)

# -- signed requests, one builder per provider ----------------------------------------------


def tencent_request(
    body: bytes,
    rt: str = str(NOW_S),
    appid: str = "1400000000",
    command: str = "State.StateChange",
    platform: str = "iOS",
) -> WebhookRequest:
    query = (
        ("SdkAppid", appid),
        ("CallbackCommand", command),
        ("OptPlatform", platform),
        ("RequestTime", rt),
        ("Sign", tencent.sign(TENCENT_TOKEN, rt)),
    )
    return _request(body, query=query)


def rongcloud_request(
    body: bytes, ts: str = str(NOW), nonce: str = "n1", ts_name: str = "timestamp"
) -> WebhookRequest:
    query = (
        ("appKey", RC_KEY),
        ("nonce", nonce),
        (ts_name, ts),
        ("signature", rongcloud.sign(RC_SECRET, nonce, ts)),
    )
    return _request(body, query=query)


def openim_request(
    body: bytes, path: tuple[str, ...] = (OPENIM_TOKEN, "callbackAfterUserOnlineCommand")
) -> WebhookRequest:
    return _request(body, headers={"operationid": "op"}, path=path)


def standard_request(body: bytes, msg_id: str = "m1", ts: int = NOW_S) -> WebhookRequest:
    return _request(body, headers=standard.sign(WHSEC, msg_id, body, ts))


def _request(
    body: bytes,
    query: tuple[tuple[str, str], ...] = (),
    headers: dict[str, str] | None = None,
    path: tuple[str, ...] = (),
) -> WebhookRequest:
    return WebhookRequest(
        path=path, query=query, headers=headers or {}, body=body, client_ip="10.0.0.1", now_ms=NOW
    )


def easemob_request(body: bytes) -> WebhookRequest:
    """The body re-signed (``security``) when it has a callId and timestamp to sign."""
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        call_id, ts = doc.get("callId"), doc.get("timestamp")
        if isinstance(call_id, str) and isinstance(ts, int | str) and not isinstance(ts, bool):
            doc["security"] = easemob.sign(call_id, EASEMOB_SECRET, ts)
            body = msgspec.json.encode(doc)
    return _request(body)


def netease_request(body: bytes, cur_time: int = NOW) -> WebhookRequest:
    return _request(body, headers=netease.signed_headers(NETEASE, body, cur_time))


def wukongim_request(
    body: bytes, event: str = "user.onlinestatus", path: tuple[str, ...] = ("wk-token",)
) -> WebhookRequest:
    return _request(body, query=(("event", event),), path=path)


SIGNED: dict[str, Callable[..., WebhookRequest]] = {
    "tencent": tencent_request,
    "rongcloud": rongcloud_request,
    "openim": openim_request,
    "standard": standard_request,
    "easemob": easemob_request,
    "netease": netease_request,
    "wukongim": wukongim_request,
}


def mostly(valid: Any, *others: Any) -> st.SearchStrategy[Any]:
    """``valid`` four times in five, else one of ``others``."""
    return st.sampled_from([valid] * 4 * len(others) + list(others))


_OPENIM_PATHS = mostly(
    (OPENIM_TOKEN, "callbackAfterUserOnlineCommand"),
    (OPENIM_TOKEN,),
    (OPENIM_TOKEN, "callbackUserOfflineCommand"),
    (OPENIM_TOKEN, "x", "callbackUserOfflineCommand"),
    ("", OPENIM_TOKEN, "callbackUserKickOffCommand"),
)
OPTIONS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "tencent": {
        "rt": mostly(str(NOW_S), str(NOW_S - 30), "9" * 5000, "", "x", str(NOW_S + 61)),
        "appid": mostly("1400000000", "x", "9" * 5000, ""),
        "command": mostly("State.StateChange", "Other", ""),
        "platform": st.sampled_from(["iOS", "Web", "", "Toaster"]) | text,
    },
    "rongcloud": {
        "ts": mostly(str(NOW), str(NOW_S), str(NOW - 200_000), "9" * 5000, "-1", ""),
        "nonce": st.text(min_size=1, max_size=10) | st.just(""),
        "ts_name": st.sampled_from(["timestamp", "signTimestamp", "rc-timestamp"]),
    },
    "openim": {
        "path": st.one_of(*[_OPENIM_PATHS] * 3, segments),
    },
    "standard": {
        "msg_id": st.text(min_size=1, max_size=20),
        "ts": mostly(NOW_S, NOW_S - 200, NOW_S + 1000),
    },
    "easemob": {},
    "netease": {"cur_time": mostly(NOW, NOW - 10**6, 10**20)},
    "wukongim": {
        "event": mostly("user.onlinestatus", "msg.notify", ""),
        "path": st.one_of(*[mostly(("wk-token",), (), ("wk-token", "x"))] * 3, segments),
    },
}


@st.composite
def signed_requests(draw: st.DrawFn, name: str) -> WebhookRequest:
    """A request signed for ``name`` (mostly validly), sometimes with arbitrary extras."""
    body = draw(bodies(name), label="body")
    options = {key: draw(strategy, label=key) for key, strategy in OPTIONS[name].items()}
    req = SIGNED[name](body, **options)
    if draw(st.booleans()):
        extra = draw(header_map)
        req = WebhookRequest(
            path=req.path,
            query=(*req.query, *draw(pairs)),
            headers={**extra, **req.headers},
            body=req.body,
            client_ip=req.client_ip,
            now_ms=req.now_ms,
        )
    return req


def make(name: str) -> Provider:
    presence = PresenceSettings()
    if name == "tencent":
        cfg = TencentConfig(sdkappid=1400000000, callback_token=TENCENT_TOKEN)
        return TencentProvider(cfg, presence)
    if name == "rongcloud":
        return RongCloudProvider(RongCloudConfig(app_key=RC_KEY, app_secret=RC_SECRET), presence)
    if name == "openim":
        return OpenIMProvider(OpenIMConfig(token=OPENIM_TOKEN), presence)
    if name == "easemob":
        return EasemobProvider(EasemobConfig(appkey="org#app", secret=EASEMOB_SECRET), presence)
    if name == "netease":
        return NetEaseProvider(NETEASE, presence)
    if name == "wukongim":
        return WuKongIMProvider(WuKongIMConfig(token="wk-token"), presence)
    return StandardProvider(StandardConfig(secret=WHSEC), presence)


def check(provider: Provider, req: WebhookRequest) -> None:
    """``handle`` returns sane events or refuses with a 4xx whose reply encodes."""
    try:
        parsed = provider.handle(req)
    except WebhookRejected as exc:
        event(f"rejected {exc.status}")
        assert exc.status in STATUSES, (exc.status, exc.reason)
        assert 0 < len(exc.reason) <= 160
        reply = provider.error(exc.status, exc.reason)
        assert reply.status == exc.status and isinstance(reply.body, bytes)
        return
    assert isinstance(parsed, Parsed)
    event("parsed with events" if parsed.events else "parsed, no events")
    for ev in parsed.events:
        assert 0 < len(ev.user) <= MAX_ID_LENGTH and 0 < len(ev.device) <= MAX_ID_LENGTH
        assert isinstance(ev.time, int) and 0 <= ev.time <= MAX_MS
        assert isinstance(ev.online, bool)
    if parsed.replay_key is not None:
        assert parsed.digest == hashlib.sha256(req.body).digest()
        assert parsed.replay_ttl_ms > 0


@pytest.mark.parametrize("name", sorted(SIGNED))
@FUZZ
@given(data=st.data())
def test_signed_requests_never_raise_other_errors(name: str, data: st.DataObject) -> None:
    """Signed requests with any body reach the parser and give a Parsed or a 4xx only."""
    check(make(name), data.draw(signed_requests(name)))


@pytest.mark.parametrize("name", sorted(SIGNED))
@FUZZ
@given(
    body=st.binary(max_size=200),
    query=pairs,
    headers=header_map,
    path=segments,
    client_ip=st.one_of(st.none(), st.text(max_size=40), st.ip_addresses().map(str)),
)
def test_unsigned_requests_are_refused_cleanly(
    name: str,
    body: bytes,
    query: tuple[tuple[str, str], ...],
    headers: dict[str, str],
    path: tuple[str, ...],
    client_ip: str | None,
) -> None:
    """Arbitrary query strings, headers, paths and addresses give a Parsed or a 4xx only."""
    req = WebhookRequest(
        path=path, query=query, headers=headers, body=body, client_ip=client_ip, now_ms=NOW
    )
    check(make(name), req)


@pytest.mark.parametrize("name", sorted(SIGNED))
@pytest.mark.parametrize("kind", ["array", "object", "in"])
def test_deeply_nested_json_is_400(name: str, kind: str) -> None:
    """JSON nested 100,000 deep in a signed request is a 400: no RecursionError escapes."""
    with pytest.raises(WebhookRejected) as info:
        make(name).handle(SIGNED[name](nested(100_000, kind)))
    assert info.value.status == 400 and info.value.reason.startswith("malformed body")


def test_templates_are_valid() -> None:
    """The unmutated template of every provider, signed, parses into at least one event."""
    for name in SIGNED:
        assert make(name).handle(SIGNED[name](msgspec.json.encode(TEMPLATES[name]))).events
