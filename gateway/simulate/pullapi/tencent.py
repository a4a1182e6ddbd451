"""Tencent IM's ``/v4/openim/query_online_status``: the admin UserSig checked with the key."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.reconcile import usersig
from gateway.simulate.pullapi import TENCENT_ADMIN, TENCENT_SECRET_KEY
from gateway.simulate.pullapi.base import FakePullApi, Payload

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
