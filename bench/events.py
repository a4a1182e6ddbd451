"""The event plan and the signed webhook requests that carry it.

Every event has a number ``k`` (0, 1, 2, ...) that fixes everything about it:

- user ``u<k mod users>`` (round robin, so one user's events are ``users`` numbers apart and
  never race each other in flight);
- online when ``(k // users)`` is even, else offline: each user alternates Login/Disconnect
  (Tencent) or status "0"/"1" (RongCloud), so every event changes what watchers see;
- provider event time ``base_ms + k``: unique per user, increasing with ``k``.

Each user has a single device (a fixed platform / session), so the state an event causes has
``since`` equal to its event time, online or offline. A watcher recovers ``k`` from the state it
receives as ``since - base_ms`` and looks up when it was sent in shared memory: no clock
comparisons between processes except CLOCK_MONOTONIC, which Linux shares.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import msgspec

from bench.target import CALLBACK_TOKEN, RC_APP_KEY, RC_APP_SECRET, SDKAPPID
from gateway.providers import rongcloud, tencent

# The requests are byte templates filled per event (Tencent) or a Struct-encoded body per
# batch (RongCloud), twice as fast as the providers' build_request; they reuse the provider
# modules' signing (tencent.sign, rongcloud.signed_query) and wire names.
TENCENT_PLATFORMS = tuple(
    tencent.OPT_PLATFORM[p] for p in ("ios", "android", "web", "windows", "mac")
)
RONGCLOUD_OS = tuple(rongcloud.OS_OF[p] for p in ("ios", "android", "web", "pc", "harmonyos"))
RC_CONFIG = rongcloud.RongCloudConfig(app_key=RC_APP_KEY, app_secret=RC_APP_SECRET)
BATCH = 100  # RongCloud events per request


@dataclass(frozen=True)
class Plan:
    """Maps event numbers to users, actions and times (see the module doc)."""

    base_ms: int
    users: int

    def user(self, k: int) -> int:
        return k % self.users

    def online(self, k: int) -> bool:
        return (k // self.users) % 2 == 0

    def event_time(self, k: int) -> int:
        return self.base_ms + k

    def k_of(self, since: int) -> int:
        return since - self.base_ms


def user_name(u: int) -> str:
    return f"u{u}"


class TencentRequests:
    """Builds one signed ``State.StateChange`` request per event (HTTP/1.1, keep-alive)."""

    def __init__(self, plan: Plan, port: int, path: str) -> None:
        self.plan = plan
        self.prefix = (
            f"POST {path}/tencent?SdkAppid={SDKAPPID}&CallbackCommand={tencent.COMMAND}"
            "&contenttype=json&ClientIP=127.0.0.1&OptPlatform="
        ).encode()
        self.host = f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n".encode()
        self._second = 0
        self._signed = b""

    def _auth(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._signed = f"&RequestTime={now}&Sign={tencent.sign(CALLBACK_TOKEN, now)}".encode()
        return self._signed

    def __call__(self, k: int) -> bytes:
        plan = self.plan
        u = k % plan.users
        if plan.online(k):
            action, reason = b"Login", b"Register"
        else:
            action, reason = b"Disconnect", b"LinkClose"
        body = (
            b'{"CallbackCommand":"State.StateChange","EventTime":%d,'
            b'"Info":{"Action":"%s","To_Account":"u%d","Reason":"%s"}}'
            % (plan.base_ms + k, action, u, reason)
        )
        platform = TENCENT_PLATFORMS[u % len(TENCENT_PLATFORMS)].encode()
        return b"%s%s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            self.prefix,
            platform,
            self._auth(),
            self.host,
            len(body),
            body,
        )


class _RcEvent(msgspec.Struct):
    userid: str
    status: str
    os: str
    time: int
    clientIp: str
    sessionId: str


_encode = msgspec.json.Encoder().encode


class RongCloudRequests:
    """Builds one signed request carrying events ``k0 .. k0 + BATCH - 1``."""

    def __init__(self, plan: Plan, port: int, path: str) -> None:
        if plan.users < BATCH:
            raise ValueError(f"RongCloud batches need at least {BATCH} users")
        self.plan = plan
        self.path = f"{path}/rongcloud".encode()
        self.host = f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n".encode()

    def __call__(self, k0: int) -> bytes:
        plan = self.plan
        events = []
        for k in range(k0, k0 + BATCH):
            u = k % plan.users
            events.append(
                _RcEvent(
                    userid=f"u{u}",
                    status="0" if plan.online(k) else "1",
                    os=RONGCLOUD_OS[u % len(RONGCLOUD_OS)],
                    time=plan.base_ms + k,
                    clientIp="127.0.0.1:50000",
                    sessionId=f"s{u}",
                )
            )
        body = _encode(events)
        signed = rongcloud.signed_query(
            RC_CONFIG, time.time_ns() // 1_000_000, nonce=os.urandom(6).hex()
        )
        query = ("?" + "&".join(f"{name}={value}" for name, value in signed)).encode()
        return b"POST %s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            self.path,
            query,
            self.host,
            len(body),
            body,
        )
