"""Easemob / Agora Chat ``userStatus`` callbacks (SPEC 3.5).

No official signature test vector exists for Easemob (the documents' samples are masked), so
the vector below is computed by hand from the documented formula
``md5(callId + secret + timestamp)`` and cross-checked with coreutils::

    printf '%s' 'easemob-demo#chatdemoui_260ae3eb-ba31-4f01-9a62-8b3b05f3a16cs3cr3t1642648955563' \\
        | md5sum    # 1e5830b0199a875977b28108d69cdbd4
"""

from __future__ import annotations

import dataclasses
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
from gateway.providers.easemob import (
    EasemobConfig,
    EasemobProvider,
    build_request,
    sign,
)
from tests.live import serve
from tests.sendhook import app_of, now_ms, post, settings_with, states

APPKEY = "easemob-demo#chatdemoui"
SECRET = "s3cr3t"
NOW = 1763700000000
CALL_ID = f"{APPKEY}_260ae3eb-ba31-4f01-9a62-8b3b05f3a16c"
RESOURCE = "ios_a5fa01fd-b5a4-84d5-ebeb-bf10e8950442"
CONFIG = EasemobConfig(appkey=APPKEY, secret=SECRET)


def doc(**fields: Any) -> dict[str, Any]:
    """A correctly signed login callback, as Easemob documents it, with ``fields`` changed."""
    d: dict[str, Any] = {
        "callId": CALL_ID,
        "reason": "login",
        "os": "ios",
        "ip": "223.71.97.198:52709",
        "host": "msync@ebs-ali-beijing-msync40",
        "appkey": APPKEY,
        "user": f"{APPKEY}_bob@easemob.com/{RESOURCE}",
        "version": "3.8.9.1",
        "timestamp": NOW - 100,
        "status": "online",
    }
    d.update(fields)
    if "security" not in fields:
        d["security"] = sign(d["callId"], SECRET, d["timestamp"])
    return d


def request(data: Any = None, now: int = NOW, ip: str = "10.0.0.1") -> WebhookRequest:
    body = data if isinstance(data, bytes) else msgspec.json.encode(doc() if data is None else data)
    return WebhookRequest(path=(), query=(), headers={}, body=body, client_ip=ip, now_ms=now)


def provider(max_age_s: int = 600, **kw: Any) -> EasemobProvider:
    cfg = EasemobConfig(appkey=APPKEY, secret=SECRET, **kw)
    return EasemobProvider(cfg, PresenceSettings(max_event_age_s=max_age_s))


