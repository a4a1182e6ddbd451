"""RongCloud's ``/user/checkOnline.json``: the signature headers checked."""

from __future__ import annotations

import hmac
import time
import urllib.parse
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.providers.rongcloud import sign as rongcloud_sign
from gateway.simulate.pullapi.base import FakePullApi


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
