"""``Coordination`` (``backends.base``) on Redis and Redis Cluster (``RedisStore`` inherits it).

Keys (each its own hash tag, so on Cluster any slot is fine)::

    <prefix>:l:{<name>}   string  a lease: the holder; PX = its time to live (lease: SET PX in
                                  Lua when absent or held by the caller; release: DEL if held)
    <prefix>:k:{<name>}   string  a note (GET, SET PX, GETDEL)
    <prefix>:w:{<name>}   sorted set  a work set: member = item, score = when queued (ms)

``scan_users`` walks ``<prefix>:u:{<app>/*`` with SCAN on every primary.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.backends.redis.calls import unavailable
from gateway.backends.redis.keys import parse_tag
from gateway.backends.redis.lane import command
from gateway.backends.redis.wire import Wire

_LEASE = b"""local h = redis.call('GET', KEYS[1])
if h == false or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0"""
_RELEASE = b"""if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"""
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _key(store: RedisCoordination, kind: str, name: str) -> bytes:
    assert "{" not in name and "}" not in name, "coordination names are brace-free"
    return f"{store.prefix}:{kind}:{{{name}}}".encode()


async def _one(store: RedisCoordination, key: bytes, cmd: bytes, what: str) -> object:
    with unavailable(what):
        [reply] = await store._run_node(await store._node(key), [cmd])
    return reply


class RedisCoordination:
    """The Redis ``Coordination`` methods, on what ``RedisStore`` provides."""

    prefix: str
    _wire: Wire

    async def _node(self, key: bytes) -> str:
        raise NotImplementedError

    async def _run_node(self, node: str, commands: list[bytes]) -> list[Any]:
        raise NotImplementedError

    async def lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        key = _key(self, "l", name)
        ttl = b"%d" % max(ttl_ms, 1)
        cmd = command(b"EVAL", _LEASE, b"1", key, holder.encode(), ttl)
        return await _one(self, key, cmd, "lease") == 1

    async def release_lease(self, name: str, holder: str) -> None:
        key = _key(self, "l", name)
        await _one(self, key, command(b"EVAL", _RELEASE, b"1", key, holder.encode()), "lease")

    async def put_note(self, name: str, value: bytes, ttl_ms: int) -> None:
        key = _key(self, "k", name)
        await _one(self, key, command(b"SET", key, value, b"PX", b"%d" % max(ttl_ms, 1)), "note")

    async def get_note(self, name: str) -> bytes | None:
        key = _key(self, "k", name)
        reply = await _one(self, key, command(b"GET", key), "note")
        return reply if isinstance(reply, bytes) else None

    async def take_note(self, name: str) -> bytes | None:
        key = _key(self, "k", name)
        reply = await _one(self, key, command(b"GETDEL", key), "note")
        return reply if isinstance(reply, bytes) else None

    async def push_work(self, name: str, items: Sequence[str], cap: int) -> int:
        if not items:
            return 0
        key = _key(self, "w", name)
        now = b"%d" % (time.time_ns() // 1_000_000)
        members = [item.encode() for item in items]
        add = [b"ZADD", key, b"NX"]
        for member in members:
            add += [now, member]
        with unavailable("work"):
            node = await self._node(key)
            await self._run_node(
                node,
                [command(*add), command(b"ZREMRANGEBYRANK", key, b"%d" % max(cap, 0), b"-1")],
            )
            [scores] = await self._run_node(node, [command(b"ZMSCORE", key, *members)])
        return sum(1 for score in scores if score is not None)

    async def pop_work(self, name: str, count: int) -> list[str]:
        key = _key(self, "w", name)
        flat = await _one(self, key, command(b"ZPOPMIN", key, b"%d" % max(count, 1)), "work")
        assert isinstance(flat, list)
        return [member.decode() for member in flat[::2]]

    async def scan_users(self, app: str, batch: int = 1000) -> AsyncIterator[list[str]]:
        head = f"{self.prefix}:u:{{"
        pattern = (f"{self.prefix}:u:{{{app}/".translate(_GLOB) + "*").encode()
        with unavailable("scan"):
            nodes = await self._wire.primaries()
        for node in nodes:
            cursor = b"0"
            while True:
                with unavailable("scan"):
                    [reply] = await self._run_node(
                        node,
                        [command(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", b"%d" % batch)],
                    )
                cursor, keys = reply[0], reply[1]
                users = []
                for raw in keys:
                    text = raw.decode(errors="replace")
                    if text.startswith(head) and text.endswith("}"):
                        try:
                            parsed = parse_tag(text[len(head) : -1])
                        except (ValueError, IndexError):
                            parsed = None
                        if parsed is not None and parsed[0] == app:
                            users.append(parsed[1])
                if users:
                    yield users
                if cursor in (b"0", 0, "0"):
                    break
