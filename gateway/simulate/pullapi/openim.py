"""OpenIM's ``/auth/get_admin_token`` and ``/user/get_users_online_status``: the admin token
it issued checked, and the secret when it issues one."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.providers.openim import PLATFORM_IDS
from gateway.simulate.pullapi import OPENIM_ADMIN, OPENIM_SECRET
from gateway.simulate.pullapi.base import FakePullApi, Payload, Seen

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