def rejected(p: EasemobProvider, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        p.handle(req)
    return info.value


def test_security_matches_the_hand_computed_vector() -> None:
    """sign() is md5 hex of callId + secret + timestamp (vector in the module docstring)."""
    expected = "1e5830b0199a875977b28108d69cdbd4"
    assert sign(CALL_ID, SECRET, 1642648955563) == expected
    assert sign(CALL_ID, SECRET, "1642648955563") == expected


def test_login_is_an_online_event_keyed_by_the_resource() -> None:
    """A login is one online event: user = username, device = resource, time = timestamp."""
    parsed = provider().handle(request())
    assert parsed.events == [PresenceEvent("bob", RESOURCE, "ios", True, NOW - 100, "")]
    assert (parsed.unused, parsed.command) == (0, "userStatus")


@pytest.mark.parametrize(
    ("reason", "online", "ours"),
    [("login", True, ""), ("logout", False, "logout"), ("replaced", False, "kicked")],
)
def test_reasons(reason: str, online: bool, ours: str) -> None:
    """login is online; logout is offline; replaced is offline with reason kicked."""
    (ev,) = provider().handle(request(doc(reason=reason))).events
    assert (ev.online, ev.reason) == (online, ours)


def test_user_without_the_easemob_domain() -> None:
    """Agora's form of ``user`` (no @easemob.com) gives the same event."""
    short = doc(user=f"{APPKEY}_bob/{RESOURCE}")
    assert provider().handle(request(short)).events == provider().handle(request()).events


def test_username_may_contain_underscores_and_the_appkey_case_may_differ() -> None:
    """Only the appkey prefix is cut off; the rest up to @ or / is the username."""
    data = doc(user=f"{APPKEY.upper()}_bob_smith.2@easemob.com/{RESOURCE}")
    assert provider().handle(request(data)).events[0].user == "bob_smith.2"


@pytest.mark.parametrize(
    ("os_name", "platform"),
    [
        ("ios", "ios"),
        ("android", "android"),
        ("web", "web"),
        ("webim", "web"),
        ("win", "windows"),
        ("mac", "mac"),
        ("linux", "linux"),
        ("harmonyos", "harmonyos"),
        ("toaster", "unknown"),
    ],
)
def test_platform_from_os(os_name: str, platform: str) -> None:
    """The ``os`` field names the platform (unknown names are ``unknown``)."""
    assert provider().handle(request(doc(os=os_name))).events[0].platform == platform


def test_platform_from_the_resource_when_os_is_missing() -> None:
    """Without ``os`` the resource's ``{os}_`` prefix names the platform."""
    data = doc(os="", user=f"{APPKEY}_bob/android_123")
    (ev,) = provider().handle(request(data)).events
    assert (ev.device, ev.platform) == ("android_123", "android")


def test_other_reasons_and_other_callbacks_are_acked_and_unused() -> None:
    """A reason we do not know, or a message callback on the same URL, is acked and counted."""
    for data in (
        doc(reason="suspended"),
        {k: v for k, v in doc(eventType="chat").items() if k not in ("reason", "user")},
    ):
        parsed = provider().handle(request(data))
        assert (parsed.events, parsed.unused) == ([], 1)


def test_string_timestamp_is_accepted() -> None:
    """A timestamp sent as a string of digits is signed and used as sent."""
    data = doc(timestamp=str(NOW - 5))
    assert provider().handle(request(data)).events[0].time == NOW - 5


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"security": "0" * 32}, "invalid security"),
        ({"security": sign(CALL_ID, "other", NOW - 100)}, "invalid security"),
        ({"appkey": "other#app"}, "unknown appkey"),
        ({"appkey": ""}, "unknown appkey"),
        ({"callId": ""}, "missing callId, security or timestamp"),
        ({"security": ""}, "missing callId, security or timestamp"),
        ({"timestamp": None}, "missing callId, security or timestamp"),
        ({"timestamp": NOW - 601_000}, "stale timestamp"),
        ({"timestamp": NOW + 601_000}, "stale timestamp"),
        ({"timestamp": "12a"}, "invalid timestamp"),
    ],
)
def test_refusals_are_401(fields: dict[str, Any], reason: str) -> None:
    """Bad or missing signature, another appkey and a stale timestamp are refused with 401."""
    data = doc(**fields)
    if fields.get("timestamp", 0) is None:
        del data["timestamp"]
    err = rejected(provider(), request(data))
    assert (err.status, err.reason) == (401, reason)


def test_tampered_body_fails_the_signature() -> None:
    """Changing the signed timestamp after signing is refused (the check is not skipped)."""
    data = doc()
    data["timestamp"] += 1
    assert rejected(provider(), request(data)).status == 401


def test_call_id_reused_with_another_body_is_401() -> None:
    """The signature does not cover the body: a fresh callId with a new body is refused."""
    p = provider()
    assert p.handle(request()).events
    assert p.handle(request()).events  # Easemob's own resend: the same body, accepted
    forged = doc(reason="logout", user=f"{APPKEY}_carol/{RESOURCE}")
    assert forged["security"] == doc()["security"]
    err = rejected(p, request(forged))
    assert (err.status, err.reason) == (401, "callId already used with another body")


