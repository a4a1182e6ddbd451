"""The simulated users and the devices they own (pure).

Each provider has its device classes and the platforms (as the gateway shows them) in each;
a user owns a device of a class with ``OWN_CHANCE``, and a kick replaces a device by one of
the same class.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

# Device classes and the platforms (as the gateway shows them) each provider has in them.
# A kick replaces a device by one of the same class.
CATALOG: dict[str, dict[str, tuple[str, ...]]] = {
    "tencent": {
        "phone": ("ios", "android"),
        "desktop": ("windows", "mac"),
        "web": ("web",),
        "tablet": ("ipad",),
    },
    "rongcloud": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("pc",),
        "web": ("web", "miniprogram"),
    },
    "openim": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web", "miniprogram"),
        "tablet": ("ipad", "apad"),
    },
    "standard": {
        "phone": ("ios", "android"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web",),
        "tablet": ("ipad",),
    },
    "easemob": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web",),
    },
    "netease": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web",),
    },
    "wukongim": {  # deviceFlag 0 app, 1 web, 2 pc
        "phone": ("mobile",),
        "desktop": ("pc",),
        "web": ("web",),
    },
}
OWN_CHANCE = {"phone": 1.0, "desktop": 0.7, "web": 0.5, "tablet": 0.25}


@dataclass(slots=True)
class Gadget:
    """A device a user owns."""

    cls: str
    platform: str
    ident: str


@dataclass(slots=True)
class User:
    name: str
    provider: str
    gadgets: list[Gadget]
    online: dict[str, Gadget] = field(default_factory=dict)  # device key -> device
    clock: int = 0  # the last event time given to this user


def device_id(user: str, gadget: Gadget) -> str:
    """A stable device id (UUID form) for one device of ``user``."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{user}/{gadget.platform}/{gadget.ident}"))
