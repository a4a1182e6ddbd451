"""Fake pull APIs of Tencent IM, RongCloud and OpenIM, served for real on a loopback port.

Used by the tests (``tests/pullapi.py`` re-exports this module), the bench's ``heal``
scenario and ``presence-gateway simulate --serve-pull-api``, which answers from its model.

Each fake checks the credentials the way PROVIDERS.md describes the real service (Tencent:
the admin UserSig decoded and verified with the key; RongCloud: the signature headers;
OpenIM: the admin token it issued, and the secret on ``/auth/get_admin_token``), refuses
wrong ones with the provider's error answers, and answers from ``users``: a dict user → the
set of platforms (gateway names, e.g. ``{"ios", "web"}``) the user is online on right now;
an empty set is a known offline user, a missing key a user the provider does not know
(Tencent 70107; the others say offline). ``"unknown"`` in the set: online, no platform
named. ``lookup`` (user → that set, or None for unknown), when set, answers instead of
``users``: the simulator's live model. Tests set ``users`` and queue ``faults`` (consumed
one per status request, in order):

- ``"http500"``: HTTP 500; ``"http429"``: HTTP 429; ``"stall"``: no answer until the fake
  closes (or ``stall_s``), so the client times out;
- ``"ratelimit"``: the provider's own rate-limit answer (Tencent 60018, RongCloud 1008 with
  HTTP 429, OpenIM: HTTP 429);
- ``"expired"``: the credential is refused as expired (Tencent 70001; OpenIM errCode 1501,
  and every token issued so far is revoked, so only a new one works).

``requests`` records every request (status and credential requests) with its arrival time
on the monotonic clock; ``credentials`` every credential value seen or issued (for "never in
a log" checks). With ``record=False`` (a long-running simulator) neither grows; ``calls``
counts the requests per path either way. ``serve(*fakes)`` runs them on one uvicorn server;
its URL is the api_base.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.providers.openim import PLATFORM_IDS
from gateway.providers.rongcloud import sign as rongcloud_sign
from gateway.reconcile import usersig

Payload = dict[str, Any]
Lookup = Callable[[str], "set[str] | None"]  # user -> online platforms; None: unknown user

# The fakes' default credentials, also ``presence-gateway simulate``'s (docs/heal-demo.toml).
# The Tencent key is PROVIDERS.md's UserSig test-vector key; OpenIM's are its share.yml defaults.
TENCENT_SECRET_KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
TENCENT_ADMIN = "administrator"
OPENIM_SECRET = "openIM123"
OPENIM_ADMIN = "imAdmin"


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as a fake received it."""

    path: str
    at: float  # time.monotonic() on arrival
    users: tuple[str, ...] = ()  # the users asked about (status requests)
    peer: str = ""  # the client's ip:port: one per connection


@dataclass
class FakePullApi:
    """What every fake shares: state, faults, the request log."""

    users: dict[str, set[str]] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    credentials: set[str] = field(default_factory=set)
    stall_s: float = 30.0
    lookup: Lookup | None = None
    record: bool = True  # False: keep no request log or credentials, only ``calls``
    calls: Counter[str] = field(default_factory=Counter)  # requests per path
    status_path = ""
    _release: asyncio.Event | None = field(default=None, init=False, repr=False)

    def routes(self) -> list[Route]:
        raise NotImplementedError

    @property
    def queries(self) -> list[Seen]:
        """The status requests (credential requests left out)."""
        return [seen for seen in self.requests if seen.path == self.status_path]

    def online(self, user: str, *platforms: str) -> None:
        self.users[user] = set(platforms or ("unknown",))

    def offline(self, user: str) -> None:
        self.users[user] = set()

    def platforms(self, user: str) -> set[str] | None:
        """Where ``user`` is online (empty: offline); None for a user the provider does not know."""
        if self.lookup is not None:
            return self.lookup(user)
        return self.users.get(user)

    def _credential(self, value: str) -> None:
        if self.record:
            self.credentials.add(value)

    def release(self) -> None:
        """End every stalled request (the server calls it before it stops)."""
        if self._release is not None:
            self._release.set()

    def _seen(self, request: Request, path: str, users: Sequence[str] = ()) -> None:
        self.calls[path] += 1
        if not self.record:
            return
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        self.requests.append(Seen(path, time.monotonic(), tuple(users), peer))

    async def _transport_fault(self) -> Response | str | None:
        """The next fault: a Response for the HTTP ones, its name for provider ones."""
        if not self.faults:
            return None
        fault = self.faults.pop(0)
        if fault == "http500":
            return Response("internal error", status_code=500)
        if fault == "http429":
            return Response("slow down", status_code=429)
        if fault == "stall":
            if self._release is None:
                self._release = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.stall_s)
            return Response("stalled", status_code=500)
        return fault


