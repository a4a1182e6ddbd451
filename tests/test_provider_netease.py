"""NetEase Yunxin IM login / logout copies (SPEC 3.6).

No official test vector exists for the copy CheckSum (NetEase's samples show placeholder
MD5s), so the vector below is computed by hand from the documented formulas and cross-checked
with coreutils::

    printf '%s' "$BODY" | md5sum      # 66f0b22426bb4cf8f67194569110e009
    printf '%s' 'app-secret-166f0b22426bb4cf8f67194569110e0091608877682300' \\
        | sha1sum                     # 00dbcd6189c746c7bf3dd39c586efc6760a859a8

with ``BODY`` = ``VECTOR_BODY`` below.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backends.base import PresenceSettings
from gateway.backends.memory import MemoryStore
from gateway.config import parse as parse_config
from gateway.errors import ConfigError
from gateway.model import PresenceEvent
from gateway.providers.base import WebhookRejected, WebhookRequest
from gateway.providers.netease import (
    CLIENT_TYPES,
    NetEaseConfig,
    NetEaseProvider,
    body_md5,
    build_request,
    sign,
    signed_headers,
)
from tests.live import serve
from tests.sendhook import app_of, now_ms, post, settings_with, states

KEY = "1589838d219453d6542"
SECRET = "app-secret-1"
NOW = 1763700000000
CONFIG = NetEaseConfig(app_key=KEY, app_secret=SECRET)
DEVICE = "c25f82d0-5f2e-492f-b5cc-3f4a585c25a2"
VECTOR_BODY = (
    b'{"eventType":"2","accid":"t3","clientType":"AOS",'
    b'"deviceId":"c25f82d0-5f2e-492f-b5cc-3f4a585c25a2","timestamp":"1608877682237"}'
)


def copy(**fields: Any) -> dict[str, Any]:
    """A login copy as NetEase documents it, with ``fields`` changed."""
    d: dict[str, Any] = {
        "clientType": "AOS",
        "code": "200",
        "clientIp": "60.2*.**.202",
        "customTag": "tag",
        "accid": "bob",
        "sdkVersion": "152",
        "eventType": "2",
        "deviceId": DEVICE,
        "timestamp": str(NOW - 100),
    }
    d.update(fields)
    return {k: v for k, v in d.items() if v is not None}


def request(
    data: Any = None,
    now: int = NOW,
    cur_time: int = NOW - 20,
    headers: dict[str, str] | None = None,
    ip: str = "10.0.0.1",
) -> WebhookRequest:
    body = (
        data if isinstance(data, bytes) else msgspec.json.encode(copy() if data is None else data)
    )
    signed = signed_headers(CONFIG, body, cur_time)
    return WebhookRequest(
        path=(),
        query=(),
        headers=signed if headers is None else signed | headers,
        body=body,
        client_ip=ip,
        now_ms=now,
    )


def provider(max_age_s: int = 600, **kw: Any) -> NetEaseProvider:
    cfg = NetEaseConfig(app_key=KEY, app_secret=SECRET, **kw)
    return NetEaseProvider(cfg, PresenceSettings(max_event_age_s=max_age_s))


def rejected(p: NetEaseProvider, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        p.handle(req)
    return info.value


def test_checksum_matches_the_hand_computed_vector() -> None:
    """MD5 and CheckSum follow the documented formulas (vector in the module docstring)."""
    md5 = body_md5(VECTOR_BODY)
    assert md5 == "66f0b22426bb4cf8f67194569110e009"
    assert sign(SECRET, md5, 1608877682300) == "00dbcd6189c746c7bf3dd39c586efc6760a859a8"
    assert sign(SECRET, md5, "1608877682300") == "00dbcd6189c746c7bf3dd39c586efc6760a859a8"


def test_the_vector_verifies_and_parses() -> None:
    """The vector's request, headers as NetEase names them, is accepted."""
    req = WebhookRequest(
        path=(),
        query=(),
        headers={
            "appkey": KEY,
            "curtime": "1608877682300",
            "md5": "66f0b22426bb4cf8f67194569110e009",
            "checksum": "00dbcd6189c746c7bf3dd39c586efc6760a859a8",
        },
        body=VECTOR_BODY,
        client_ip=None,
        now_ms=1608877682400,
    )
    (ev,) = provider().handle(req).events
    assert ev == PresenceEvent("t3", DEVICE, "android", True, 1608877682237, "")


