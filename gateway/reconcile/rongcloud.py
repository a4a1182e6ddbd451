"""RongCloud: ``POST {api_base}/user/checkOnline.json``, form ``userId=…``, one user a call.

Signed like every RongCloud server API call: headers ``App-Key``, ``Nonce``, ``Timestamp``
(ms) and ``Signature`` = sha1 hex of app secret + nonce + timestamp (the webhook formula,
``gateway.providers.rongcloud.sign``). The answer ``{"code":200,"status":"1"}`` names no
platform. Code 1008 (or HTTP 429) is the rate limit.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import httpx

from gateway.providers.rongcloud import sign
from gateway.reconcile.base import Answer, Checked, ProviderError, RateLimited, check_in_batches
from gateway.reconcile.config import RongCloudReconcile
from gateway.reconcile.http import HttpSettings, PullHttp

PATH = "/user/checkOnline.json"
RATE_LIMITED = 1008
REFUSED = frozenset({1001, 1002, 1004})  # app key or secret wrong, bad request, signature
_STATUS = {"1": True, "0": False}


def parse_answer(body: Any) -> Answer:
    """The answer in a ``checkOnline`` response body (raises ``PullError`` for a failure)."""
    if not isinstance(body, dict):
        raise ProviderError(f"rongcloud: POST {PATH}: not a JSON object")
    code = body.get("code")
    if code == RATE_LIMITED:
        raise RateLimited(f"rongcloud: POST {PATH}: code {code} (rate limited)")
    if code != 200:
        shown = code if isinstance(code, int) and not isinstance(code, bool) else "?"
        raise ProviderError(f"rongcloud: POST {PATH}: code {shown}", retryable=code not in REFUSED)
    online = _STATUS.get(str(body.get("status", "")).strip())
    if online is None:
        raise ProviderError(f"rongcloud: POST {PATH}: no status in the answer")
    return Answer(online)


class RongCloudClient:
    """The ``checkOnline`` client of one app."""

    provider = "rongcloud"
    batch_size = 1

    def __init__(
        self,
        config: RongCloudReconcile,
        app_key: str,
        app_secret: str,
        settings: HttpSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._app_key = app_key
        self._secret = app_secret
        self.http = PullHttp(
            "rongcloud", config.base_url, config.rate, settings, transport=transport
        )

    def __repr__(self) -> str:
        return "RongCloudClient()"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def check(self, users: Sequence[str]) -> Checked:
        return await check_in_batches(users, 1, self._batch, self.http.settings.concurrency)

    async def _batch(self, users: list[str]) -> dict[str, Answer]:
        (user,) = users
        return {user: await self.check_online(user)}

    async def check_online(self, user: str) -> Answer:
        """Whether ``user`` is online (retried; a fresh signature on every attempt)."""
        return await self.http.retrying(lambda: self._once(user))

    async def _once(self, user: str) -> Answer:
        nonce = str(secrets.randbelow(10**9))
        timestamp = str(int(time.time() * 1000))
        headers = {
            "App-Key": self._app_key,
            "Nonce": nonce,
            "Timestamp": timestamp,
            "Signature": sign(self._secret, nonce, timestamp),
        }
        response = await self.http.post(PATH, data={"userId": user}, headers=headers)
        status = response.status_code
        if status == 200:
            return parse_answer(self.http.json(response, PATH))
        try:  # RongCloud's errors come with an HTTP status and a JSON code (1004: 401)
            body = self.http.json(response, PATH)
        except ProviderError:
            body = None
        if isinstance(body, dict) and body.get("code") not in (None, 200):
            return parse_answer(body)  # raises
        raise ProviderError(f"rongcloud: POST {PATH}: HTTP {status}", retryable=False)
