"""WuKongIM ``?event=user.onlinestatus`` webhooks (SPEC 3.7)."""

from __future__ import annotations

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
from gateway.providers.base import Parsed, WebhookRejected, WebhookRequest
from gateway.providers.wukongim import (
    RETRY_WINDOW_MS,
    WuKongIMConfig,
    WuKongIMProvider,
    build_request,
    entry,
)
from tests.live import serve
from tests.sendhook import app_of, now_ms, post, settings_with, states

NOW = 1763700000000
TOKEN = "wk-s3cret"
QUERY = (("event", "user.onlinestatus"),)


def request(
    data: Any,
    path: tuple[str, ...] = (),
    query: tuple[tuple[str, str], ...] = QUERY,
    now: int = NOW,
    ip: str = "10.0.0.1",
) -> WebhookRequest:
    body = data if isinstance(data, bytes) else msgspec.json.encode(data)
    return WebhookRequest(path, query, {"content-type": "application/json"}, body, ip, now)


def provider(token: str = "", **kw: Any) -> WuKongIMProvider:
    return WuKongIMProvider(WuKongIMConfig(token=token, **kw), PresenceSettings())


def rejected(p: WuKongIMProvider, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        p.handle(req)
    return info.value


def test_documented_example_batch() -> None:
    """The code's 6-field example: one event per string, device flag:connId, platform by flag."""
    parsed = provider().handle(request(["uid1-1-0-1001-2-4", "uid2-0-1-1001-1-2"]))
    assert parsed.events == [
        PresenceEvent("uid1", "1:1001", "web", False, NOW, ""),
        PresenceEvent("uid2", "0:1001", "mobile", True, NOW, ""),
    ]
    assert (parsed.unused, parsed.command) == (0, "user.onlinestatus")


def test_uid_with_dashes_is_split_from_the_right() -> None:
    """A uid that itself contains '-' (or looks like the fields) is kept whole."""
    (ev,) = provider().handle(request(["a-b-1-1-1-7-1-1"])).events
    assert (ev.user, ev.device, ev.online) == ("a-b-1", "1:7", True)


@pytest.mark.parametrize(
    ("flag", "platform"), [(0, "mobile"), (1, "web"), (2, "pc"), (99, "unknown")]
)
def test_device_flags(flag: int, platform: str) -> None:
    """deviceFlag 0 is mobile, 1 web, 2 pc, anything else unknown."""
    (ev,) = provider().handle(request([entry("bob", flag, True, 5, 1, 1)])).events
    assert (ev.platform, ev.device) == (platform, f"{flag}:5")


def test_two_connections_of_one_platform_are_two_devices() -> None:
    """Two web tabs (two connIds) are two devices; one closing leaves the other online."""
    parsed = provider().handle(
        request([entry("bob", 1, True, 1, 1, 1), entry("bob", 1, True, 2, 2, 2)])
    )
    assert [e.device for e in parsed.events] == ["1:1", "1:2"]


def test_times_follow_array_order_per_device_and_grow_across_requests() -> None:
    """One device's events in a batch get increasing times; a later batch is later still."""
    p = provider()
    first = p.handle(
        request(
            [
                entry("bob", 1, True, 1, 1, 1),
                entry("bob", 1, False, 1, 0, 0),
                entry("eve", 0, True, 9, 1, 1),
                entry("bob", 1, True, 1, 1, 1),
            ]
        )
    ).events
    assert [e.time for e in first] == [NOW, NOW + 1, NOW, NOW + 2]
    second = p.handle(request([entry("bob", 1, False, 1, 0, 0)], now=NOW)).events
    assert second[0].time == NOW + 3  # after every earlier time, even with the clock unmoved
    third = p.handle(request([entry("bob", 1, True, 2, 1, 1)], now=NOW + 50)).events
    assert third[0].time == NOW + 50  # the clock again once it is ahead


def test_an_immediate_retry_gets_the_same_times() -> None:
    """WuKongIM resending the batch it just sent gets the times of the first attempt."""
    p = provider()
    batch = [entry("bob", 1, True, 1, 1, 1), entry("bob", 1, False, 1, 0, 0)]
    first = p.handle(request(batch)).events
    assert p.handle(request(batch, now=NOW + 1_000)).events == first
    later = p.handle(request(batch, now=NOW + RETRY_WINDOW_MS + 1)).events
    assert later[0].time == NOW + RETRY_WINDOW_MS + 1  # past the retry window: new events


def test_a_repeat_after_another_batch_is_not_a_retry() -> None:
    """Only the request right before counts as the one being retried."""
    p = provider()
    batch = [entry("bob", 1, True, 1, 1, 1)]
    p.handle(request(batch))
    p.handle(request([entry("bob", 1, False, 1, 0, 0)]))
    assert p.handle(request(batch)).events[0].time == NOW + 2


def test_other_events_are_acked_and_unused_without_reading_the_body() -> None:
    """msg.notify and other events on the same URL are acked, counted, not parsed."""
    for name in ("msg.notify", "msg.offline", "user.onlinestatus2"):
        req = request(b'[{"message_id": 1}]', query=(("event", name),))
        assert provider().handle(req) == Parsed(events=[], unused=1, command="other")


def test_missing_event_is_400() -> None:
    """A request without ?event= is malformed."""
    err = rejected(provider(), request(["bob-1-1-1-1-1"], query=()))
    assert (err.status, err.reason) == (400, "missing ?event=")


def test_empty_batch_is_acked() -> None:
    """An empty array carries nothing and is fine."""
    assert provider().handle(request([])).events == []


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"{}",
        b"\xff",
        b'["bob-1-1-1-1-1", 5]',
        ["bob-1-1-1-1"],
        ["-1-1-1-1-1"],
        ["bob-x-1-1-1-1"],
        ["bob-1-2-1-1-1"],
        ["bob-1-1--1-1"],
        ["bob-1-1-1-1-"],
        ["bob-1-1-1-1-1 "],
        ["bob-99999-1-1-1-1"],
        ["bob-1-1-" + "9" * 21 + "-1-1"],
        ["b" * 300 + "-1-1-1-1-1"],
        ["bob-1-1-1-1-1", "bad"],
    ],
)
def test_malformed_bodies_are_400(data: Any) -> None:
    """Not an array of uid-flag-0|1-conn-n-n strings (any element): 400, nothing applied."""
    p = provider()
    err = rejected(p, request(data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")
    # the refused body leaves the clock alone: the next batch starts at now
    assert p.handle(request(["bob-1-1-1-1-1"])).events[0].time == NOW


def test_token_is_required_when_configured() -> None:
    """With a token, /{token} is accepted; none, a wrong one, or more path is refused."""
    p = provider(TOKEN)
    assert p.handle(request(["bob-1-1-1-1-1"], path=(TOKEN,))).events
    assert p.handle(request(["bob-1-1-1-1-1"], path=("", TOKEN, ""))).events
    for path, status in [((), 401), (("wrong",), 401), ((TOKEN + "x",), 401), ((TOKEN, "x"), 404)]:
        err = rejected(p, request(["bob-1-1-1-1-1"], path=path))
        assert err.status == status
        assert TOKEN not in err.reason


def test_without_a_token_no_path_is_allowed() -> None:
    """With no token configured, any segment after /webhooks/wukongim is 404."""
    assert rejected(provider(), request(["bob-1-1-1-1-1"], path=("x",))).status == 404


def test_ip_allow_list_is_403_before_the_token() -> None:
    """A caller outside allowed_ips is refused with 403, even without the token."""
    p = provider(TOKEN, allowed_ips=["192.0.2.0/24"])
    assert rejected(p, request(["bob-1-1-1-1-1"])).status == 403
    assert provider(allowed_ips=["10.0.0.0/8"]).handle(request(["b-1-1-1-1-1"])).events


def test_ok_is_200_never_204() -> None:
    """OK is HTTP 200 with exactly ``{}`` (WuKongIM resends on anything else)."""
    reply = provider().ok()
    assert (reply.status, reply.body, reply.content_type) == (200, b"{}", "application/json")
    assert provider().error(400, "why").body == b'{"error":"why"}'


@pytest.mark.parametrize("token", ["a/b", " a", "a "])
def test_config_token_must_be_one_segment(token: str) -> None:
    """A token with '/' or surrounding spaces cannot be a path segment."""
    with pytest.raises(ValueError, match=r"^token:"):
        WuKongIMConfig(token=token).validate()


def test_config_file_table() -> None:
    """[apps.wukongim] is read from TOML; a bad token names its key."""
    head = '[[apps]]\nid = "a"\nclient_secret = "' + "c" * 32 + '"\napi_key = "k"\n'
    settings = parse_config(head + "[apps.wukongim]\n", "x.toml")
    assert settings.apps["a"].providers()["wukongim"] == WuKongIMConfig()
    with pytest.raises(ConfigError, match=r"apps\[0\]\.wukongim\.token"):
        parse_config(head + '[apps.wukongim]\ntoken = "a/b"\n', "x.toml")


# -- through a real store ------------------------------------------------------------------


async def test_a_retried_batch_changes_and_publishes_nothing() -> None:
    """Applied once, then resent (a lost 200): the resend is ignored; a fresh process too."""
    store = MemoryStore(PresenceSettings())
    p = provider()
    batch = [entry("bob", 1, True, 1, 1, 1), entry("bob", 0, True, 2, 1, 2)]
    first = await store.apply("a", p.handle(request(batch)).events, now_ms=NOW)
    assert len(first.published) == 1
    again = await store.apply("a", p.handle(request(batch, now=NOW + 1500)).events, now_ms=NOW)
    assert (again.applied, again.published) == (0, [])


async def test_batch_after_a_503_applies_on_the_retry() -> None:
    """A batch not applied (the store was down) applies when WuKongIM resends it."""
    store = MemoryStore(PresenceSettings())
    p = provider()
    batch = [entry("bob", 1, True, 1, 1, 1), entry("bob", 1, False, 1, 0, 0)]
    p.handle(request(batch))  # parsed, then the store failed: nothing applied
    retry = await store.apply("a", p.handle(request(batch, now=NOW + 1000)).events, now_ms=NOW)
    assert retry.applied == 2
    (bob,) = await store.get("a", ["bob"])
    assert (bob.status, bob.since) == ("offline", NOW + 1)


async def test_online_then_offline_in_one_batch_ends_offline() -> None:
    """Array order decides: a connection opened and closed in one batch ends offline."""
    store = MemoryStore(PresenceSettings())
    p = provider()
    events = p.handle(
        request([entry("bob", 2, True, 8, 1, 1), entry("bob", 2, False, 8, 0, 0)])
    ).events
    await store.apply("a", events, now_ms=NOW)
    (bob,) = await store.get("a", ["bob"])
    assert bob.status == "offline"


async def test_multi_device_user_and_privacy() -> None:
    """Phone and PC online, PC closes: online on mobile; no connId or uid suffix shown."""
    store = MemoryStore(PresenceSettings())
    p = provider()
    published: list[Any] = []
    for batch in (
        [entry("bob", 0, True, 424242, 1, 1), entry("bob", 2, True, 515151, 1, 2)],
        [entry("bob", 2, False, 515151, 0, 1)],
    ):
        result = await store.apply("a", p.handle(request(batch)).events, now_ms=NOW)
        published += result.published
    (bob,) = await store.get("a", ["bob"])
    assert (bob.status, [d.platform for d in bob.devices]) == ("online", ["mobile"])
    wire = msgspec.json.encode(published)
    assert b"424242" not in wire and b"515151" not in wire and b"0:" not in wire


# -- the inverse ---------------------------------------------------------------------------


_FLAGS = {0: "mobile", 1: "web", 2: "pc", 7: "unknown"}
_items = st.tuples(
    st.text(min_size=1, max_size=40),
    st.sampled_from(sorted(_FLAGS)),
    st.integers(0, 2**63 - 1),
    st.booleans(),
)
batches = st.lists(_items, max_size=12).map(
    lambda items: [
        PresenceEvent(user, f"{flag}:{conn}", _FLAGS[flag], online, 0)
        for user, flag, conn, online in items
    ]
)


@given(batches, st.integers(NOW, NOW + 10**6))
def test_parse_of_build_is_identity_times_aside(events: list[PresenceEvent], now: int) -> None:
    """parse(build_request(x)) == x but for times; those grow per device in array order."""
    req = build_request(WuKongIMConfig(token=TOKEN), events, now_ms=now)
    parsed = provider(TOKEN).handle(req).events
    assert [msgspec.structs.replace(e, time=0) for e in parsed] == events
    last: dict[tuple[str, str], int] = {}
    for ev in parsed:
        assert ev.time > last.get((ev.user, ev.device), now - 1)
        last[(ev.user, ev.device)] = ev.time


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def e2e_settings(request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return settings_with(url, wukongim=WuKongIMConfig(token=TOKEN))


async def test_end_to_end_batch_acks_and_refusals(e2e_settings: Any) -> None:
    """Through uvicorn: 200 {} (never 204) for batches and unused events; refusals change none."""
    app = app_of(e2e_settings)
    cfg = WuKongIMConfig(token=TOKEN)
    async with serve(e2e_settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        online = [
            PresenceEvent("bob", "1:77", "web", True, 0),
            PresenceEvent("bob", "0:78", "mobile", True, 0),
        ]
        r = await post(client, app.id, "wukongim", build_request(cfg, online, now_ms=now_ms()))
        assert (r.status_code, r.content) == (200, b"{}")
        (bob,) = await states(client, app, "bob")
        assert sorted(d["platform"] for d in bob["devices"]) == ["mobile", "web"]
        v = bob["v"]

        off = build_request(cfg, [PresenceEvent("bob", "1:77", "web", False, 0)], now_ms=0)
        r = await post(
            client, app.id, "wukongim", WebhookRequest((), off.query, {}, off.body, None, 0)
        )
        assert r.status_code == 401 and r.json() == {"error": "invalid token"}
        assert TOKEN not in r.text
        r = await post(
            client, app.id, "wukongim", WebhookRequest(off.path, off.query, {}, b"[1]", None, 0)
        )
        assert r.status_code == 400 and r.json()["error"].startswith("malformed body")
        big = b"x" * (1024 * 1024 + 1)
        r = await client.post(f"/v1/apps/{app.id}/webhooks/wukongim/{TOKEN}", content=big)
        assert r.status_code == 413 and r.json() == {"error": "body over 1 MiB"}
        notify = WebhookRequest(off.path, (("event", "msg.notify"),), {}, b"[{}]", None, 0)
        r = await post(client, app.id, "wukongim", notify)
        assert (r.status_code, r.content) == (200, b"{}")
        assert (await states(client, app, "bob"))[0]["v"] == v

        r = await post(client, app.id, "wukongim", off)
        assert (r.status_code, r.content) == (200, b"{}")
        (bob,) = await states(client, app, "bob")
        assert [d["platform"] for d in bob["devices"]] == ["mobile"]
        text = (await client.get("/metrics")).text
        assert 'presence_events_unused_total{provider="wukongim"} 1.0' in text
