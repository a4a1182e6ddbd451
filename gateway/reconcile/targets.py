"""Which apps and providers are reconciled or watched for silence, and their pull-API clients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.providers.base import ProviderConfig
from gateway.providers.openim import OpenIMConfig
from gateway.providers.rongcloud import RongCloudConfig
from gateway.providers.tencent import TencentConfig
from gateway.reconcile.base import PullClient
from gateway.reconcile.http import HttpSettings
from gateway.reconcile.openim import OpenIMClient
from gateway.reconcile.rongcloud import RongCloudClient
from gateway.reconcile.tencent import TencentClient


@dataclass(frozen=True)
class Target:
    """One app's provider to reconcile or to watch for silence."""

    app: str
    provider: str
    interval_s: float  # the online round's period (also the watched users' minimum)
    silence_ms: int  # 0: off
    make_client: Callable[[], PullClient] | None  # None: no pull API, silence only

    @property
    def name(self) -> str:
        return f"rc/{self.app}/{self.provider}"


def make_client(
    provider: str, table: ProviderConfig, http: HttpSettings | None = None
) -> Callable[[], PullClient] | None:
    """A factory of the pull-API client of ``table``; None without a ``reconcile`` table."""
    if isinstance(table, TencentConfig) and table.reconcile is not None:
        tencent, sdkappid = table.reconcile, table.sdkappid
        return lambda: TencentClient(tencent, sdkappid, http)
    if isinstance(table, RongCloudConfig) and table.reconcile is not None:
        rong, key, secret = table.reconcile, table.app_key, table.app_secret
        return lambda: RongCloudClient(rong, key, secret, http)
    if isinstance(table, OpenIMConfig) and table.reconcile is not None:
        openim = table.reconcile
        return lambda: OpenIMClient(openim, http)
    return None


def targets(
    apps: dict[str, dict[str, ProviderConfig]], http: HttpSettings | None = None
) -> list[Target]:
    """The targets of ``apps`` (app id -> its provider tables by name)."""
    out = []
    for app, tables in apps.items():
        for provider, table in tables.items():
            factory = make_client(provider, table, http)
            silence = table.max_silence_s * 1000
            if factory is None and silence <= 0:
                continue
            reconcile = getattr(table, "reconcile", None)
            interval = float(reconcile.interval_s) if reconcile is not None else 300.0
            out.append(Target(app, provider, interval, silence, factory))
    return out
