"""Reconciliation (SPEC section 8): one pull-API client per provider, and the scheduler.

``base`` holds what every client shares (``Answer``, the error kinds), ``http`` the pooled,
rate-limited, retrying HTTP client, ``config`` the ``[apps.<provider>.reconcile]`` tables,
and ``tencent`` / ``rongcloud`` / ``openim`` one client each (``usersig``: Tencent's admin
UserSig). Credentials never reach a log line or an exception message. ``scheduler`` decides
who is checked when (one node at a time: ``lease``), ``rules`` what an answer or a silence
(``max_silence_s``) changes.
"""

from __future__ import annotations

from gateway.reconcile.base import (
    Answer,
    Checked,
    CredentialsExpired,
    ProviderError,
    PullClient,
    PullError,
    RateLimited,
)

__all__ = [
    "Answer",
    "Checked",
    "CredentialsExpired",
    "ProviderError",
    "PullClient",
    "PullError",
    "RateLimited",
]
