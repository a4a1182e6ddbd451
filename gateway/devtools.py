"""Dev-mode helper for the demo page: a provider webhook signed by the adapter's own inverse.

``POST /v1/apps/{app}/dev-webhook/{provider}`` with ``{"user", "platform", "status"}``
answers the request that provider would send (``{"url", "headers", "body"}``), built by
its module's ``build_request``; the page then posts it to the real webhook route, where it
is verified and applied like any other. Easemob signs with MD5, which ``crypto.subtle``
lacks, and NetEase sends the MD5 of the body: signing here keeps one copy of each wire
format (the provider modules) and of the dev secrets (``config.dev_settings``), and needs no
hashing in the browser.

Dev mode only (404 otherwise): the route signs with the app's secrets, which only dev mode's
well-known ones may be. ``status`` ``offline`` is Tencent's Disconnect, ``logout`` its Logout
(RongCloud: "1" and "2"); ``kicked`` is Easemob's ``replaced`` and OpenIM's KickOff (elsewhere
an offline); ``custom`` (Tencent and Standard only) sets the ``custom`` text ("" clears).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.api import Apps, error, json_response
from gateway.errors import BodyTooLarge, WebhookRejected
from gateway.model import PLATFORMS, PresenceEvent, custom_event
from gateway.providers import easemob, netease, openim, rongcloud, standard, tencent, wukongim
from gateway.providers.base import ProviderConfig, WebhookRequest, event
from gateway.types import UserId, clock_ms
from gateway.webhooks import read_body

MAX_BODY = 4096


class DevWebhook(msgspec.Struct, forbid_unknown_fields=True):
    """What the demo page asks for: one device of ``user`` changing state."""

    user: UserId
    platform: str  # as the gateway shows it: "ios", "web", ...
    status: Literal["online", "offline", "logout", "kicked", "custom"]
    custom: Annotated[str, msgspec.Meta(max_length=100)] = ""  # status "custom": the text


class SignedWebhook(msgspec.Struct):
    """The provider's request, ready to post: ``body`` is sent byte for byte (UTF-8)."""

    url: str  # path and query string
    headers: dict[str, str]
    body: str


# the demo's status (an event's reason) -> the reason tencent.build_request sends it with
_TENCENT_REASONS = {"": "register", "offline": "linkclose", "logout": "unregister"}
_TENCENT_REASONS["kicked"] = "unregister"  # older SDKs: a separate Logout for the kicked device


def _tencent(table: ProviderConfig, ev: PresenceEvent, now: int) -> WebhookRequest:
    assert isinstance(table, tencent.TencentConfig)
    if ev.custom is None:  # the device key is the platform
        reason = _TENCENT_REASONS[ev.reason]
        ev = msgspec.structs.replace(ev, device=ev.platform, reason=reason)
    return tencent.build_request(table, ev, now_ms=now)


def _rongcloud(table: ProviderConfig, ev: PresenceEvent, now: int) -> WebhookRequest:
    assert isinstance(table, rongcloud.RongCloudConfig)
    # one session per user and platform, so that "offline" ends the session "online" began
    ev = msgspec.structs.replace(ev, device=f"demo-{ev.user}-{rongcloud.OS_OF[ev.platform]}")
    return rongcloud.build_request(table, [ev], now_ms=now)


def _openim(table: ProviderConfig, ev: PresenceEvent, now: int) -> WebhookRequest:
    assert isinstance(table, openim.OpenIMConfig)
    pid = openim.ID_OF[ev.platform]
    ev = msgspec.structs.replace(ev, device=str(pid))  # an empty connID (OpenIM >= 3.8.2)
    return openim.build_request(table, ev, operation_id=f"demo-{now}", now_ms=now)


def _standard(table: ProviderConfig, ev: PresenceEvent, now: int) -> WebhookRequest:
    assert isinstance(table, standard.StandardConfig)
    if ev.custom is None:
        ev = msgspec.structs.replace(ev, device=f"demo-{ev.platform}")
    return standard.build_request(table, [ev], now_ms=now)


