"""Send a ``WebhookRequest`` (as a provider's ``build_request`` makes it) over real HTTP."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from gateway.config import AppConfig, RedisConfig, Settings, dev_settings
from gateway.model import PresenceEvent, normalize_platform
from gateway.providers import tencent
from gateway.providers.base import WebhookRequest

TENCENT_REASONS = {"Login": "register", "Logout": "unregister", "Disconnect": "linkclose"}
"""The Tencent ``Info.Action`` tests send -> its reason (``Info.Reason`` lower-cased)."""


def settings_with(redis_url: str | None = None, **providers: Any) -> Settings:
    """Dev-mode-like settings for one app with a unique id and the given provider tables."""
    base = dev_settings().apps["demo"]
    app = msgspec.structs.replace(base, id=f"t{uuid.uuid4().hex[:12]}", **providers)
    redis = RedisConfig(url=redis_url) if redis_url else None
    return Settings(apps={app.id: app}, redis=redis)


def app_of(settings: Settings) -> AppConfig:
    return next(iter(settings.apps.values()))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tencent_call(
    config: tencent.TencentConfig,
    user: str,
    action: str,
    platform: str = "iOS",
    event_ms: int | None = None,
) -> WebhookRequest:
    """A ``State.StateChange`` of ``action`` (Login, Logout, Disconnect) with ``OptPlatform``
    ``platform`` as written, at ``event_ms`` (default now); signed now if the config says so."""
    ours = normalize_platform(platform)
    at = now_ms() if event_ms is None else event_ms
    ev = PresenceEvent(user, ours, ours, action == "Login", at, TENCENT_REASONS[action])
    return tencent.build_request(config, ev, opt_platform=platform, now_ms=now_ms())


async def post(
    client: httpx.AsyncClient, app: str, provider: str, req: WebhookRequest
) -> httpx.Response:
    """POST ``req`` to ``/v1/apps/{app}/webhooks/{provider}[/{path}]``."""
    url = f"/v1/apps/{app}/webhooks/{provider}"
    url += "".join("/" + quote(segment, safe="") for segment in req.path)
    return await client.post(url, params=req.query, headers=dict(req.headers), content=req.body)


async def states(client: httpx.AsyncClient, app: AppConfig, *users: str) -> list[dict[str, Any]]:
    """The query API's states of ``users``."""
    r = await client.get(
        f"/v1/apps/{app.id}/presence",
        params=[("user", u) for u in users],
        headers={"Authorization": f"Bearer {app.api_key}"},
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["presence"]
    return found