def test_call_id_memory_is_bounded_by_the_freshness_window() -> None:
    """A callId is forgotten once its timestamp can no longer be fresh."""
    p = provider(max_age_s=1)
    p.handle(request(doc(timestamp=NOW)))
    later = doc(timestamp=NOW + 1500, reason="logout")
    p.handle(request(later, now=NOW + 2001))  # same callId, 2 windows on: a new claim
    assert len(p._calls) == 1


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b"\xff",
        msgspec.json.encode(doc(timestamp=-1)),
        msgspec.json.encode(doc(timestamp=1.5)),
        msgspec.json.encode(doc(reason="")),
        msgspec.json.encode(doc(user=f"{APPKEY}_bob@easemob.com")),
        msgspec.json.encode(doc(user=f"other#app_bob/{RESOURCE}")),
        msgspec.json.encode(doc(user=f"{APPKEY}_/{RESOURCE}")),
        msgspec.json.encode(doc(user=f"{APPKEY}_{'b' * 300}/{RESOURCE}")),
        msgspec.json.encode(doc(user=7)),
    ],
)
def test_malformed_bodies_are_400(data: bytes) -> None:
    """Non-JSON, wrong types, no reason, and a user not of the form appkey_name/resource: 400."""
    err = rejected(provider(), request(data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def test_ip_allow_list_is_403_before_the_signature() -> None:
    """A caller outside allowed_ips is refused with 403, even with a bad signature."""
    err = rejected(provider(allowed_ips=["192.0.2.0/24"]), request(doc(security="x")))
    assert err.status == 403
    assert provider(allowed_ips=["10.0.0.0/8"]).handle(request()).events


def test_path_segments_are_404() -> None:
    """Easemob takes no path after /webhooks/easemob."""
    req = WebhookRequest(("x",), (), {}, msgspec.json.encode(doc()), "10.0.0.1", NOW)
    assert rejected(provider(), req).status == 404


def test_ok_and_error_ack_bytes() -> None:
    """OK is HTTP 200 with exactly ``{}``; failures are ``{"error": reason}`` with the status."""
    p = provider()
    assert (p.ok().status, p.ok().body, p.ok().content_type) == (200, b"{}", "application/json")
    for status in (400, 401, 403, 413, 503):
        assert (p.error(status, "why").status, p.error(status, "why").body) == (
            status,
            b'{"error":"why"}',
        )


@pytest.mark.parametrize(
    ("appkey", "secret"), [("noorg", "s"), ("#app", "s"), ("org#", "s"), ("o#a", "")]
)
def test_config_validation(appkey: str, secret: str) -> None:
    """appkey must be org#app and the secret non-empty."""
    with pytest.raises(ValueError, match=r"^(appkey|secret):"):
        EasemobConfig(appkey=appkey, secret=secret).validate()


def test_config_file_table() -> None:
    """[apps.easemob] is read from TOML; a bad appkey names its key and the file."""
    head = '[[apps]]\nid = "a"\nclient_secret = "' + "c" * 32 + '"\napi_key = "k"\n'
    settings = parse_config(head + '[apps.easemob]\nappkey = "o#a"\nsecret = "s"\n', "x.toml")
    assert settings.apps["a"].providers()["easemob"] == EasemobConfig(appkey="o#a", secret="s")
    with pytest.raises(ConfigError, match=r"apps\[0\]\.easemob\.appkey"):
        parse_config(head + '[apps.easemob]\nappkey = "oa"\nsecret = "s"\n', "x.toml")


# -- through a real store: devices, kicks, order, duplicates, privacy ------------------------


def login(user: str, resource: str, t: int, reason: str = "login", os: str = "ios") -> bytes:
    call_id = f"{APPKEY}_{user}-{resource}-{reason}-{t}"
    return msgspec.json.encode(
        doc(
            callId=call_id,
            reason=reason,
            os=os,
            user=f"{APPKEY}_{user}@easemob.com/{resource}",
            timestamp=t,
            ip="198.51.100.23:4000",
        )
    )


async def apply_all(store: MemoryStore, bodies: list[bytes]) -> int:
    """Apply each body through the provider; return how many states were published."""
    p = provider()
    published = 0
    for body in bodies:
        parsed = p.handle(request(body))
        result = await store.apply("a", parsed.events, now_ms=NOW)
        published += len(result.published)
    return published


async def test_multi_device_user_and_a_kick() -> None:
    """Two resources are two devices; replaced takes one offline, the other stays online."""
    store = MemoryStore(PresenceSettings())
    await apply_all(
        store,
        [
            login("bob", "ios_d1", NOW - 300),
            login("bob", "android_d2", NOW - 200, os="android"),
        ],
    )
    (bob,) = await store.get("a", ["bob"])
    assert bob.status == "online" and sorted(d.platform for d in bob.devices) == ["android", "ios"]
    await apply_all(store, [login("bob", "ios_d1", NOW - 100, "replaced")])
    (bob,) = await store.get("a", ["bob"])
    assert [d.platform for d in bob.devices] == ["android"]
    records = await store.records("a", "bob")
    assert records["ios_d1"].online is False


async def test_any_order_and_duplicates_end_in_the_same_state() -> None:
    """Every order of a login/logout/relogin sequence, each sent twice, ends alike."""
    bodies = [
        login("bob", "ios_d1", NOW - 300),
        login("bob", "ios_d1", NOW - 200, "logout"),
        login("bob", "web_d3", NOW - 150, os="web"),
        login("bob", "web_d3", NOW - 100, "replaced", os="web"),
    ]
    ends = set()
    for order in itertools.permutations(bodies):
        store = MemoryStore(PresenceSettings())
        await apply_all(store, list(order))
        assert await apply_all(store, list(order)) == 0  # the retries publish nothing
        (bob,) = await store.get("a", ["bob"])
        ends.add(msgspec.json.encode(bob.visible()))
    assert len(ends) == 1
    (end,) = ends
    assert b'"offline"' in end


async def test_published_state_holds_no_device_id_ip_or_call_id() -> None:
    """Watchers see platforms only: no resource, device id, IP, host or callId."""
    store = MemoryStore(PresenceSettings())
    p = provider()
    parsed = p.handle(request(login("bob", "ios_secretdevice", NOW - 1)))
    result = await store.apply("a", parsed.events, now_ms=NOW)
    published = msgspec.json.encode(result.published)
    assert b"bob" in published
    for private in (b"secretdevice", b"198.51.100.23", b"msync", CALL_ID.encode()[:20]):
        assert private not in published


# -- the inverse ---------------------------------------------------------------------------

PLATFORMS = ["ios", "android", "web", "windows", "mac", "linux", "harmonyos", "unknown"]
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=40)
resources = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=60)