def test_login_is_an_online_event_keyed_by_device_id() -> None:
    """eventType "2" is online for the deviceId device at the copy's timestamp."""
    parsed = provider().handle(request())
    assert parsed.events == [PresenceEvent("bob", DEVICE, "android", True, NOW - 100, "")]
    assert (parsed.unused, parsed.command) == (0, "login_logout")


def test_logout_is_offline() -> None:
    """eventType "3" is offline (reason logout)."""
    (ev,) = provider().handle(request(copy(eventType="3"))).events
    assert (ev.online, ev.reason, ev.device) == (False, "logout", DEVICE)


def test_integer_values_are_tolerated() -> None:
    """eventType, timestamp and code sent as numbers mean the same as strings."""
    data = copy(eventType=2, timestamp=NOW - 100, code=200)
    assert provider().handle(request(data)).events == provider().handle(request()).events


@pytest.mark.parametrize(
    ("client_type", "platform"),
    [*CLIENT_TYPES.items(), ("WINPHONE", "unknown"), ("REST", "unknown"), ("aos", "android")],
)
def test_client_types(client_type: str, platform: str) -> None:
    """clientType maps to the platform (unknown types are ``unknown``)."""
    assert provider().handle(request(copy(clientType=client_type))).events[0].platform == platform


def test_device_key_falls_back_to_the_client_type() -> None:
    """Without deviceId the clientType is the device key."""
    (ev,) = provider().handle(request(copy(deviceId=None, clientType="IOS"))).events
    assert (ev.device, ev.platform) == ("IOS", "ios")


def test_missing_timestamp_uses_the_signed_cur_time() -> None:
    """A copy without timestamp is stamped with its signed CurTime."""
    (ev,) = provider().handle(request(copy(timestamp=None), cur_time=NOW - 7)).events
    assert ev.time == NOW - 7


def test_other_copies_and_failed_logins_are_acked_and_unused() -> None:
    """Other eventTypes (messages, teams...) and a login with code != 200 count as unused."""
    for data in (
        {"eventType": "1", "msgType": "TEXT", "body": "hi", "msgTimestamp": "1"},
        {"eventType": 36, "fromAccount": "x"},
        copy(code="417"),
    ):
        parsed = provider().handle(request(data))
        assert (parsed.events, parsed.unused) == ([], 1)


def test_console_probe_is_acked_with_nothing_applied() -> None:
    """The console's signed ``{}`` is accepted, no event, nothing counted."""
    parsed = provider().handle(request(b"{}"))
    assert (parsed.events, parsed.unused, parsed.command) == ([], 0, "probe")


def test_unsigned_probe_is_401() -> None:
    """An unsigned ``{}`` is refused like any other unsigned request."""
    req = WebhookRequest((), (), {}, b"{}", "10.0.0.1", NOW)
    assert rejected(provider(), req).status == 401


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"checksum": "0" * 40}, "invalid CheckSum"),
        (
            {"checksum": sign("other", body_md5(msgspec.json.encode(copy())), NOW - 20)},
            "invalid CheckSum",
        ),
        ({"appkey": "other"}, "unknown AppKey"),
        ({"appkey": ""}, "missing AppKey, CurTime, MD5 or CheckSum"),
        ({"curtime": ""}, "missing AppKey, CurTime, MD5 or CheckSum"),
        ({"md5": ""}, "missing AppKey, CurTime, MD5 or CheckSum"),
        ({"checksum": ""}, "missing AppKey, CurTime, MD5 or CheckSum"),
        ({"curtime": "12x"}, "invalid CurTime"),
        ({"curtime": str(NOW - 20)[:-3] + "999"}, "invalid CheckSum"),
    ],
)
def test_header_refusals_are_401(headers: dict[str, str], reason: str) -> None:
    """Missing or wrong headers, another AppKey and a CheckSum not of these headers: 401."""
    err = rejected(provider(), request(headers=headers))
    assert (err.status, err.reason) == (401, reason)


