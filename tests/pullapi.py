"""The pull-API fakes of Tencent IM, RongCloud and OpenIM, for the tests.

They live in ``gateway.pullapi_sim`` (``presence-gateway simulate --serve-pull-api`` serves
them from its model, and the CLI cannot import from ``tests/``); this module re-exports them
so the tests keep importing ``tests.pullapi``.
"""

from __future__ import annotations

from gateway.pullapi_sim import (
    FakeOpenIM,
    FakePullApi,
    FakeRongCloud,
    FakeServer,
    FakeTencent,
    Payload,
    Seen,
    serve,
)

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
