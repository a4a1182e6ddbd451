"""Tencent IM: ``POST {api_base}/v4/openim/query_online_status`` (≤ 500 accounts a call).

The admin identifier, the sdkappid and the admin UserSig travel in the query string, so
no URL is ever logged with its query (``gateway.reconcile.http``). ``Status`` (the legacy
``querystate`` calls it ``State``) is read case-insensitively, field names included;
``PushOnline`` (the app is in the background, reachable only by push) counts as offline.
Accounts in ``ErrorList`` with 70107 are unknown to Tencent, hence offline; other per-account
errors leave the account unanswered.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from gateway.model import normalize_platform
from gateway.reconcile.base import (
    UNKNOWN,
    Answer,
    Checked,
    CredentialsExpired,
    ProviderError,
    RateLimited,
    check_in_batches,
    unique,
)
from gateway.reconcile.config import TencentReconcile
from gateway.reconcile.http import HttpSettings, PullHttp
from gateway.reconcile.usersig import DEFAULT_EXPIRE_S, AdminUserSig

log = logging.getLogger(__name__)

PATH = "/v4/openim/query_online_status"
BATCH = 500
SIG_EXPIRED = 70001
UNKNOWN_ACCOUNT = 70107
RATE_LIMITED = frozenset({60007, 60011, 60018, 60019})
# UserSig invalid, wrong key, identifier or SdkAppid: only an operator can fix these
REFUSED = frozenset({70003, 70009, 70013, 70014})

# Detail[].Platform names normalize_platform does not know by itself.
_ALIASES = {"iphone": "ios", "aphone": "android", "macos": "mac", "mini program": "miniprogram"}


def platform_name(name: str) -> str:
    """A ``Detail[].Platform`` value as a gateway platform (``iPhone``/``IPhone`` → ios)."""
    key = name.strip().lower()
    return normalize_platform(_ALIASES.get(key, key))


def _field(obj: dict[str, Any], *names: str) -> Any:
    """``obj[name]`` for the first of ``names`` present, compared case-insensitively."""
    for name in names:
        if name in obj:
            return obj[name]
    folded = {n.lower() for n in names}
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() in folded:
            return value
    return None


def _status(obj: dict[str, Any]) -> str:
    value = _field(obj, "Status", "State")
    return value.strip().lower() if isinstance(value, str) else ""


def _code(value: Any) -> int:
    if isinstance(value, bool):
        return -1
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value) < 12:
        return int(value)
    return -1 if value is not None else 0


def parse_answer(body: Any, users: Sequence[str]) -> dict[str, Answer]:
    """The answers for ``users`` in a ``query_online_status`` response body.

    Raises ``CredentialsExpired`` (70001), ``RateLimited`` (60007/60011/60018/60019) or
    ``ProviderError`` for a failed call; accounts the body does not answer are left out.
    """
    if not isinstance(body, dict):
        raise ProviderError(f"tencent: POST {PATH}: not a JSON object")
    code = _code(_field(body, "ErrorCode"))
    status = _field(body, "ActionStatus")
    failed = isinstance(status, str) and status.strip().upper() == "FAIL"
    if code == SIG_EXPIRED:
        raise CredentialsExpired(f"tencent: POST {PATH}: ErrorCode {code} (UserSig expired)")
    if code in RATE_LIMITED:
        raise RateLimited(f"tencent: POST {PATH}: ErrorCode {code} (rate limited)")
    if code != 0 or failed:
        raise ProviderError(
            f"tencent: POST {PATH}: ErrorCode {code}", retryable=code not in REFUSED
        )
    wanted = set(users)
    answers: dict[str, Answer] = {}
    results = _field(body, "QueryResult")
    for item in results if isinstance(results, list) else []:
        if not isinstance(item, dict):
            continue
        user = _field(item, "To_Account")
        state = _status(item)
        if not isinstance(user, str) or user not in wanted:
            continue
        if state in ("offline", "pushonline"):
            answers[user] = Answer(False)
        elif state == "online":
            answers[user] = Answer(True, _platforms(_field(item, "Detail")))
    errors = _field(body, "ErrorList")
    for item in errors if isinstance(errors, list) else []:
        if not isinstance(item, dict):
            continue
        user = _field(item, "To_Account")
        known = not isinstance(user, str) or user not in wanted or user in answers
        if not known and _code(_field(item, "ErrorCode")) == UNKNOWN_ACCOUNT:
            answers[user] = UNKNOWN
    return answers


def _platforms(detail: Any) -> tuple[str, ...]:
    """The platforms of the online entries of ``Detail`` (an entry without status counts)."""
    names: set[str] = set()
    for entry in detail if isinstance(detail, list) else []:
        if not isinstance(entry, dict):
            continue
        state = _status(entry)
        platform = _field(entry, "Platform")
        if state in ("online", "") and isinstance(platform, str):
            names.add(platform_name(platform))
    return tuple(sorted(names))


class TencentClient:
    """The ``query_online_status`` client of one app."""

    provider = "tencent"
    batch_size = BATCH

    def __init__(
        self,
        config: TencentReconcile,
        sdkappid: int,
        settings: HttpSettings | None = None,
        *,
        usersig_expire_s: int = DEFAULT_EXPIRE_S,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.sdkappid = sdkappid
        self.admin = config.admin
        self.usersig = AdminUserSig(
            config.secret_key, sdkappid, config.admin, usersig_expire_s, clock
        )
        self.http = PullHttp("tencent", config.base_url, config.rate, settings, transport=transport)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def check(self, users: Sequence[str]) -> Checked:
        return await check_in_batches(
            users, BATCH, self.query_online_status, self.http.settings.concurrency
        )

    async def query_online_status(self, users: Sequence[str]) -> dict[str, Answer]:
        """One call for at most 500 users (retried; a renewed UserSig on 70001, once)."""
        ids = unique(users)
        if len(ids) > BATCH:
            raise ValueError(f"at most {BATCH} accounts per call")
        if not ids:
            return {}
        return await self.http.retrying(lambda: self._signed(ids))

    async def _signed(self, ids: list[str]) -> dict[str, Answer]:
        try:
            return await self._once(ids, self.usersig.get())
        except CredentialsExpired:
            log.info("tencent: admin UserSig refused as expired; retrying with a new one")
            return await self._once(ids, self.usersig.renew())

    async def _once(self, ids: list[str], usersig: str) -> dict[str, Answer]:
        params = {
            "sdkappid": str(self.sdkappid),
            "identifier": self.admin,
            "usersig": usersig,
            "random": str(secrets.randbelow(2**32)),
            "contenttype": "json",
        }
        body = {"To_Account": ids, "IsNeedDetail": 1}
        response = await self.http.post(PATH, params=params, json=body)
        if response.status_code != 200:
            status = response.status_code
            raise ProviderError(
                f"tencent: POST {PATH}: HTTP {status}", retryable=status in (408, 409, 425)
            )
        return parse_answer(self.http.json(response, PATH), ids)
