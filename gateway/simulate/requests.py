"""One signed HTTP request per delivery, in its provider's format (pure).

Every request is built by the provider module's own inverse (``build_request``): this module
holds no second copy of any wire format or signature, only the choices the simulator makes
among a provider's equivalent forms (``Delivery.style``) and the secrets to sign with
(``Target``, dev mode's by default).
"""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import quote

import msgspec

from gateway.config import AppConfig, dev_settings
from gateway.model import PresenceEvent, custom_event
from gateway.providers import easemob, netease, openim, rongcloud, standard, tencent, wukongim
from gateway.providers.base import WebhookRequest
from gateway.simulate import pullapi
from gateway.simulate.delivery import (
    ADMIN_KICK,
    CUSTOM_STATUS,
    CUSTOM_TEXTS,
    DISCONNECT,
    KICKED,
    LOGIN,
    LOGOUT,
    TIMEOUT,
    Change,
    Delivery,
)

_T = TypeVar("_T")


def _dev(table: _T | None) -> _T:
    assert table is not None, "dev mode configures every provider"
    return table


# Target's defaults: the secrets of dev mode's app (config.dev_settings, their one copy).
_DEV = dev_settings().apps["demo"]
_DEV_TC, _DEV_RC, _DEV_STD = _dev(_DEV.tencent), _dev(_DEV.rongcloud), _dev(_DEV.standard)
_DEV_OI, _DEV_EM, _DEV_NE = _dev(_DEV.openim), _dev(_DEV.easemob), _dev(_DEV.netease)
_DEV_WK = _dev(_DEV.wukongim)


@dataclass(frozen=True, slots=True)
class Target:
    """The gateway app to post to and the provider secrets to sign with (dev mode's default)."""

    app: str = _DEV.id
    tencent_sdkappid: int = _DEV_TC.sdkappid
    tencent_token: str = _DEV_TC.callback_token
    rongcloud_app_key: str = _DEV_RC.app_key
    rongcloud_app_secret: str = _DEV_RC.app_secret
    openim_token: str = _DEV_OI.token
    standard_secret: str = _DEV_STD.secret
    easemob_appkey: str = _DEV_EM.appkey
    easemob_secret: str = _DEV_EM.secret
    netease_app_key: str = _DEV_NE.app_key
    netease_app_secret: str = _DEV_NE.app_secret
    wukongim_token: str = _DEV_WK.token
    # --serve-pull-api: the credentials the fake pull APIs check (RongCloud's: the two above)
    tencent_admin: str = pullapi.TENCENT_ADMIN
    tencent_secret_key: str = pullapi.TENCENT_SECRET_KEY
    openim_admin_user: str = pullapi.OPENIM_ADMIN
    openim_secret: str = pullapi.OPENIM_SECRET

    @classmethod
    def for_app(cls, app: AppConfig) -> Target:
        """The target that signs like the providers configured for ``app``."""
        target = cls(app=app.id)
        if app.tencent:
            tc = app.tencent
            target = replace(target, tencent_sdkappid=tc.sdkappid, tencent_token=tc.callback_token)
        if app.rongcloud:
            rc = app.rongcloud
            target = replace(
                target, rongcloud_app_key=rc.app_key, rongcloud_app_secret=rc.app_secret
            )
        if app.openim:
            target = replace(target, openim_token=app.openim.token)
        if app.standard:
            target = replace(target, standard_secret=app.standard.secret)
        if app.easemob:
            em = app.easemob
            target = replace(target, easemob_appkey=em.appkey, easemob_secret=em.secret)
        if app.netease:
            ne = app.netease
            target = replace(target, netease_app_key=ne.app_key, netease_app_secret=ne.app_secret)
        if app.wukongim:
            target = replace(target, wukongim_token=app.wukongim.token)
        # the [apps.<provider>.reconcile] tables, where the config has them
        tc_pull = getattr(app.tencent, "reconcile", None)
        if tc_pull is not None:
            target = replace(
                target, tencent_admin=tc_pull.admin, tencent_secret_key=tc_pull.secret_key
            )
        oi_pull = getattr(app.openim, "reconcile", None)
        if oi_pull is not None:
            target = replace(
                target, openim_admin_user=oi_pull.admin_user, openim_secret=oi_pull.secret
            )
        return target


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A webhook call, ready to send."""

    method: str
    path: str  # already percent-encoded
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes


_nonces = random.SystemRandom()


def _client_ip(user: str) -> str:
    h = zlib.crc32(user.encode())
    return f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255 or 1}"


def _hook(target: Target, provider: str) -> str:
    return f"/v1/apps/{quote(target.app, safe='')}/webhooks/{provider}"


# how -> the reason tencent.build_request sends it with (Action, Reason in tencent.ACTIONS)
_TENCENT_REASON = {
    LOGIN: "register",
    LOGOUT: "unregister",
    KICKED: "unregister",  # older SDKs: a separate Logout
    DISCONNECT: "linkclose",
    TIMEOUT: "timeout",
    ADMIN_KICK: "openkickinstance",
}


def build_tencent(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    first, kicked = d.changes[0], d.changes[1:]
    config = tencent.TencentConfig(
        sdkappid=target.tencent_sdkappid, callback_token=target.tencent_token
    )
    if first.how == CUSTOM_STATUS:
        text = CUSTOM_TEXTS[first.time % len(CUSTOM_TEXTS)]
        ev = msgspec.structs.replace(
            custom_event(first.user, text, first.time), platform=first.platform
        )
    else:
        ev = PresenceEvent(
            first.user,
            first.platform,
            first.platform,
            first.online,
            first.time,
            _TENCENT_REASON[first.how],
        )
    if kicked and first.how == LOGIN:
        assert all(c.how == KICKED and c.time == first.time for c in kicked), d
    mac_os = first.platform == "mac" and d.style % 2 and first.how != ADMIN_KICK
    req = tencent.build_request(
        config,
        ev,
        kicked=[c.platform for c in kicked] if first.how == LOGIN else (),
        opt_platform="macOS" if mac_os else None,
        custom_in="top",
        client_ip=_client_ip(first.user),
        now_ms=now_ms,
    )
    return _http(target, "tencent", req)


def _rc_ip(ev: PresenceEvent) -> str:
    return f"{_client_ip(ev.user)}:{40000 + zlib.crc32(ev.device.encode()) % 20000}"


def build_rongcloud(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    config = rongcloud.RongCloudConfig(
        app_key=target.rongcloud_app_key, app_secret=target.rongcloud_app_secret
    )
    events = [
        PresenceEvent(
            c.user,
            c.device,
            c.platform,
            c.online,
            c.time,
            "" if c.online else ("logout" if c.how == LOGOUT else "offline"),
        )
        for c in d.changes
    ]
    style = ("timestamp", "timestamp", "signTimestamp", "rc")[d.style]
    req = rongcloud.build_request(
        config,
        events,
        now_ms=now_ms,
        style=style,  # type: ignore[arg-type]
        nonce=str(_nonces.randrange(10**9)),
        client_ip=_rc_ip,
    )
    return _http(target, "rongcloud", req)


def build_openim(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    (c,) = d.changes
    ev = PresenceEvent(
        c.user, c.device, c.platform, c.online, c.time, "kicked" if c.how == KICKED else ""
    )
    req = openim.build_request(
        openim.OpenIMConfig(token=target.openim_token),
        ev,
        command_in=("path", "path", "query", "body")[d.style],
        after=d.style in (0, 3),
        operation_id=f"sim-{d.id}",
        now_ms=now_ms,
    )
    return _http(target, "openim", req)


def build_standard(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    events = [
        PresenceEvent(
            c.user,
            c.device,
            c.platform,
            c.online,
            c.time,
            "" if c.online else ("logout" if c.how in (LOGOUT, ADMIN_KICK) else "offline"),
        )
        for c in d.changes
    ]
    req = standard.build_request(
        standard.StandardConfig(secret=target.standard_secret),
        events,
        now_ms=now_ms,
        msg_id=d.msg_id,
    )
    return _http(target, "standard", req)


def _event(c: Change) -> PresenceEvent:
    """``c`` as the event the gateway should parse out of its webhook."""
    return PresenceEvent(c.user, c.device, c.platform, c.online, c.time, _REASON.get(c.how, ""))


_REASON = {KICKED: "kicked"}  # Easemob sends a kicked device as ``replaced``


def _http(target: Target, provider: str, req: WebhookRequest) -> HttpRequest:
    """An adapter's inverse (a ``WebhookRequest``) as the HTTP call that carries it."""
    path = _hook(target, provider) + "".join("/" + quote(s, safe="") for s in req.path)
    return HttpRequest("POST", path, req.query, dict(req.headers), req.body)


