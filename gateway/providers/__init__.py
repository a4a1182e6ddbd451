"""Webhook adapters, one module per IM provider; they share only ``base``."""

from __future__ import annotations

from gateway.providers.base import Provider, ProviderConfig
from gateway.providers.easemob import EasemobProvider
from gateway.providers.netease import NetEaseProvider
from gateway.providers.openim import OpenIMProvider
from gateway.providers.rongcloud import RongCloudProvider
from gateway.providers.standard import StandardProvider
from gateway.providers.tencent import TencentProvider
from gateway.providers.wukongim import WuKongIMProvider

PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls
    for cls in (
        TencentProvider,
        RongCloudProvider,
        OpenIMProvider,
        StandardProvider,
        EasemobProvider,
        NetEaseProvider,
        WuKongIMProvider,
    )
}
CONFIGS: dict[str, type[ProviderConfig]] = {
    name: cls.config_type for name, cls in PROVIDERS.items()
}

__all__ = ["CONFIGS", "PROVIDERS", "Provider", "ProviderConfig"]