@pytest.mark.parametrize("cur_time", [NOW - 601_000, NOW + 601_000])
def test_stale_cur_time_is_401(cur_time: int) -> None:
    """A CurTime further than max_event_age_s from now, either way, is refused."""
    err = rejected(provider(), request(cur_time=cur_time))
    assert (err.status, err.reason) == (401, "stale CurTime")


def test_body_not_matching_md5_is_401() -> None:
    """A body changed after signing (headers of the original) is refused."""
    req = request()
    tampered = WebhookRequest(
        req.path, req.query, req.headers, req.body.replace(b"bob", b"eve"), req.client_ip, NOW
    )
    err = rejected(provider(), tampered)
    assert (err.status, err.reason) == (401, "MD5 does not match the body")


def test_upper_case_hex_is_accepted() -> None:
    """MD5 and CheckSum in upper-case hex verify (CheckSum is computed over MD5 as sent)."""
    body = msgspec.json.encode(copy())
    md5 = body_md5(body).upper()
    headers = {"md5": md5, "checksum": sign(SECRET, md5, NOW - 20).upper()}
    assert provider().handle(request(body, headers=headers)).events


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b"\xff\xfe",
        b'{"accid": "bob"}',
        msgspec.json.encode(copy(accid=None)),
        msgspec.json.encode(copy(accid="")),
        msgspec.json.encode(copy(accid="b" * 300)),
        msgspec.json.encode(copy(accid=5)),
        msgspec.json.encode(copy(timestamp="soon")),
        msgspec.json.encode(copy(timestamp="-5")),
        msgspec.json.encode(copy(deviceId=None, clientType=None)),
    ],
)
def test_malformed_bodies_are_400(data: bytes) -> None:
    """Correctly signed but malformed copies: non-JSON, no eventType or accid, bad time: 400."""
    err = rejected(provider(), request(data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def test_ip_allow_list_is_403_before_the_signature() -> None:
    """A caller outside allowed_ips is refused with 403, even unsigned."""
    req = WebhookRequest((), (), {}, b"{}", "10.0.0.1", NOW)
    assert rejected(provider(allowed_ips=["192.0.2.1"]), req).status == 403


def test_ok_and_error_ack_bytes() -> None:
    """OK is HTTP 200 with exactly ``{}``; failures are ``{"error": reason}`` with the status."""
    p = provider()
    assert (p.ok().status, p.ok().body) == (200, b"{}")
    assert (p.error(401, "why").status, p.error(401, "why").body) == (401, b'{"error":"why"}')


def test_config_file_table() -> None:
    """[apps.netease] is read from TOML; an empty app_secret names its key."""
    head = '[[apps]]\nid = "a"\nclient_secret = "' + "c" * 32 + '"\napi_key = "k"\n'
    table = '[apps.netease]\napp_key = "k"\napp_secret = "s"\n'
    settings = parse_config(head + table, "x.toml")
    assert settings.apps["a"].providers()["netease"] == NetEaseConfig(app_key="k", app_secret="s")
    with pytest.raises(ConfigError, match=r"apps\[0\]\.netease\.app_secret"):
        parse_config(head + table.replace('"s"', '""'), "x.toml")


# -- through a real store ------------------------------------------------------------------


def event_body(user: str, device: str, online: bool, t: int, client: str = "IOS") -> bytes:
    data = copy(accid=user, deviceId=device, clientType=client, eventType="2" if online else "3")
    data["timestamp"] = str(t)
    return msgspec.json.encode(data)


async def apply_all(store: MemoryStore, bodies: list[bytes]) -> int:
    p = provider()
    published = 0
    for body in bodies:
        result = await store.apply("a", p.handle(request(body)).events, now_ms=NOW)
        published += len(result.published)
    return published


async def test_multi_device_user() -> None:
    """Two deviceIds are two devices; logging one out leaves the other online."""
    store = MemoryStore(PresenceSettings())
    await apply_all(
        store,
        [
            event_body("bob", "d-ios", True, NOW - 300),
            event_body("bob", "d-pc", True, NOW - 200, "PC"),
            event_body("bob", "d-ios", False, NOW - 100),
        ],
    )
    (bob,) = await store.get("a", ["bob"])
    assert (bob.status, [d.platform for d in bob.devices]) == ("online", ["windows"])


async def test_lost_and_out_of_order_copies_end_alike() -> None:
    """Copies in any order, each twice (NetEase warns they may be reordered), end alike."""
    bodies = [
        event_body("bob", "d1", True, NOW - 300),
        event_body("bob", "d1", False, NOW - 200),
        event_body("bob", "d2", True, NOW - 150, "WEB"),
        event_body("bob", "d1", True, NOW - 100),
    ]
    ends = set()
    for order in itertools.permutations(bodies):
        store = MemoryStore(PresenceSettings())
        await apply_all(store, list(order))
        assert await apply_all(store, list(order)) == 0
        (bob,) = await store.get("a", ["bob"])
        ends.add(msgspec.json.encode(bob.visible()))
    (end,) = ends
    assert b'"ios"' in end and b'"web"' in end


async def test_published_state_holds_no_device_id_or_ip() -> None:
    """Watchers see platforms only: no deviceId, clientIp or customTag."""
    store = MemoryStore(PresenceSettings())
    body = msgspec.json.encode(copy(clientIp="198.51.100.23", customTag="secret-tag"))
    result = await store.apply("a", provider().handle(request(body)).events, now_ms=NOW)
    published = msgspec.json.encode(result.published)
    assert b"bob" in published
    for private in (DEVICE.encode(), b"198.51.100.23", b"secret-tag"):
        assert private not in published


# -- the inverse ---------------------------------------------------------------------------

PLATFORMS = sorted({*CLIENT_TYPES.values(), "unknown"})


@st.composite
def events(draw: st.DrawFn) -> PresenceEvent:
    online = draw(st.booleans())
    return PresenceEvent(
        draw(st.text(min_size=1, max_size=64)),
        draw(st.text(min_size=1, max_size=64)),
        draw(st.sampled_from(PLATFORMS)),
        online,
        draw(st.integers(0, 2**53 - 1)),
        "" if online else "logout",
    )


@given(events())
def test_parse_of_build_is_identity(ev: PresenceEvent) -> None:
    """parse(build_request(ev)) == [ev] for any accid, deviceId, platform, state and time."""
    assert provider().handle(build_request(CONFIG, ev)).events == [ev]


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def e2e_settings(request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return settings_with(url, netease=CONFIG)


async def test_end_to_end_probe_login_logout_and_refusals(e2e_settings: Any) -> None:
    """Through uvicorn: the probe and copies get 200 {}; refusals are 401/400/413, no change."""
    app = app_of(e2e_settings)
    async with serve(e2e_settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        t = now_ms()
        probe = WebhookRequest((), (), signed_headers(CONFIG, b"{}", t), b"{}", None, t)
        r = await post(client, app.id, "netease", probe)
        assert (r.status_code, r.content) == (200, b"{}")
        on = PresenceEvent("bob", "dev-1", "ios", True, t - 50)
        r = await post(client, app.id, "netease", build_request(CONFIG, on, now_ms=t))
        assert (r.status_code, r.content) == (200, b"{}")
        (bob,) = await states(client, app, "bob")
        assert bob["status"] == "online" and bob["devices"] == [
            {"platform": "ios", "since": t - 50}
        ]
        v = bob["v"]

        off = build_request(CONFIG, PresenceEvent("bob", "dev-1", "ios", False, t - 10), now_ms=t)
        r = await post(
            client,
            app.id,
            "netease",
            WebhookRequest((), (), {**off.headers, "checksum": "0" * 40}, off.body, None, t),
        )
        assert r.status_code == 401 and r.json() == {"error": "invalid CheckSum"}
        bad = b"{not json"
        r = await post(
            client,
            app.id,
            "netease",
            WebhookRequest((), (), signed_headers(CONFIG, bad, t), bad, None, t),
        )
        assert r.status_code == 400 and r.json()["error"].startswith("malformed body")
        big = b"x" * (1024 * 1024 + 1)
        r = await client.post(f"/v1/apps/{app.id}/webhooks/netease", content=big)
        assert r.status_code == 413 and r.json() == {"error": "body over 1 MiB"}
        assert (await states(client, app, "bob"))[0]["v"] == v

        r = await post(client, app.id, "netease", off)
        assert (r.status_code, r.content) == (200, b"{}")
        (bob,) = await states(client, app, "bob")
        assert (bob["status"], bob["since"]) == ("offline", t - 10)
