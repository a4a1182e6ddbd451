"""The demo's dev-only helper: provider webhooks signed by the adapters' own inverse."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import Settings, dev_settings
from tests.live import serve

APP = dev_settings().apps["demo"]
HELPER = "/v1/apps/demo/dev-webhook"


async def presence(client: httpx.AsyncClient, user: str) -> dict[str, Any]:
    r = await client.get(
        "/v1/apps/demo/presence",
        params={"user": user},
        headers={"Authorization": f"Bearer {APP.api_key}"},
    )
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()["presence"][0]
    return state


async def send(
    client: httpx.AsyncClient, provider: str, user: str, platform: str, status: str
) -> httpx.Response:
    """Ask the helper for the signed webhook, then post it exactly as the page does."""
    r = await client.post(
        f"{HELPER}/{provider}", json={"user": user, "platform": platform, "status": status}
    )
    assert r.status_code == 200, r.text
    signed = r.json()
    assert signed["url"].startswith(f"/v1/apps/demo/webhooks/{provider}")
    return await client.post(
        signed["url"], headers=signed["headers"], content=signed["body"].encode()
    )


@pytest.mark.parametrize(
    ("provider", "platform", "off"),
    [
        ("easemob", "windows", "offline"),
        ("easemob", "ios", "kicked"),
        ("netease", "android", "offline"),
        ("wukongim", "mobile", "offline"),
    ],
)
async def test_signed_webhooks_are_accepted_and_change_presence(
    provider: str, platform: str, off: str
) -> None:
    """Each helper-built webhook gets the provider's 200 {} and turns the user on, then off."""
    async with serve(dev_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        on = await send(client, provider, "bob", platform, "online")
        assert (on.status_code, on.text) == (200, "{}")
        state = await presence(client, "bob")
        assert state["status"] == "online"
        assert [d["platform"] for d in state["devices"]] == [platform]
        gone = await send(client, provider, "bob", platform, off)
        assert (gone.status_code, gone.text) == (200, "{}")
        assert (await presence(client, "bob"))["status"] == "offline"


async def test_easemob_kicked_is_sent_as_replaced() -> None:
    """A kicked device is Easemob's `replaced` callback, signed with MD5 (security)."""
    async with serve(dev_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post(
            f"{HELPER}/easemob", json={"user": "bob", "platform": "ios", "status": "kicked"}
        )
    body = msgspec.json.decode(r.json()["body"])
    assert body["reason"] == "replaced" and len(body["security"]) == 32


async def test_only_in_dev_mode() -> None:
    """Outside dev mode the helper is 404, even for an app configured like the demo."""
    settings = Settings(apps={"demo": APP})  # dev_mode False: a config file's settings
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post(
            f"{HELPER}/netease", json={"user": "bob", "platform": "ios", "status": "online"}
        )
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("provider", "platform", "off", "ack"),
    [
        ("tencent", "mac", "offline", 200),
        ("tencent", "ios", "logout", 200),
        ("rongcloud", "web", "logout", 200),
        ("rongcloud", "harmonyos", "offline", 200),
        ("openim", "android", "offline", 200),
        ("openim", "ipad", "kicked", 200),
        ("standard", "linux", "offline", 204),
    ],
)
async def test_tencent_rongcloud_openim_standard_are_built_too(
    provider: str, platform: str, off: str, ack: int
) -> None:
    """The providers the page once signed itself come from the helper: accepted, on, then off."""
    async with serve(dev_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        on = await send(client, provider, "bob", platform, "online")
        assert on.status_code == ack, on.text
        state = await presence(client, "bob")
        assert state["status"] == "online"
        assert [d["platform"] for d in state["devices"]] == [platform]
        gone = await send(client, provider, "bob", platform, off)
        assert gone.status_code == ack, gone.text
        assert (await presence(client, "bob"))["status"] == "offline"


@pytest.mark.parametrize("provider", ["tencent", "standard"])
async def test_custom_status_through_the_helper(provider: str) -> None:
    """Status custom sets the user's custom text (Tencent CustomStatusChange); "" clears it."""
    async with serve(dev_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for text in ("In a meeting", ""):
            r = await client.post(
                f"{HELPER}/{provider}",
                json={"user": "bob", "platform": "web", "status": "custom", "custom": text},
            )
            assert r.status_code == 200, r.text
            signed = r.json()
            r = await client.post(
                signed["url"], headers=signed["headers"], content=signed["body"].encode()
            )
            assert r.status_code < 300, r.text
            assert (await presence(client, "bob"))["custom"] == (text or None)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (
            "/v1/apps/nope/dev-webhook/easemob",
            {"user": "b", "platform": "ios", "status": "online"},
            404,
        ),
        (f"{HELPER}/zego", {"user": "b", "platform": "ios", "status": "online"}, 404),
        (f"{HELPER}/openim", {"user": "b", "platform": "server", "status": "online"}, 400),
        (f"{HELPER}/netease", {"user": "b", "platform": "ios", "status": "custom"}, 400),
        (
            f"{HELPER}/tencent",
            {"user": "b", "platform": "ios", "status": "custom", "custom": "x" * 101},
            400,
        ),
        (f"{HELPER}/wukongim", {"user": "b", "platform": "ios", "status": "online"}, 400),
        (f"{HELPER}/netease", {"user": "b", "platform": "ios", "status": "away"}, 400),
        (f"{HELPER}/netease", {"user": "", "platform": "ios", "status": "online"}, 400),
        (f"{HELPER}/netease", {"user": "b", "platform": "ios", "status": "online", "x": 1}, 400),
        (f"{HELPER}/easemob", {"user": "b" * 5000, "platform": "ios", "status": "online"}, 413),
    ],
)
async def test_bad_requests_get_a_short_4xx(path: str, body: dict[str, Any], status: int) -> None:
    """Unknown app or provider: 404; a bad field: 400; an oversized body: 413; never a 500."""
    async with serve(dev_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post(path, json=body)
    assert r.status_code == status and r.json()["error"]
