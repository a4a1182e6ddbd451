"""What every pull-API client shares: the answer per user, the error kinds, backoff.

A client answers "is this user online, and on which platforms" for a batch of users. It
never turns a failure into "offline": a call that fails raises a ``PullError`` (after the
HTTP layer's retries), and ``check`` reports the users it could not answer in
``Checked.failed``. Error messages are short, bounded and free of credentials (no URL
query, no header, no response body).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import UpstreamError

MAX_BACKOFF_S = 60.0
"""No backoff hint (ours or a provider's ``Retry-After``) is longer than this."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the provider says about one user right now.

    ``platforms``: normalized names (``gateway.model.PLATFORMS``) of the online devices the
    provider named, sorted and unique; empty when it named none (the caller then uses
    ``unknown``). ``known`` is False for a user the provider does not know (Tencent 70107),
    who is offline.
    """

    online: bool
    platforms: tuple[str, ...] = ()
    known: bool = True


OFFLINE = Answer(False)
UNKNOWN = Answer(False, known=False)


class PullError(UpstreamError):
    """A pull-API call failed; presence must not change because of it.

    ``retry_after_s`` is a capped hint for when to call this provider again; ``retryable``
    says whether the same call can succeed later (False: wrong credentials or a request the
    provider refuses, which only an operator can fix).
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message[:200])
        self.retry_after_s = capped(retry_after_s)


class RateLimited(PullError):
    """The provider asked us to slow down (HTTP 429, Tencent 60007/60011/60018/60019)."""


class CredentialsExpired(PullError):
    """The admin credential (Tencent UserSig, OpenIM admin token) was refused as expired.

    Clients renew the credential and retry once; this surfaces only when the renewed one is
    refused as well.
    """


class ProviderError(PullError):
    """Any other failure: time-out, transport error, 5xx, an error code, a bad answer."""

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, retryable: bool = True
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retryable = retryable


def capped(delay_s: float | None) -> float | None:
    """``delay_s`` within ``[0, MAX_BACKOFF_S]`` (None stays None; NaN counts as the cap)."""
    if delay_s is None:
        return None
    if not delay_s >= 0:  # NaN, negative
        return 0.0 if delay_s < 0 else MAX_BACKOFF_S
    return min(delay_s, MAX_BACKOFF_S)


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): equal jitter over a capped doubling.

    Half of ``min(cap, base * 2**attempt)`` plus a random part up to the other half, so
    retries of many callers spread out yet never come back at once.
    """
    ceiling = min(cap_s, MAX_BACKOFF_S, base_s * 2.0 ** min(attempt, 30))
    draw = (rng or random).random()
    return ceiling / 2 + draw * ceiling / 2


@dataclass(slots=True)
class Checked:
    """The result of ``PullClient.check``: answers, and the users left without one."""

    answers: dict[str, Answer] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # an error, or the provider omitted them
    errors: list[PullError] = field(default_factory=list)  # one per failed call


class PullClient(Protocol):
    """One provider's pull API for one app."""

    provider: str
    batch_size: int  # most users one provider call may carry

    async def check(self, users: Sequence[str]) -> Checked:
        """Ask about ``users`` (any number; batched, rate limited, retried); never raises
        ``PullError``: failed calls land in ``Checked.failed`` / ``Checked.errors``."""
        ...

    async def aclose(self) -> None:
        """Close the connection pool."""
        ...


def unique(users: Sequence[str]) -> list[str]:
    """``users`` without repeats, first occurrence order kept."""
    return list(dict.fromkeys(users))


def batches(users: Sequence[str], size: int) -> list[list[str]]:
    """``users`` (deduplicated) in slices of at most ``size``."""
    assert size >= 1
    ids = unique(users)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


async def check_in_batches(
    users: Sequence[str],
    size: int,
    call: Callable[[list[str]], Awaitable[dict[str, Answer]]],
    concurrency: int = 1,
) -> Checked:
    """Run ``call`` over ``users`` in batches of ``size``, at most ``concurrency`` at once.

    A failed batch puts its users in ``failed`` and its error in ``errors``; users a
    successful call did not answer are ``failed`` too (never offline).
    """
    result = Checked()
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(batch: list[str]) -> None:
        async with gate:
            try:
                answers = await call(batch)
            except PullError as exc:
                result.errors.append(exc)
                result.failed.extend(batch)
                return
        for user in batch:
            answer = answers.get(user)
            if answer is None:
                result.failed.append(user)
            else:
                result.answers[user] = answer

    async with asyncio.TaskGroup() as group:
        for batch in batches(users, size):
            group.create_task(one(batch))
    return result
