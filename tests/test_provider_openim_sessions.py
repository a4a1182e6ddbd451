"""OpenIM connections as devices: bodies exactly as OpenIM's Go server sends them, applied."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import httpx
import msgspec

from gateway.backends.base import PresenceSettings, PresenceStore
from gateway.config import AppConfig, Settings, dev_settings
from gateway.model import state_encoder
from gateway.providers.base import WebhookRequest
from gateway.providers.openim import OpenIMConfig, OpenIMProvider
from tests.live import serve

NOW = 1763700000000
ONLINE = "callbackAfterUserOnlineCommand"
OFFLINE = "callbackAfterUserOfflineCommand"
GO_NAMES = {1: "IOS", 2: "Android", 3: "Windows", 4: "OSX", 5: "Web", 11: "HarmonyOS"}


def go_json(fields: list[tuple[str, Any]], newline: bool = True) -> bytes:
    """A JSON object as Go's encoding/json writes it: field order kept, <>& escaped."""
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in fields) + "}"
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return (text + ("\n" if newline else "")).encode()


def conn_id(remote: str, ms: int) -> str:
    """OpenIM <= 3.7's connID: md5 hex of RemoteAddr + "_" + the connect time in ms."""
    return hashlib.md5(f"{remote}_{ms}".encode()).hexdigest()


def go_body(
    command: str, user: str, pid: int, seq: int, conn: str, *, newline: bool = True
) -> bytes:
    """CallbackUserOnlineReq / CallbackUserOfflineReq in the struct's field order."""
    fields: list[tuple[str, Any]] = [
        ("callbackCommand", command),
        ("operationID", "op-7f3a"),
        ("platformID", pid),
        ("platform", GO_NAMES.get(pid, "")),
        ("userID", user),
        ("seq", seq),
    ]
    if command == ONLINE:
        fields.append(("isAppBackground", False))
    fields.append(("connID", conn))
    return go_json(fields, newline)


def provider() -> OpenIMProvider:
    return OpenIMProvider(OpenIMConfig(), PresenceSettings())


def parse(command: str, data: bytes, now: int = NOW) -> list[Any]:
    """Events of one callback posted to {url}/{command} with Go's canonical header name."""
    req = WebhookRequest(
        path=(command,),
        query=(),
        headers={"operationid": "op-7f3a", "content-type": "application/json"},
        body=data,
        client_ip="10.0.0.1",
        now_ms=now,
    )
    return provider().handle(req).events


def test_go_body_with_escapes_and_newline_parses() -> None:
    """\\u003c escapes and the trailing newline of a v3.7 body decode to the real user id."""
    data = go_body(ONLINE, "a<b&c>", 5, NOW - 9, "c1")
    assert b"\\u003c" in data and data.endswith(b"}\n")
    (ev,) = parse(ONLINE, data)
    assert (ev.user, ev.device, ev.platform, ev.online, ev.time) == (
        "a<b&c>",
        "c1",
        "web",
        True,
        NOW - 9,
    )


def test_pre_37_body_without_newline_and_unknown_platform() -> None:
    """A body with no trailing newline and platform "" for an unknown id still parses."""
    (ev,) = parse(OFFLINE, go_body(OFFLINE, "bob", 42, NOW - 9, "", newline=False))
    assert (ev.device, ev.platform, ev.online) == ("42", "unknown", False)


