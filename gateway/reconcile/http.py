"""The HTTP side of every pull-API client.

One pooled ``httpx.AsyncClient`` per provider and app (connections reused, time-outs on
every phase), a token bucket at the configured ``rate`` shared by all its calls (retries
and credential requests included), and capped, jittered retries of errors, time-outs and
rate-limit answers. Nothing here logs or raises a URL's query (Tencent's UserSig is in it),
a header or a body: log lines and messages name the provider, the method and the path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec

from gateway.reconcile.base import (
    CredentialsExpired,
    ProviderError,
    PullError,
    RateLimited,
    backoff_s,
    capped,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Tunables of the pull-API HTTP clients (the config tables hold only api_base and rate)."""

    timeout_s: float = 10.0  # connect, write, read and pool wait, each
    attempts: int = 3  # tries of one call before its error surfaces
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    burst: float = 1.0  # token bucket depth: 1 spaces calls 1/rate apart
    max_connections: int = 8
    concurrency: int = 4  # calls of one ``check`` in flight at once


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` waits for one (FIFO)."""

    def __init__(
        self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert rate > 0 and burst >= 1
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:  # one waiter at a time: the others queue behind it in order
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


class _NoQuery(logging.Filter):
    """Drop the query string from the URLs httpx logs (``HTTP Request: POST https://…``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, httpx.URL) for a in args):
            record.args = tuple(
                a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in args
            )
        return True


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _NoQuery) for f in _httpx_log.filters):
    _httpx_log.addFilter(_NoQuery())


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    if value.isascii() and value.isdigit() and len(value) <= 6:
        return float(value)
    return None  # absent, or an HTTP date (not worth parsing for a capped hint)


class PullHttp:
    """The HTTP client of one provider's pull API for one app."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        rate: float,
        settings: HttpSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        self.settings = settings = settings or HttpSettings()
        self.bucket = TokenBucket(rate, settings.burst)
        self._rng = rng or random.Random()
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(settings.timeout_s),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            headers={"user-agent": "presence-gateway"},
            follow_redirects=False,  # a redirect could carry the query to another host
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One POST after a token of the bucket. Time-outs, transport errors and 5xx raise
        ``ProviderError``, 429 ``RateLimited``; any other answer is returned."""
        await self.bucket.take()
        where = f"{self.provider}: POST {path}"
        content = None if json is None else msgspec.json.encode(json)
        if content is not None:
            headers = {**(headers or {}), "content-type": "application/json"}
        try:
            response = await self._client.post(
                path, params=params, content=content, data=data, headers=headers
            )
        except httpx.TimeoutException:
            raise ProviderError(f"{where} timed out") from None
        except httpx.HTTPError as exc:  # the message of some carries the URL: not shown
            raise ProviderError(f"{where} failed ({type(exc).__name__})") from None
        status = response.status_code
        log.debug("%s -> %d", where, status)
        if status == 429:
            raise RateLimited(f"{where}: HTTP 429", retry_after_s=_retry_after(response))
        if status >= 500:
            raise ProviderError(f"{where}: HTTP {status}", retry_after_s=_retry_after(response))
        return response

    def json(self, response: httpx.Response, path: str) -> Any:
        """The JSON body of ``response``; a body that is not JSON is a ``ProviderError``."""
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise ProviderError(
                f"{self.provider}: POST {path}: HTTP {response.status_code}, not JSON"
            ) from None

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, retried on retryable errors with capped, jittered backoff.

        The last error surfaces with ``retry_after_s`` set to the next delay (or the
        provider's hint, capped). ``CredentialsExpired`` and non-retryable errors surface at
        once: the client renews credentials itself, and a refused key stays refused.
        """
        s = self.settings
        attempt = 0
        while True:
            try:
                return await call()
            except CredentialsExpired:
                raise
            except PullError as exc:
                if not exc.retryable:
                    raise
                delay = backoff_s(attempt, s.backoff_base_s, s.backoff_cap_s, self._rng)
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), s.backoff_cap_s)
                attempt += 1
                if attempt >= s.attempts:
                    exc.retry_after_s = capped(delay)
                    log.warning("%s (gave up after %d tries)", exc, attempt)
                    raise
                log.info("%s; retry %d in %.2f s", exc, attempt, delay)
                await asyncio.sleep(delay)