# -- Tencent IM ---------------------------------------------------------------------------

_TENCENT_NAMES = {
    "ios": "iPhone",
    "android": "Android",
    "web": "Web",
    "windows": "Windows",
    "mac": "Mac",
    "ipad": "iPad",
    "linux": "Linux",
}
_TENCENT_BAD_REQUEST = 60002  # the fake's answer to a malformed request (not in PROVIDERS.md)


@dataclass
class FakeTencent(FakePullApi):
    """``/v4/openim/query_online_status`` of one SdkAppid."""

    sdkappid: int = 1400000000
    secret_key: str = TENCENT_SECRET_KEY
    admin: str = TENCENT_ADMIN
    push_online: set[str] = field(default_factory=set)  # users answered as PushOnline
    legacy: bool = False  # answer like the old querystate: "State", upper-case values
    clock: Callable[[], float] = time.time  # the UserSig expiry check's clock
    status_path = "/v4/openim/query_online_status"

    def routes(self) -> list[Route]:
        return [Route(self.status_path, self._query, methods=["POST"])]

    @staticmethod
    def _fail(code: int, info: str) -> Response:
        return JSONResponse({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": info})

    def _refusal(self, q: dict[str, str]) -> Response | None:
        """Tencent's answer to wrong credentials in the query; None when they are right."""
        sig = q.get("usersig", "")
        self._credential(sig)
        if q.get("contenttype") != "json" or not q.get("random", "").isdigit():
            return self._fail(_TENCENT_BAD_REQUEST, "contenttype=json and random required")
        if int(q["random"]) >= 2**32:
            return self._fail(_TENCENT_BAD_REQUEST, "random must be a uint32")
        if q.get("sdkappid") != str(self.sdkappid):
            return self._fail(70014, "SdkAppid mismatch")
        if q.get("identifier") != self.admin:
            return self._fail(70013, "identifier is not the App admin")
        try:
            doc = usersig.decode(sig)
            ident, appid = doc["TLS.identifier"], doc["TLS.sdkappid"]
            at, expire, mac = int(doc["TLS.time"]), int(doc["TLS.expire"]), str(doc["TLS.sig"])
        except (ValueError, KeyError, TypeError):
            return self._fail(70003, "UserSig invalid")
        if ident != q["identifier"]:
            return self._fail(70013, "identifier in UserSig mismatch")
        if appid != self.sdkappid:
            return self._fail(70014, "SdkAppid in UserSig mismatch")
        expected = usersig.signature(self.secret_key, ident, appid, at, expire)
        if not hmac.compare_digest(mac, expected):
            return self._fail(70009, "UserSig verification failed")
        if self.clock() > at + expire:
            return self._fail(70001, "UserSig expired")
        return None

    async def _query(self, request: Request) -> Response:
        query = {k.lower(): v for k, v in request.query_params.items()}
        try:
            body = json.loads(await request.body())
            ids = body["To_Account"]
            assert isinstance(ids, list) and all(isinstance(i, str) for i in ids)
        except (ValueError, KeyError, AssertionError):
            self._seen(request, self.status_path)
            return self._fail(_TENCENT_BAD_REQUEST, "To_Account required")
        self._seen(request, self.status_path, ids)
        fault = await self._transport_fault()
        if isinstance(fault, Response):
            return fault
        refusal = self._refusal(query)
        if refusal is not None:
            return refusal
        if fault == "expired":
            return self._fail(70001, "UserSig expired")
        if fault == "ratelimit":
            return self._fail(60018, "request frequency over limit")
        if len(ids) > 500 or not ids:
            return self._fail(_TENCENT_BAD_REQUEST, "1 to 500 accounts per call")
        results, errors = [], []
        key = "State" if self.legacy else "Status"
        for user in ids:
            online = self.platforms(user)
            if online is None:
                errors.append({"To_Account": user, "ErrorCode": 70107})
                continue
            platforms = sorted(p for p in online if p != "unknown")
            status = "Offline"
            if user in self.push_online:
                status = "PushOnline"
            elif online:
                status = "Online"
            detail = [
                {"Platform": _TENCENT_NAMES.get(p, p), key: self._word(status)} for p in platforms
            ]
            results.append({"To_Account": user, key: self._word(status), "Detail": detail})
        answer: Payload = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}
        answer["QueryResult"] = results
        if errors:
            answer["ErrorList"] = errors
        return JSONResponse(answer)

    def _word(self, status: str) -> str:
        return status.upper() if self.legacy else status


# -- RongCloud ----------------------------------------------------------------------------


@dataclass
class FakeRongCloud(FakePullApi):
    """``/user/checkOnline.json`` of one app key."""

    app_key: str = "fake-app-key"
    app_secret: str = "fake-app-secret"
    window_s: float = 300.0  # the fake refuses Timestamps further from now than this
    status_path = "/user/checkOnline.json"

    def routes(self) -> list[Route]:
        return [Route(self.status_path, self._check, methods=["POST"])]

    @staticmethod
    def _error(status: int, code: int, message: str) -> Response:
        return JSONResponse({"code": code, "errorMessage": message}, status_code=status)

    def _refusal(self, request: Request) -> Response | None:
        h = request.headers
        key, nonce = h.get("app-key", ""), h.get("nonce", "")
        stamp, signature = h.get("timestamp", ""), h.get("signature", "")
        if signature:
            self._credential(signature)
        if not hmac.compare_digest(key, self.app_key):
            return self._error(401, 1004, "App-Key error")
        if not nonce or not stamp.isdigit() or not signature:
            return self._error(401, 1004, "Signature error")
        if abs(time.time() * 1000 - int(stamp)) > self.window_s * 1000:
            return self._error(401, 1004, "Timestamp expired")
        if not hmac.compare_digest(signature, rongcloud_sign(self.app_secret, nonce, stamp)):
            return self._error(401, 1004, "Signature error")
        return None

    async def _check(self, request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        form_type = request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        )
        user = form["userId"][0] if form_type and len(form.get("userId", ())) == 1 else None
        self._seen(request, self.status_path, [user] if isinstance(user, str) else [])
        fault = await self._transport_fault()
        if isinstance(fault, Response):
            return fault
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if fault == "ratelimit":
            return self._error(429, 1008, "Too many requests")
        if not isinstance(user, str) or not user:
            return self._error(400, 1002, "userId is required")
        online = bool(self.platforms(user))
        return JSONResponse({"code": 200, "status": "1" if online else "0"})


# -- OpenIM -------------------------------------------------------------------------------

_OPENIM_IDS = {name: pid for pid, name in PLATFORM_IDS.items()}


@dataclass
class FakeOpenIM(FakePullApi):
    """``/auth/get_admin_token`` and ``/user/get_users_online_status`` of one deployment."""

    secret: str = OPENIM_SECRET
    admin_user: str = OPENIM_ADMIN
    token_ttl_s: int = 7_776_000
    max_users: int = 100  # a larger userIDs list is refused (errCode 1001)
    # users whose node errs: status 0, yet the detail names these platform ids
    ghost_detail: dict[str, list[int]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # issued token -> expiry (monotonic)
    revoked: set[str] = field(default_factory=set)
    status_path = "/user/get_users_online_status"
    token_path = "/auth/get_admin_token"

    def routes(self) -> list[Route]:
        return [
            Route(self.token_path, self._admin_token, methods=["POST"]),
            Route(self.status_path, self._status, methods=["POST"]),
        ]

    @staticmethod
    def _answer(code: int = 0, message: str = "", data: Any = None) -> Response:
        body: Payload = {"errCode": code, "errMsg": message, "errDlt": ""}
        if data is not None:
            body["data"] = data
        return JSONResponse(body)

    @property
    def token_requests(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path == self.token_path]

    def expire_credentials(self) -> None:
        """Every token issued so far is refused from now on (errCode 1501)."""
        self.revoked.update(self.tokens)

    async def _admin_token(self, request: Request) -> Response:
        self._seen(request, self.token_path)
        if not request.headers.get("operationID"):
            return self._answer(1001, "ArgsError: header must have operationID")
        try:
            body = json.loads(await request.body())
            secret, user = body["secret"], body["userID"]
        except (ValueError, KeyError, TypeError):
            return self._answer(1001, "ArgsError")
        self._credential(str(secret))
        if not isinstance(secret, str) or not hmac.compare_digest(secret, self.secret):
            return self._answer(1002, "NoPermissionError: secret invalid")
        if user != self.admin_user:
            return self._answer(1001, "ArgsError: userID is error")
        token = "fake-" + secrets.token_hex(16)
        now = time.monotonic()
        if not self.record:  # keep only the tokens still valid
            for old in [t for t, until in self.tokens.items() if until <= now]:
                del self.tokens[old]
                self.revoked.discard(old)
        self.tokens[token] = now + self.token_ttl_s
        self._credential(token)
        return self._answer(data={"token": token, "expireTimeSeconds": self.token_ttl_s})

    def _token_refusal(self, token: str) -> Response | None:
        if not token:
            return self._answer(1001, "ArgsError: header must have token")
        if token not in self.tokens:
            return self._answer(1502, "TokenInvalidError")
        if token in self.revoked or time.monotonic() >= self.tokens[token]:
            return self._answer(1501, "TokenExpiredError")
        return None

    async def _status(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            ids = body["userIDs"]
            assert isinstance(ids, list) and all(isinstance(i, str) for i in ids)
        except (ValueError, KeyError, AssertionError):
            self._seen(request, self.status_path)
            return self._answer(1001, "ArgsError: userIDs")
        self._seen(request, self.status_path, ids)
        fault = await self._transport_fault()
        if isinstance(fault, Response):
            return fault
        if fault == "ratelimit":
            return Response("too many requests", status_code=429)
        if fault == "expired":
            self.expire_credentials()
        if not request.headers.get("operationID"):
            return self._answer(1001, "ArgsError: header must have operationID")
        refusal = self._token_refusal(request.headers.get("token", ""))
        if refusal is not None:
            return refusal
        if len(ids) > self.max_users:
            return self._answer(1001, f"ArgsError: at most {self.max_users} userIDs")
        data = []
        for user in ids:
            platforms = self.platforms(user) or set()
            detail = [
                {
                    "platformID": _OPENIM_IDS[p],
                    "connID": secrets.token_hex(8),
                    "isBackground": False,
                }
                for p in sorted(platforms)
                if p in _OPENIM_IDS
            ]
            status = 1 if platforms else 0
            if not platforms and user in self.ghost_detail:
                detail = [
                    {"platformID": pid, "connID": "", "isBackground": False}
                    for pid in self.ghost_detail[user]
                ]
            data.append({"userID": user, "status": status, "detailPlatformStatus": detail})
        return self._answer(data=data)


# -- serving ------------------------------------------------------------------------------


class FakeServer:
    """A running uvicorn serving some fakes; ``url`` is every fake's api_base."""

    def __init__(self, port: int, fakes: Sequence[FakePullApi], host: str = "127.0.0.1") -> None:
        self.port = port
        self.url = f"http://{host}:{port}"
        self.fakes = list(fakes)


class _QuietH11(H11Protocol):
    """No access log lines, whatever handlers the test's log capture attached."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False


@contextlib.asynccontextmanager
async def serve(*fakes: FakePullApi, port: int = 0) -> AsyncIterator[FakeServer]:
    """Serve ``fakes`` on 127.0.0.1:``port`` (0: a free one; their paths differ); stop on exit.

    A port already in use raises ``OSError``.
    """
    app = Starlette(routes=[route for fake in fakes for route in fake.routes()])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="off",
        access_log=False,
        http=_QuietH11,  # access lines would hold Tencent's usersig query
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("fake pull API stopped during startup")
                await asyncio.sleep(0.01)
        yield FakeServer(port, fakes)
    finally:
        for fake in fakes:
            fake.release()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()
