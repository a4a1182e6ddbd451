"""WuKongIM: the ``?event=user.onlinestatus`` webhook.

WuKongIM signs nothing; the only credential is an optional token the operator puts in the
webhook URL (``{url}/{token}``). The body is a JSON array of
``"{uid}-{deviceFlag}-{online}-{connId}-{deviceOnlineCount}-{totalOnlineCount}"`` strings
(split from the right: a uid may contain ``-``). The device key is ``{deviceFlag}:{connId}``,
so two connections of one platform are two devices; ``connId`` never reaches a watcher.

**Event times.** The payload has none. WuKongIM sends one batch at a time per node and keeps
the order of its events, so the gateway stamps them: a request gets a base time of
``max(now, last + 1)`` (``last`` being the latest time this provider instance handed out)
and the k-th event of one device key inside it ``base + k``. Device records are
last-writer-wins per key, so events of distinct keys may share a time; only one key's
events need to be strictly ordered. A retry of the very request before (WuKongIM resends the
same batch after a failure or a lost answer) gets the same times again, so it is a
duplicate: applied if the first attempt was not, ignored (nothing published) if it was.

**Limitation across gateway processes.** The counter lives in one process. If one WuKongIM
node's consecutive batches reach different gateway processes (several workers or nodes
behind a load balancer) whose clocks differ by more than the gap between the batches, a
connection's offline can be stamped before its online and lose; that device then stays
online until ``max_silence_s`` or reconciliation. Point a WuKongIM cluster at one gateway
process, or keep clocks tight and set ``max_silence_s`` for this provider.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gateway.backends.base import PresenceSettings
from gateway.model import PresenceEvent
from gateway.providers.base import (
    Parsed,
    Provider,
    ProviderConfig,
    Reply,
    WebhookRejected,
    WebhookRequest,
    check_id,
    decode,
    event,
    json_encoder,
    query_value,
    same_secret,
)

COMMAND = "user.onlinestatus"
_OK = Reply(200, b"{}")  # exactly 200: WuKongIM resends on any other status, 204 included
DEVICE_FLAGS = {0: "mobile", 1: "web", 2: "pc"}
FLAG_OF = {platform: flag for flag, platform in DEVICE_FLAGS.items()}
RETRY_WINDOW_MS = 180_000  # WuKongIM gives up after 5 tries of <= 30 s time-out + 1 s pause
_MAX_FLAG_DIGITS = 4
_MAX_NUMBER_DIGITS = 20


class WuKongIMConfig(ProviderConfig, kw_only=True):
    """``[apps.wukongim]``."""

    token: str = ""  # non-empty: must be the one path segment after /webhooks/wukongim

    def validate(self) -> None:
        super().validate()
        if "/" in self.token or self.token.strip() != self.token:
            raise ValueError("token: must be one URL path segment (no '/', no spaces)")


def entry(
    uid: str, device_flag: int, online: bool, conn_id: int, device_count: int, total_count: int
) -> str:
    """One element of the body, formatted as WuKongIM's ``Online`` / ``Offline`` do."""
    return f"{uid}-{device_flag}-{int(online)}-{conn_id}-{device_count}-{total_count}"


def build_request(
    config: WuKongIMConfig,
    events: Sequence[PresenceEvent],
    *,
    now_ms: int,
    event_name: str = COMMAND,
) -> WebhookRequest:
    """The webhook WuKongIM would send for ``events`` (the inverse of ``parse``, times aside).

    Each ``ev.device`` is ``"{deviceFlag}:{connId}"``; the counts are derived by replaying
    the events (a connection is counted online between its online and its offline).
    """
    online: dict[str, set[str]] = {}
    entries = []
    for ev in events:
        flag, _, conn = ev.device.partition(":")
        conns = online.setdefault(ev.user, set())
        if ev.online:
            conns.add(ev.device)
        else:
            conns.discard(ev.device)
        same_flag = sum(1 for d in conns if d.partition(":")[0] == flag)
        entries.append(entry(ev.user, int(flag), ev.online, int(conn), same_flag, len(conns)))
    return WebhookRequest(
        path=(config.token,) if config.token else (),
        query=(("event", event_name),),
        headers={"content-type": "application/json"},
        body=json_encoder.encode(entries),
        client_ip=None,
        now_ms=now_ms,
    )


def _number(text: str, limit: int) -> bool:
    return 0 < len(text) <= limit and text.isascii() and text.isdigit()


def _split(index: int, item: str) -> tuple[str, int, bool, str]:
    """(uid, deviceFlag, online, connId) of one element; 400 when it does not fit."""
    parts = item.rsplit("-", 5)
    if len(parts) != 6:
        raise WebhookRejected(400, f"malformed body: element {index} has not 6 fields")
    uid, flag, online, conn, device_count, total_count = parts
    if (
        not _number(flag, _MAX_FLAG_DIGITS)
        or online not in ("0", "1")
        or not all(_number(n, _MAX_NUMBER_DIGITS) for n in (conn, device_count, total_count))
    ):
        raise WebhookRejected(400, f"malformed body: element {index} is not uid-flag-0|1-n-n-n")
    return check_id(uid, "user"), int(flag), online == "1", conn


class WuKongIMProvider(Provider):
    """WuKongIM user online status webhooks."""

    name = "wukongim"
    config_type = WuKongIMConfig
    config: WuKongIMConfig
    takes_path = True

    def __init__(self, config: ProviderConfig, settings: PresenceSettings) -> None:
        super().__init__(config, settings)
        self._last = 0  # the latest event time handed out
        self._previous: tuple[bytes, int, int] | None = None  # (body digest, base, received)

    def verify(self, req: WebhookRequest) -> None:
        segments = [s for s in req.path if s]
        token = self.config.token
        if not token:
            if segments:
                raise WebhookRejected(404, "not found")
            return
        if not segments or not same_secret(segments[0], token):
            raise WebhookRejected(401, "invalid token")
        if len(segments) > 1:
            raise WebhookRejected(404, "not found")

    def parse(self, req: WebhookRequest) -> Parsed:
        name = query_value(req, "event")
        if not name:
            raise WebhookRejected(400, "missing ?event=")
        if name != COMMAND:
            return Parsed(unused=1, command="other")  # msg.notify & co share the URL
        items: list[str] = decode(req.body, list[str])
        split = [_split(i, item) for i, item in enumerate(items)]
        base = self._base(req)
        parsed = Parsed(command=COMMAND)
        seen: dict[str, int] = {}
        latest = base
        for uid, flag, online, conn in split:
            device = f"{flag}:{conn}"
            k = seen.get(device, 0)
            seen[device] = k + 1
            time = base + k
            latest = max(latest, time)
            platform = DEVICE_FLAGS.get(flag, "unknown")
            parsed.events.append(event(uid, device, platform, online, time))
        self._last = max(self._last, latest)
        return parsed

    def _base(self, req: WebhookRequest) -> int:
        """The time of this request's first events; a retry of the one before reuses its own."""
        digest = hashlib.blake2b(req.body, digest_size=16).digest()
        previous = self._previous
        if (
            previous is not None
            and previous[0] == digest
            and 0 <= req.now_ms - previous[2] <= RETRY_WINDOW_MS
        ):
            return previous[1]
        base = max(req.now_ms, self._last + 1)
        self._previous = (digest, base, req.now_ms)
        return base

    def ok(self) -> Reply:
        return _OK

    def error(self, status: int, reason: str) -> Reply:
        return Reply(status, json_encoder.encode({"error": reason}))
