"""Presence stores and brokers: one module per backend, chosen by ``open_backend``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.backends.base import Broker, PresenceStore
from gateway.backends.memory import MemoryBroker, MemoryStore

if TYPE_CHECKING:
    from gateway.config import Settings


def open_backend(settings: Settings) -> tuple[PresenceStore, Broker]:
    """The store and broker ``settings`` ask for: memory unless a ``[redis]`` table is set.

    The Redis client is imported lazily so the in-memory mode needs nothing more.
    """
    if settings.redis is None:
        broker = MemoryBroker()
        return MemoryStore(settings.presence, broker), broker
    from gateway.backends.redis.broker import RedisBroker
    from gateway.backends.redis.store import RedisStore

    redis_cfg = settings.redis
    store = RedisStore.from_url(
        redis_cfg.url, cluster=redis_cfg.cluster, settings=settings.presence
    )
    return store, RedisBroker.from_url(redis_cfg.url, cluster=redis_cfg.cluster)
