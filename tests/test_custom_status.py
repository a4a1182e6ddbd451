"""Custom status (SPEC 4): last writer wins by event time, independent of the devices, on
memory, Redis and Redis Cluster."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from urllib.parse import quote

import httpx
import msgspec
import pytest

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.config import AppConfig
from gateway.model import (
    MAX_CUSTOM_BYTES,
    DeviceView,
    PresenceEvent,
    UserState,
    custom_event,
    custom_too_long,
    merge_custom,
    state_decoder,
)
from gateway.providers.tencent import build_request as build_tencent
from gateway.types import clock_ms
from tests.conftest import BACKENDS, Backend, backend_url
from tests.live import LiveGateway, serve
from tests.sendhook import post
from tests.test_e2e_webhooks import TENCENT, app_of, make_settings, query, tencent
from tests.wsclient import Client

NOW = 1_763_700_000_000
S = 1000


def new_app() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def on(user: str, device: str, time: int) -> PresenceEvent:
    return PresenceEvent(user, device, "ios", True, time)


def off(user: str, device: str, time: int) -> PresenceEvent:
    return PresenceEvent(user, device, "ios", False, time)


def test_merge_custom_is_a_max_by_time_then_text() -> None:
    """The later time wins; on a tie the larger text (a clear, "", is the smallest)."""
    assert merge_custom(None, (5, "a")) == (5, "a")
    assert merge_custom((5, "a"), (4, "z")) == (5, "a")
    assert merge_custom((5, "a"), (6, "")) == (6, "")
    assert merge_custom((5, ""), (5, "a")) == (5, "a")
    assert merge_custom((5, "b"), (5, "a")) == (5, "b")
    assert merge_custom((5, "a"), (5, "é")) == (5, "é")  # code point order = UTF-8 byte order


def test_custom_length_is_counted_in_utf8_bytes() -> None:
    """100 bytes pass, 101 do not, multi-byte characters count by their bytes."""
    assert not custom_too_long("x" * MAX_CUSTOM_BYTES)
    assert custom_too_long("x" * (MAX_CUSTOM_BYTES + 1))
    assert not custom_too_long("会" * 33) and custom_too_long("会" * 34)
    assert custom_too_long("\ud800")


async def test_custom_is_published_once_and_read_back(store: PresenceStore) -> None:
    """Setting a custom publishes it; the same custom again publishes nothing."""
    app = new_app()
    first = await store.apply(app, [custom_event("bob", "In a meeting", NOW)], now_ms=NOW)
    assert first.applied == 1
    assert first.published == [UserState("bob", v=NOW, custom="In a meeting")]
    assert await store.get(app, ["bob"]) == first.published
    again = await store.apply(app, [custom_event("bob", "In a meeting", NOW)], now_ms=NOW + 1)
    assert (again.applied, again.ignored, again.published) == (0, 1, [])
    later = await store.apply(app, [custom_event("bob", "In a meeting", NOW + 5)], now_ms=NOW + 6)
    assert later.applied == 1 and later.published == []  # a newer record, the same text


async def test_unknown_user_has_custom_null(store: PresenceStore) -> None:
    """A user the store never heard of shows custom null."""
    [state] = await store.get(new_app(), ["ghost"])
    assert state.custom is None
    assert b'"custom":null' in msgspec.json.encode(state)


async def test_any_order_same_custom(store: PresenceStore) -> None:
    """Every order of the same custom events (ties included) ends in the same custom."""
    evs = [
        custom_event("bob", "Lunch", NOW - 3 * S),
        custom_event("bob", "In a meeting", NOW - S),
        custom_event("bob", "Away", NOW - S),  # a tie: "In a meeting" > "Away"
        custom_event("bob", None, NOW - S),  # a clear loses the tie too
        custom_event("bob", "Focus", NOW - 2 * S),
    ]
    for order in itertools.islice(itertools.permutations(evs), 0, None, 7):
        app = new_app()
        for ev in order:
            await store.apply(app, [ev], now_ms=NOW)
        [state] = await store.get(app, ["bob"])
        assert state.custom == "In a meeting"
        [batched] = (await store.apply(new_app(), list(order), now_ms=NOW)).published
        assert batched.custom == "In a meeting"


async def test_clearing_shows_null(store: PresenceStore) -> None:
    """An empty string or null clears the custom (shown as null); an older set stays beaten."""
    app = new_app()
    await store.apply(app, [custom_event("bob", "Lunch", NOW - 5 * S)], now_ms=NOW)
    cleared = await store.apply(app, [custom_event("bob", "", NOW - 4 * S)], now_ms=NOW)
    assert [s.custom for s in cleared.published] == [None]
    late = await store.apply(app, [custom_event("bob", "Old", NOW - 6 * S)], now_ms=NOW + 1)
    assert (late.applied, late.published) == (0, [])
    set_again = await store.apply(app, [custom_event("bob", "Back", NOW - 3 * S)], now_ms=NOW + 2)
    assert [s.custom for s in set_again.published] == ["Back"]
    null = await store.apply(app, [custom_event("bob", None, NOW - 2 * S)], now_ms=NOW + 3)
    assert [s.custom for s in null.published] == [None]
    assert (await store.get(app, ["bob"]))[0].custom is None


async def test_devices_and_custom_are_independent(store: PresenceStore) -> None:
    """Online/offline events never touch the custom; a custom never moves status or since."""
    app = new_app()
    await store.apply(app, [on("bob", "d1", NOW - 10 * S)], now_ms=NOW)
    result = await store.apply(app, [custom_event("bob", "In a meeting", NOW - 9 * S)], now_ms=NOW)
    device = DeviceView("ios", NOW - 10 * S)
    assert result.published == [
        UserState("bob", "online", NOW - 10 * S, [device], NOW + 1, "In a meeting")
    ]
    gone = await store.apply(app, [off("bob", "d1", NOW - 5 * S)], now_ms=NOW + 1)
    assert gone.published == [UserState("bob", "offline", NOW - 5 * S, [], NOW + 2, "In a meeting")]
    mixed = await store.apply(
        app, [on("bob", "d2", NOW - 2 * S), custom_event("bob", None, NOW - 3 * S)], now_ms=NOW + 2
    )
    assert mixed.published == [
        UserState("bob", "online", NOW - 2 * S, [DeviceView("ios", NOW - 2 * S)], NOW + 3)
    ]


async def test_custom_events_outside_the_window_are_ignored(store: PresenceStore) -> None:
    """A custom stamped too old or too far ahead changes nothing."""
    app = new_app()
    old = custom_event("bob", "Old", NOW - 601 * S)
    ahead = custom_event("bob", "Ahead", NOW + 61 * S)
    result = await store.apply(app, [old, ahead], now_ms=NOW)
    assert (result.applied, result.ignored, result.published) == (0, 2, [])
    assert await store.get(app, ["bob"]) == [UserState("bob")]


async def test_custom_during_offline_grace_shows_at_once(backend: Backend) -> None:
    """With an offline waiting out the grace, a custom change publishes the still-online state
    with the new custom; the sweep then publishes the offline, custom kept."""
    store = await backend.store(PresenceSettings(offline_grace_ms=2000))
    app = new_app()
    await store.apply(app, [on("bob", "d1", NOW - 10 * S)], now_ms=NOW)
    pending = await store.apply(
        app, [off("bob", "d1", NOW - S), custom_event("bob", "Brb", NOW - S)], now_ms=NOW + 1
    )
    device = DeviceView("ios", NOW - 10 * S)
    assert pending.published == [UserState("bob", "online", NOW - 10 * S, [device], NOW + 1, "Brb")]
    later = await store.apply(app, [custom_event("bob", "Gone", NOW)], now_ms=NOW + 2)
    assert later.published == [UserState("bob", "online", NOW - 10 * S, [device], NOW + 2, "Gone")]
    assert await store.sweep(NOW + 2001) == 1
    [state] = await store.get(app, ["bob"])
    assert state == UserState("bob", "offline", NOW - S, [], NOW + 2001, "Gone")


async def test_custom_keeps_last_seen_when_records_are_old(backend: Backend) -> None:
    """A custom set long after the device records aged past session retention leaves the
    last-seen shown (the tombstones are not pruned away by it)."""
    settings = PresenceSettings(session_retention_s=100, max_event_age_s=50)
    store, app = await backend.store(settings), new_app()
    await store.apply(app, [on("bob", "d1", NOW - 10 * S), off("bob", "d1", NOW - 5 * S)], NOW)
    result = await store.apply(app, [custom_event("bob", "Away", NOW + 200 * S)], NOW + 200 * S)
    assert result.published == [UserState("bob", "offline", NOW - 5 * S, [], NOW + 200 * S, "Away")]
    assert set(await store.records(app, "bob")) == {"d1"}


async def test_custom_expires_with_the_last_seen(backend: Backend) -> None:
    """The custom of an offline user lives as long as its last-seen, then the user is unknown.

    Real (short) retentions, so Redis's own key expiry is what is checked."""
    settings = PresenceSettings(session_retention_s=1, max_event_age_s=1, last_seen_retention_s=2)
    store, app = await backend.store(settings), new_app()
    seen = clock_ms()
    await store.apply(app, [off("bob", "d1", seen), custom_event("bob", "Away", seen)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await store.sweep()  # on memory it also forgets users
        [state] = await store.get(app, ["bob"])
        if state == UserState("bob"):
            break
        assert (state.since, state.custom) == (seen, "Away")
        assert clock_ms() <= seen + 2 * S + 500, "still shown well past last_seen_retention"
    else:
        raise AssertionError("the user never expired")
    assert clock_ms() >= seen + 2 * S, "forgotten before last_seen_retention"


async def test_custom_of_a_user_without_devices_expires(backend: Backend) -> None:
    """A user known only by its custom status is forgotten last_seen_retention after the
    custom was set (the Redis key gets a lifetime, as MemoryStore's user does)."""
    settings = PresenceSettings(session_retention_s=1, max_event_age_s=1, last_seen_retention_s=1)
    store, app = await backend.store(settings), new_app()
    set_at = clock_ms()
    await store.apply(app, [custom_event("bob", "Away", set_at)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await store.sweep()
        [state] = await store.get(app, ["bob"])
        if state == UserState("bob"):
            break
        assert state.custom == "Away"
    else:
        raise AssertionError("the user never expired")
    assert clock_ms() >= set_at + S, "forgotten before last_seen_retention"


async def test_watcher_gets_custom_change(backend: Backend) -> None:
    """A subscriber receives the published custom change, with the custom in its JSON."""
    store, app = await backend.store(), new_app()
    inbox = await backend.listen(store, app, "bob")
    await store.apply(app, [custom_event("bob", "In a meeting", NOW)], now_ms=NOW)
    state = state_decoder.decode(await inbox.next())
    assert (state.custom, state.v) == ("In a meeting", NOW)


async def test_json_bytes_agree_with_msgspec(store: PresenceStore) -> None:
    """The published JSON decodes to what msgspec would encode, escapes included."""
    app = new_app()
    text = 'a"b\\c/d\n\u00e9\U0001f600'
    [state] = (await store.apply(app, [custom_event("bob", text, NOW)], now_ms=NOW)).published
    assert state.custom == text


# Through a real gateway (uvicorn on a loopback port): the API, a Tencent webhook, a watcher.


@pytest.fixture(params=BACKENDS)
async def live(request: pytest.FixtureRequest) -> AsyncIterator[tuple[LiveGateway, AppConfig]]:
    """A gateway on each backend, with one app of its own."""
    url = backend_url(request, request.param)
    settings = make_settings(url, cluster=request.param == "cluster")
    async with serve(settings) as gw:
        yield gw, app_of(settings)


def put_custom(
    http: httpx.AsyncClient, app: AppConfig, user: str, body: object, key: str | None = None
) -> Awaitable[httpx.Response]:
    headers = {"Authorization": f"Bearer {app.api_key if key is None else key}"}
    if key == "":
        headers = {}
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    path = f"/v1/apps/{app.id}/users/{quote(user, safe='')}/custom"
    return http.put(path, content=content, headers=headers)


async def test_put_custom_answers_the_new_state(live: tuple[LiveGateway, AppConfig]) -> None:
    """PUT …/custom → 200 with the user's new state; the query API shows it; null clears."""
    gw, app = live
    async with httpx.AsyncClient(base_url=gw.url) as http:
        before = clock_ms()
        r = await put_custom(http, app, "c{d}/e", {"custom": "In a meeting"})
        assert r.status_code == 200, r.text
        state = r.json()
        assert (state["user"], state["status"], state["custom"]) == (
            "c{d}/e",
            "offline",
            "In a meeting",
        )
        assert state["v"] >= before
        [shown] = await query(http, app, "c{d}/e")
        assert shown == state
        r = await put_custom(http, app, "c{d}/e", {"custom": None})
        assert r.status_code == 200 and r.json()["custom"] is None
        assert r.json()["v"] > state["v"]
        [shown] = await query(http, app, "c{d}/e")
        assert shown["custom"] is None


@pytest.mark.parametrize(
    ("body", "key", "status"),
    [
        ({"custom": "x"}, "", 401),
        ({"custom": "x"}, "wrong-key", 401),
        ({"custom": "x" * 101}, None, 400),
        ({"custom": "é" * 50 + "x"}, None, 400),
        ({"custom": 5}, None, 400),
        ({}, None, 400),
        ({"custom": "x", "more": 1}, None, 400),
        (b"not json", None, 400),
        (b"", None, 400),
        (b'{"custom": "\xff"}', None, 400),
    ],
)
async def test_put_custom_refusals(
    live: tuple[LiveGateway, AppConfig], body: object, key: str | None, status: int
) -> None:
    """No or a wrong key is 401; a custom over 100 bytes or a bad body is 400; nothing changes."""
    gw, app = live
    async with httpx.AsyncClient(base_url=gw.url) as http:
        r = await put_custom(http, app, "bob", body, key)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"error"} and "Traceback" not in r.text
        [shown] = await query(http, app, "bob")
        assert shown["custom"] is None and shown["v"] == 0


async def test_put_custom_unknown_app_and_empty_user(live: tuple[LiveGateway, AppConfig]) -> None:
    """An unknown app is 404; an empty user id is 400."""
    gw, app = live
    async with httpx.AsyncClient(base_url=gw.url) as http:
        auth = {"Authorization": f"Bearer {app.api_key}"}
        r = await http.put(
            "/v1/apps/nope/users/bob/custom", content=b'{"custom":"x"}', headers=auth
        )
        assert r.status_code == 404
        r = await http.put(
            f"/v1/apps/{app.id}/users//custom", content=b'{"custom":"x"}', headers=auth
        )
        assert r.status_code == 400


async def test_tencent_custom_status_change_reaches_a_watcher(
    live: tuple[LiveGateway, AppConfig],
) -> None:
    """A signed Tencent CustomStatusChange is acked OK and a watcher receives the custom; a
    repeat publishes nothing (the next frame is the next change)."""
    gw, app = live
    watcher = await Client.login(gw.ws_url, app.id, app.client_secret)
    try:
        snapshot = await watcher.watch("bob")
        assert snapshot["bob"]["custom"] is None
        async with httpx.AsyncClient(base_url=gw.url) as http:
            t = clock_ms()
            r = await tencent_custom(http, app.id, "bob", "In a meeting", t)
            assert (r.status_code, r.json()["ActionStatus"]) == (200, "OK")
            state = await watcher.next_presence("bob")
            assert (state["status"], state["custom"]) == ("offline", "In a meeting")
            r = await tencent_custom(http, app.id, "bob", "In a meeting", t)
            assert r.status_code == 200
            r = await put_custom(http, app, "bob", {"custom": "Lunch"})
            assert r.status_code == 200
            state = await watcher.next_presence("bob")
            assert state["custom"] == "Lunch"
            r = await tencent(http, app.id, "bob", "Login")
            assert r.status_code == 200
            state = await watcher.next_presence("bob")
            assert (state["status"], state["custom"]) == ("online", "Lunch")
    finally:
        await watcher.close()


async def tencent_custom(
    http: httpx.AsyncClient, app: str, user: str, text: str, event_time: int
) -> httpx.Response:
    """POST one signed Tencent State.StateChange with Action CustomStatusChange."""
    ev = custom_event(user, text, event_time)
    req = build_tencent(TENCENT, ev, opt_platform="iOS", custom_in="top", now_ms=clock_ms())
    return await post(http, app, "tencent", req)