@st.composite
def events(draw: st.DrawFn) -> PresenceEvent:
    online = draw(st.booleans())
    reason = "" if online else draw(st.sampled_from(["logout", "kicked"]))
    time = draw(st.integers(NOW - 600_000, NOW + 600_000))
    return PresenceEvent(
        draw(names), draw(resources), draw(st.sampled_from(PLATFORMS)), online, time, reason
    )


@given(events(), st.booleans(), st.integers(0, 600_000))
def test_parse_of_build_is_identity(ev: PresenceEvent, domain: bool, lag: int) -> None:
    """parse(build_request(ev)) == [ev] for any user, resource, platform, state and time."""
    req = build_request(CONFIG, ev, now_ms=ev.time + lag, domain=domain)
    assert provider().handle(req).events == [ev]


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def e2e_settings(request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return settings_with(url, easemob=CONFIG)


async def test_end_to_end_login_kick_and_refusals(e2e_settings: Any) -> None:
    """Through uvicorn: exact acks; login online, kick offline; refusals change nothing."""
    app = app_of(e2e_settings)
    async with serve(e2e_settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        t = now_ms()
        on = PresenceEvent("bob", "ios_dev1", "ios", True, t - 50)
        r = await post(client, app.id, "easemob", build_request(CONFIG, on))
        assert (r.status_code, r.content) == (200, b"{}")
        (bob,) = await states(client, app, "bob")
        assert bob["status"] == "online" and bob["devices"] == [
            {"platform": "ios", "since": t - 50}
        ]
        assert "dev1" not in r.text + str(bob)
        v = bob["v"]

        bad = build_request(CONFIG, PresenceEvent("bob", "ios_dev1", "ios", False, t - 10))
        forged = msgspec.json.decode(bad.body)
        forged["security"] = "0" * 32
        forged_req = dataclasses.replace(bad, body=msgspec.json.encode(forged))
        r = await post(client, app.id, "easemob", forged_req)
        assert r.status_code == 401 and r.json() == {"error": "invalid security"}
        r = await client.post(f"/v1/apps/{app.id}/webhooks/easemob", content=b"{" * 10)
        assert r.status_code == 400 and r.json()["error"].startswith("malformed body")
        big = b"x" * (1024 * 1024 + 1)
        r = await client.post(f"/v1/apps/{app.id}/webhooks/easemob", content=big)
        assert r.status_code == 413 and r.json() == {"error": "body over 1 MiB"}
        assert (await states(client, app, "bob"))[0]["v"] == v

        kick = PresenceEvent("bob", "ios_dev1", "ios", False, t - 10, "kicked")
        r = await post(client, app.id, "easemob", build_request(CONFIG, kick))
        assert (r.status_code, r.content) == (200, b"{}")
        (bob,) = await states(client, app, "bob")
        assert (bob["status"], bob["since"]) == ("offline", t - 10)
