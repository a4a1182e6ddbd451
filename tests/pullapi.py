"""The pull-API fakes of Tencent IM, RongCloud and OpenIM, for the tests.

They live in ``gateway.simulate.pullapi`` (``presence-gateway simulate --serve-pull-api``
serves them from its model, and the CLI cannot import from ``tests/``); this module
re-exports them so the tests keep importing ``tests.pullapi``.
"""

from __future__ import annotations

from gateway.simulate.pullapi.base import FakePullApi, Payload, Seen
from gateway.simulate.pullapi.openim import FakeOpenIM
from gateway.simulate.pullapi.rongcloud import FakeRongCloud
from gateway.simulate.pullapi.server import FakeServer, serve
from gateway.simulate.pullapi.tencent import FakeTencent

__all__ = [
    "FakeOpenIM",
    "FakePullApi",
    "FakeRongCloud",
    "FakeServer",
    "FakeTencent",
    "Payload",
    "Seen",
    "serve",
]