async def test_kick_on_same_platform_keeps_the_new_connection_online(
    store: PresenceStore,
) -> None:
    """v3.7 multi-login: new online, then the kicked connection's later offline: still online."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    old, new = conn_id("10.0.0.5:5000", NOW - 60_000), conn_id("10.0.0.6:5001", NOW - 2_000)
    await store.apply(app, parse(ONLINE, go_body(ONLINE, "bob", 5, NOW - 60_000, old)), NOW)
    await store.apply(app, parse(ONLINE, go_body(ONLINE, "bob", 5, NOW - 2_000, new)), NOW)
    result = await store.apply(
        app, parse(OFFLINE, go_body(OFFLINE, "bob", 5, NOW - 1_000, old)), NOW
    )
    [state] = await store.get(app, ["bob"])
    assert state.status == "online" and [d.platform for d in state.devices] == ["web"]
    assert all(s.status == "online" for s in result.published)
    published = state_encoder.encode(state)
    assert old.encode() not in published and new.encode() not in published


async def test_two_tabs_on_one_platform_are_two_devices(store: PresenceStore) -> None:
    """Closing one of two tabs keeps the user online; closing both shows offline."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    tab1, tab2 = conn_id("10.0.0.5:5000", NOW - 9_000), conn_id("10.0.0.5:5002", NOW - 8_000)
    await store.apply(app, parse(ONLINE, go_body(ONLINE, "bob", 5, NOW - 9_000, tab1)), NOW)
    await store.apply(app, parse(ONLINE, go_body(ONLINE, "bob", 5, NOW - 8_000, tab2)), NOW)
    await store.apply(app, parse(OFFLINE, go_body(OFFLINE, "bob", 5, NOW - 7_000, tab1)), NOW)
    [state] = await store.get(app, ["bob"])
    assert state.status == "online"
    result = await store.apply(
        app, parse(OFFLINE, go_body(OFFLINE, "bob", 5, NOW - 6_000, tab2)), NOW
    )
    assert [s.status for s in result.published] == ["offline"]
    for s in (*result.published, *(await store.get(app, ["bob"]))):
        encoded = state_encoder.encode(s)
        assert tab1.encode() not in encoded and tab2.encode() not in encoded


async def test_v382_empty_conn_id_is_keyed_by_platform(store: PresenceStore) -> None:
    """With connID "" (v3.8.2+) the platform is the device: its offline ends the online."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    await store.apply(app, parse(ONLINE, go_body(ONLINE, "bob", 1, NOW - 5_000, "")), NOW)
    await store.apply(app, parse(ONLINE, go_body(ONLINE, "bob", 1, NOW - 4_000, "")), NOW)
    await store.apply(app, parse(OFFLINE, go_body(OFFLINE, "bob", 1, NOW - 3_000, "")), NOW)
    [state] = await store.get(app, ["bob"])
    assert state.status == "offline"
    assert set(await store.records(app, "bob")) == {"1"}


def _settings() -> Settings:
    base = dev_settings().apps["demo"]
    app = msgspec.structs.replace(base, id=f"t{uuid.uuid4().hex[:12]}", openim=OpenIMConfig())
    return Settings(apps={app.id: app})


async def _presence(client: httpx.AsyncClient, app: AppConfig, user: str) -> httpx.Response:
    r = await client.get(
        f"/v1/apps/{app.id}/presence",
        params={"user": user},
        headers={"Authorization": f"Bearer {app.api_key}"},
    )
    assert r.status_code == 200, r.text
    return r


async def test_route_keeps_kicking_login_online_and_hides_conn_ids() -> None:
    """Through HTTP (Go's Operationid header, {url}/{command}): online, and no connID shown."""
    settings = _settings()
    app = next(iter(settings.apps.values()))
    now = time.time_ns() // 1_000_000
    old, new = conn_id("10.0.0.5:5000", now - 9_000), conn_id("10.0.0.6:5001", now - 2_000)
    posts = [
        (ONLINE, go_body(ONLINE, "bob", 5, now - 9_000, old)),
        (ONLINE, go_body(ONLINE, "bob", 5, now - 2_000, new)),
        (OFFLINE, go_body(OFFLINE, "bob", 5, now - 1_000, old)),
    ]
    headers = {"Operationid": "op-7f3a", "Content-Type": "application/json"}
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for command, data in posts:
            r = await client.post(
                f"/v1/apps/{app.id}/webhooks/openim/{command}", content=data, headers=headers
            )
            assert r.content == b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'
        r = await _presence(client, app, "bob")
    [bob] = r.json()["presence"]
    assert bob["status"] == "online" and [d["platform"] for d in bob["devices"]] == ["web"]
    assert old not in r.text and new not in r.text
