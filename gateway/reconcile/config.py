"""The ``[apps.<provider>.reconcile]`` tables (SPEC section 8).

Not wired into ``gateway.config`` here: each provider's Struct gets an optional
``reconcile`` field of the matching type. ``validate`` raises ``ValueError("key: reason")``
like the provider tables do, so the config loader names the key and the file.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec

Secret = Annotated[str, msgspec.Meta(min_length=1)]
Interval = Annotated[float, msgspec.Meta(ge=1, le=86_400)]  # s; SPEC: interval_s >= 1
Rate = Annotated[float, msgspec.Meta(gt=0, le=10_000)]  # requests/s towards the provider


class ReconcileConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What every ``reconcile`` table holds."""

    api_base: str
    interval_s: Interval = 300.0  # every user shown online is re-checked this often
    rate: Rate = 50.0

    def validate(self) -> None:
        """Raise ``ValueError("key: reason")`` when a value is well typed but unusable."""
        parts = urlsplit(self.api_base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("api_base: must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("api_base: must not hold a query, a fragment or credentials")

    @property
    def base_url(self) -> str:
        """``api_base`` without a trailing slash."""
        return self.api_base.rstrip("/")


class TencentReconcile(ReconcileConfig, frozen=True, kw_only=True):
    """``[apps.tencent.reconcile]``; the sdkappid is the provider table's."""

    api_base: str = "https://console.tim.qq.com"  # the REST domain of the app's region
    admin: Secret = "administrator"  # an App admin account
    secret_key: Secret  # the app's key: signs the admin UserSig
    rate: Rate = 100.0  # Tencent allows 200/s by default

    def __repr__(self) -> str:  # never the key, even in a traceback
        return f"TencentReconcile(api_base={self.api_base!r}, admin={self.admin!r})"


class RongCloudReconcile(ReconcileConfig, frozen=True, kw_only=True):
    """``[apps.rongcloud.reconcile]``; signs with the provider table's app_key / app_secret."""

    api_base: str = "https://api.rong-api.com"
    rate: Rate = 50.0  # RongCloud allows 100/s and asks for restraint

    def __repr__(self) -> str:
        return f"RongCloudReconcile(api_base={self.api_base!r})"


class OpenIMReconcile(ReconcileConfig, frozen=True, kw_only=True):
    """``[apps.openim.reconcile]``: an admin token from ``/auth/get_admin_token``."""

    admin_user: Secret = "imAdmin"
    secret: Secret  # share.yml secret

    def __repr__(self) -> str:
        return f"OpenIMReconcile(api_base={self.api_base!r}, admin_user={self.admin_user!r})"