def _easemob(table: ProviderConfig, ev: PresenceEvent, now: int) -> WebhookRequest:
    assert isinstance(table, easemob.EasemobConfig)
    os_name = easemob.OS_OF.get(ev.platform, ev.platform)
    ev = msgspec.structs.replace(ev, device=f"{os_name}_demo-{ev.platform}")  # the resource
    return easemob.build_request(table, ev, now_ms=now)


def _netease(table: ProviderConfig, ev: PresenceEvent, now: int) -> WebhookRequest:
    assert isinstance(table, netease.NetEaseConfig)
    ev = msgspec.structs.replace(ev, device=f"demo-{ev.platform}")  # deviceId
    return netease.build_request(table, ev, now_ms=now)


def _wukongim(table: ProviderConfig, ev: PresenceEvent, now: int) -> WebhookRequest:
    assert isinstance(table, wukongim.WuKongIMConfig)
    flag = wukongim.FLAG_OF[ev.platform]
    conn = 1000 + zlib.crc32(f"{ev.user}/{flag}".encode()) % 1_000_000  # one per user and flag
    ev = msgspec.structs.replace(ev, device=f"{flag}:{conn}")
    return wukongim.build_request(table, [ev], now_ms=now)


Builder = Callable[[ProviderConfig, PresenceEvent, int], WebhookRequest]
# provider -> (the platforms it can report, its request builder)
BUILDERS: dict[str, tuple[frozenset[str], Builder]] = {
    "tencent": (frozenset(tencent.OPT_PLATFORM) - {"server"}, _tencent),
    "rongcloud": (frozenset(rongcloud.OS_OF), _rongcloud),
    "openim": (frozenset(openim.PLATFORM_IDS.values()) - {"server"}, _openim),
    "standard": (PLATFORMS - {"unknown"}, _standard),
    "easemob": (PLATFORMS - {"unknown"}, _easemob),
    "netease": (frozenset(netease.CLIENT_TYPE_OF), _netease),
    "wukongim": (frozenset(wukongim.FLAG_OF), _wukongim),
}
CUSTOM = frozenset({"tencent", "standard"})  # the providers that carry a custom status
_decoder = msgspec.json.Decoder(DevWebhook)


async def webhook(request: Request, *, apps: Apps, dev_mode: bool) -> Response:
    """POST /v1/apps/{app}/dev-webhook/{provider}: the signed webhook, in dev mode only."""
    app = apps.get(request.path_params["app"])
    name = request.path_params["provider"]
    table = app.providers().get(name) if app is not None and dev_mode else None
    if table is None or name not in BUILDERS:
        return error(404, "not found")
    try:
        asked = _decoder.decode(await read_body(request, MAX_BODY))
    except BodyTooLarge:
        return error(413, f"body over {MAX_BODY} bytes")
    except ClientDisconnect:
        return error(400, "client disconnected")
    except msgspec.DecodeError as exc:  # ValidationError included
        return error(400, f"malformed body: {str(exc)[:120]}")
    platforms, build = BUILDERS[name]
    if asked.platform not in platforms:
        return error(400, f"platform must be one of {', '.join(sorted(platforms))}")
    if asked.status == "custom" and name not in CUSTOM:
        return error(400, f"custom status: only {', '.join(sorted(CUSTOM))}")
    now = clock_ms()
    online = asked.status == "online"
    reason = "" if online else asked.status
    try:
        ev = event(asked.user, "-", asked.platform, online, now, reason)
    except WebhookRejected as exc:
        return error(400, exc.reason)
    if asked.status == "custom":  # the platform only for Tencent's OptPlatform
        ev = msgspec.structs.replace(custom_event(ev.user, asked.custom, now), platform=ev.platform)
    req = build(table, ev, now)
    path = f"/v1/apps/{quote(request.path_params['app'], safe='')}/webhooks/{name}"
    path += "".join("/" + quote(segment, safe="") for segment in req.path)
    url = f"{path}?{urlencode(req.query)}" if req.query else path
    return json_response(SignedWebhook(url, dict(req.headers), req.body.decode()))
