"""The Redis backend (standalone Redis and Redis Cluster): ``RedisStore`` and ``RedisBroker``.

One module per role (see ``store``'s doc for the list). The names re-exported here are the ones
imported from the package by code outside ``gateway/backends``.
"""

from __future__ import annotations

from gateway.backends.redis.broker import RedisBroker
from gateway.backends.redis.keys import parse_channel, slot_index, slot_tag, user_channel
from gateway.backends.redis.store import RedisStore

__all__ = ["RedisBroker", "RedisStore", "parse_channel", "slot_index", "slot_tag", "user_channel"]
