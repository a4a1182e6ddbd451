"""OpenIM: the user online / offline / kick-off callbacks.

OpenIM signs nothing; the only credential is an optional token the operator puts in the
callback URL (``{url}/{token}``). The command comes from the path (v3.5+), ``?command=``
(v3.0-3.4) or the body. The device key is ``connID`` when it is non-empty (up to v3.7: one
per connection, so a login that kicks an older one on the same platform, or two tabs, are two
devices), else the platform id (v3.8.2+ sends an empty ``connID``); the event time is ``seq``
(the sender's clock in ms). The device key never reaches watchers: they see platforms.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.model import PresenceEvent, normalize_platform
from gateway.providers.base import (
    Millis,
    Parsed,
    Provider,
    ProviderConfig,
    Reply,
    WebhookRejected,
    WebhookRequest,
    decode,
    event,
    json_encoder,
    query_value,
    same_secret,
)
from gateway.reconcile.config import OpenIMReconcile

# command name -> (online, reason); both generations (v3.7+ "callbackAfter...").
COMMANDS = {
    "callbackUserOnlineCommand": (True, ""),
    "callbackAfterUserOnlineCommand": (True, ""),
    "callbackUserOfflineCommand": (False, ""),
    "callbackAfterUserOfflineCommand": (False, ""),
    "callbackUserKickOffCommand": (False, "kicked"),
    "callbackAfterUserKickOffCommand": (False, "kicked"),
}

PLATFORM_IDS = {
    1: "ios",
    2: "android",
    3: "windows",
    4: "mac",
    5: "web",
    6: "miniprogram",
    7: "linux",
    8: "apad",
    9: "ipad",
    10: "server",
    11: "harmonyos",
}


# platform id -> the ``platform`` name OpenIM sends with it (build_request)
PLATFORM_NAMES = {1: "IOS", 2: "Android", 3: "Windows", 4: "OSX", 5: "Web", 6: "MiniWeb"}
PLATFORM_NAMES |= {7: "Linux", 8: "APad", 9: "IPad", 10: "Admin", 11: "HarmonyOS"}


class OpenIMConfig(ProviderConfig, kw_only=True):
    """``[apps.openim]``."""

    token: str = ""  # non-empty: must be the first path segment after /webhooks/openim
    reconcile: OpenIMReconcile | None = None  # the pull API (SPEC 8)

    def validate(self) -> None:
        super().validate()
        if "/" in self.token or self.token.strip() != self.token:
            raise ValueError("token: must be one URL path segment (no '/', no spaces)")
        if self.token in COMMANDS:
            raise ValueError("token: must not be an OpenIM command name")


ID_OF = {name: pid for pid, name in PLATFORM_IDS.items()}  # platform -> platform id
_PLAUSIBLE_MS = 10**12  # 2001-09-09: a smaller seq is a counter (old docs), not a clock


def command_of(ev: PresenceEvent, *, after: bool = True) -> str:
    """The callback command of ``ev``: Online, KickOff (reason ``kicked``) or Offline."""
    kind = "Online" if ev.online else ("KickOff" if ev.reason == "kicked" else "Offline")
    return f"callback{'After' if after else ''}User{kind}Command"


def build_request(
    config: OpenIMConfig,
    ev: PresenceEvent,
    *,
    command_in: Literal["path", "query", "body"] = "path",
    after: bool = True,
    operation_id: str = "op-1",
    now_ms: int | None = None,
) -> WebhookRequest:
    """The user callback OpenIM would send for ``ev`` (the inverse of ``parse``).

    ``ev.platform`` is one of ``PLATFORM_IDS``' names; ``ev.device`` its platform id (sent
    as an empty ``connID``, OpenIM >= 3.8.2) or a ``connID``; ``ev.time`` (ms, from 2001 on)
    the ``seq``. The path starts with the config's token, if any; the command goes in the path
    (v3.5+), in ``?command=`` (v3.0-3.4) or only in the body; ``after`` picks the
    ``callbackAfter...`` names (v3.7+) over ``callback...``.
    """
    command = command_of(ev, after=after)
    pid = ID_OF[ev.platform]
    body: dict[str, object] = {
        "callbackCommand": command,
        "operationID": operation_id,
        "platformID": pid,
        "platform": PLATFORM_NAMES[pid],
        "userID": ev.user,
        "seq": ev.time,
        "connID": "" if ev.device == str(pid) else ev.device,
    }
    if ev.online:
        body["isAppBackground"] = False
    path = (config.token,) if config.token else ()
    return WebhookRequest(
        path=(*path, command) if command_in == "path" else path,
        query=(("command", command),) if command_in == "query" else (),
        headers={"content-type": "application/json", "operationid": operation_id},
        body=json_encoder.encode(body),
        client_ip=None,
        now_ms=ev.time if now_ms is None else now_ms,
    )


class _Command(msgspec.Struct):
    command: str = msgspec.field(name="callbackCommand", default="")


class _Body(msgspec.Struct):
    user: str = msgspec.field(name="userID")
    platform_id: int = msgspec.field(name="platformID", default=0)
    platform: str = ""
    seq: Millis = 0
    conn_id: str = msgspec.field(name="connID", default="")


class OpenIMProvider(Provider):
    """OpenIM user status webhooks."""

    name = "openim"
    config_type = OpenIMConfig
    config: OpenIMConfig
    takes_path = True

    def _segments(self, req: WebhookRequest) -> list[str]:
        """The path segments after the token (empty segments dropped)."""
        segments = [s for s in req.path if s]
        if self.config.token:
            return segments[1:]
        if len(segments) == 2:  # a token the config does not ask for: ignored
            return segments[1:]
        return segments

    def verify(self, req: WebhookRequest) -> None:
        token = self.config.token
        if not token:
            return
        segments = [s for s in req.path if s]
        if not segments or not same_secret(segments[0], token):
            raise WebhookRejected(401, "invalid token")

    def parse(self, req: WebhookRequest) -> Parsed:
        segments = self._segments(req)
        if len(segments) > 1:
            raise WebhookRejected(400, "unexpected path")
        candidates = [*segments, query_value(req, "command", fold=True) or ""]
        command = next((c for c in candidates if c in COMMANDS), "")
        if not command:
            command = decode(req.body, _Command).command
        if command not in COMMANDS:
            if command or any(candidates):
                return Parsed(unused=1, command="other")
            raise WebhookRejected(400, "malformed body: missing callbackCommand")
        online, reason = COMMANDS[command]
        body: _Body = decode(req.body, _Body)
        name = normalize_platform(body.platform)
        pid = body.platform_id or ID_OF.get(name, 0)
        platform = PLATFORM_IDS.get(pid, name)
        time = body.seq if body.seq >= _PLAUSIBLE_MS else req.now_ms
        ev = event(body.user, body.conn_id or str(pid), platform, online, time, reason)
        return Parsed(events=[ev], command=command)

    def ok(self) -> Reply:
        return Reply(200, _ack(0, 0, ""))

    def error(self, status: int, reason: str) -> Reply:
        return Reply(status, _ack(1, status, reason))


def _ack(action: int, code: int, message: str) -> bytes:
    return json_encoder.encode(
        {"actionCode": action, "errCode": code, "errMsg": message, "errDlt": "", "nextCode": 0}
    )
