"""Webhook adapters, one module per IM provider; they share only ``base``."""

from __future__ import annotations

from gateway.providers.base import Provider, ProviderConfig
from gateway.providers.openim import OpenIMProvider
from gateway.providers.rongcloud import RongCloudProvider
from gateway.providers.standard import StandardProvider
from gateway.providers.tencent import TencentProvider

PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls for cls in (TencentProvider, RongCloudProvider, OpenIMProvider, StandardProvider)
}
CONFIGS: dict[str, type[ProviderConfig]] = {
    name: cls.config_type for name, cls in PROVIDERS.items()
}

__all__ = ["CONFIGS", "PROVIDERS", "Provider", "ProviderConfig"]
