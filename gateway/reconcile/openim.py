"""OpenIM: ``POST {api_base}/user/get_users_online_status`` (≤ 100 users a call).

Authenticated by an admin token (header ``token``) from ``POST /auth/get_admin_token``
(``secret`` and the admin ``userID``), cached and renewed before ``expireTimeSeconds`` runs
out, and renewed at once when a call is refused with a token errCode (1501-1507), then
retried once. Every call carries an ``operationID`` (a trace id). ``status`` is trusted (1
online); ``detailPlatformStatus`` only names platforms: an OpenIM node that errors reports
its users offline, and the detail can miss connections held by other nodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from gateway.providers.openim import PLATFORM_IDS
from gateway.reconcile.base import (
    Answer,
    Checked,
    CredentialsExpired,
    ProviderError,
    check_in_batches,
    unique,
)
from gateway.reconcile.config import OpenIMReconcile
from gateway.reconcile.http import HttpSettings, PullHttp

log = logging.getLogger(__name__)

PATH = "/user/get_users_online_status"
TOKEN_PATH = "/auth/get_admin_token"
BATCH = 100
TOKEN_ERRORS = frozenset(range(1501, 1508))  # expired, invalid, malformed, … not exist
REFUSED = frozenset({1001, 1002})  # bad arguments; no permission (wrong secret or admin)
_MAX_TOKEN_S = 365 * 86_400
_DEFAULT_TOKEN_S = 3600  # an answer without a usable expireTimeSeconds: renew within the hour


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value) < 12:
        return int(value)
    return None


def _err_code(body: Any, path: str) -> int:
    if not isinstance(body, dict):
        raise ProviderError(f"openim: POST {path}: not a JSON object")
    code = _int(body.get("errCode", 0))
    return -1 if code is None else code


def parse_answer(body: Any, users: Sequence[str]) -> dict[str, Answer]:
    """The answers for ``users`` in a ``get_users_online_status`` body (``PullError`` on a
    failed call; users the body leaves out are left out)."""
    code = _err_code(body, PATH)
    if code in TOKEN_ERRORS:
        raise CredentialsExpired(f"openim: POST {PATH}: errCode {code} (admin token refused)")
    if code != 0:
        raise ProviderError(f"openim: POST {PATH}: errCode {code}", retryable=code not in REFUSED)
    wanted = set(users)
    answers: dict[str, Answer] = {}
    data = body.get("data")
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        user = item.get("userID")
        status = _int(item.get("status"))
        if not isinstance(user, str) or user not in wanted or status not in (0, 1):
            continue
        if status == 0:
            answers[user] = Answer(False)  # whatever the detail says
            continue
        names: set[str] = set()
        detail = item.get("detailPlatformStatus")
        for entry in detail if isinstance(detail, list) else []:
            pid = _int(entry.get("platformID")) if isinstance(entry, dict) else None
            if pid is not None:
                names.add(PLATFORM_IDS.get(pid, "unknown"))
        answers[user] = Answer(True, tuple(sorted(names)))
    return answers


class OpenIMClient:
    """The ``get_users_online_status`` client of one app, with its admin token."""

    provider = "openim"
    batch_size = BATCH

    def __init__(
        self,
        config: OpenIMReconcile,
        settings: HttpSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._admin = config.admin_user
        self._secret = config.secret
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.token_fetches = 0
        self.http = PullHttp("openim", config.base_url, config.rate, settings, transport=transport)

    def __repr__(self) -> str:  # never the secret or the token
        return f"OpenIMClient(admin_user={self._admin!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def check(self, users: Sequence[str]) -> Checked:
        return await check_in_batches(
            users, BATCH, self.get_users_online_status, self.http.settings.concurrency
        )

    async def get_users_online_status(self, users: Sequence[str]) -> dict[str, Answer]:
        """One call for at most 100 users (retried; a new admin token once if refused)."""
        ids = unique(users)
        if len(ids) > BATCH:
            raise ValueError(f"at most {BATCH} users per call")
        if not ids:
            return {}
        return await self.http.retrying(lambda: self._authorized(ids))

    async def _authorized(self, ids: list[str]) -> dict[str, Answer]:
        token = await self.admin_token()
        try:
            return await self._once(ids, token)
        except CredentialsExpired:
            log.info("openim: admin token refused; retrying with a new one")
            return await self._once(ids, await self.admin_token(refused=token))

    async def _once(self, ids: list[str], token: str) -> dict[str, Answer]:
        headers = {"token": token, "operationID": uuid.uuid4().hex}
        response = await self.http.post(PATH, json={"userIDs": ids}, headers=headers)
        return parse_answer(self.http.json(response, PATH), ids)

    async def admin_token(self, *, refused: str | None = None) -> str:
        """The cached admin token, or a new one when it is due for renewal or ``refused``."""
        async with self._lock:  # concurrent calls wait for one fetch
            if refused is not None and self._token == refused:
                self._token = ""
            if self._token and self._clock() < self._renew_at:
                return self._token
            started = self._clock()
            token, expire_s = await self._fetch_token()  # the caller's retries cover it
            self._token = token
            self._renew_at = started + expire_s - min(expire_s * 0.1, 3600.0)
            return token

    async def _fetch_token(self) -> tuple[str, int]:
        self.token_fetches += 1
        response = await self.http.post(
            TOKEN_PATH,
            json={"secret": self._secret, "userID": self._admin},
            headers={"operationID": uuid.uuid4().hex},
        )
        body = self.http.json(response, TOKEN_PATH)
        code = _err_code(body, TOKEN_PATH)
        if code != 0:
            raise ProviderError(
                f"openim: POST {TOKEN_PATH}: errCode {code} (admin token refused)",
                retryable=code not in REFUSED,
            )
        data = body.get("data")
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderError(f"openim: POST {TOKEN_PATH}: no token in the answer")
        assert isinstance(data, dict)
        expire = _int(data.get("expireTimeSeconds"))
        if expire is None or expire <= 0:
            expire = _DEFAULT_TOKEN_S
        return token, min(expire, _MAX_TOKEN_S)
