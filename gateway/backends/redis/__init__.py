"""The Redis backend (standalone Redis and Redis Cluster)."""

from __future__ import annotations

from gateway.backends.redis.store import (
    APPLY,
    MAX_USERS_PER_CALL,
    RedisBroker,
    RedisStore,
    decode_record,
    encode_record,
    grace_index,
    hint_key,
    parse_channel,
    slot_index,
    slot_tag,
    slot_tags,
    user_channel,
    user_key,
    user_tag,
)

__all__ = [
    "APPLY",
    "MAX_USERS_PER_CALL",
    "RedisBroker",
    "RedisStore",
    "decode_record",
    "encode_record",
    "grace_index",
    "hint_key",
    "parse_channel",
    "slot_index",
    "slot_tag",
    "slot_tags",
    "user_channel",
    "user_key",
    "user_tag",
]