def build_easemob(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """One ``userStatus`` callback: login, logout, or ``replaced`` for a kicked device.

    Odd styles leave ``@easemob.com`` out of ``user`` (Agora Chat's form). The callId is
    fixed by the delivery and its style, so a re-send is Easemob's own resend: same body.
    """
    (c,) = d.changes
    config = easemob.EasemobConfig(appkey=target.easemob_appkey, secret=target.easemob_secret)
    call_id = f"{config.appkey}_{uuid.uuid5(uuid.NAMESPACE_URL, f'{d.msg_id}/{d.style}')}"
    req = easemob.build_request(
        config, _event(c), call_id=call_id, now_ms=now_ms, domain=d.style % 2 == 0
    )
    return _http(target, "easemob", req)


def build_netease(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """One login / logout copy, its headers signing the body at ``now_ms``."""
    (c,) = d.changes
    config = netease.NetEaseConfig(
        app_key=target.netease_app_key, app_secret=target.netease_app_secret
    )
    return _http(target, "netease", netease.build_request(config, _event(c), now_ms=now_ms))


def build_wukongim(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """One ``user.onlinestatus`` batch: an array in the order the events happened, no times."""
    config = wukongim.WuKongIMConfig(token=target.wukongim_token)
    events = [_event(c) for c in d.changes]
    return _http(target, "wukongim", wukongim.build_request(config, events, now_ms=now_ms))


BUILDERS: dict[str, Callable[[Delivery, Target, int], HttpRequest]] = {
    "tencent": build_tencent,
    "rongcloud": build_rongcloud,
    "openim": build_openim,
    "standard": build_standard,
    "easemob": build_easemob,
    "netease": build_netease,
    "wukongim": build_wukongim,
}


def build(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """The signed request for ``d``, as its provider would send it at ``now_ms``."""
    return BUILDERS[d.provider](d, target, now_ms)
