"""The Redis queue of one endpoint: its consumer group on the app's stream(s).

One node at a time delivers a stream to an endpoint: it holds the stream's lease
(``lease.lua``, renewed while it runs), so a user's messages, which share its slot's stream,
go out in ``v`` order. On Cluster the streams are per slot and a lease covers a bucket of
slots (``keys.BUCKETS``); the nodes delivering to an endpoint register, and each holds at most
its fair share of the buckets, giving back the rest, so the work spreads over the nodes.

A node taking a lease first claims every pending entry of the group on those streams
(``XAUTOCLAIM`` with no idle minimum: the lease says their reader died or gave the lease up),
then reads new ones. An entry is acked (``XACK``) once delivered or given up; one whose node
died first is delivered again by the next holder, with the same ``webhook-id``. A node that
loses a lease stops starting deliveries of its messages (``owns``).

Which slot streams to read (Cluster): those the apply hinted (``keys.hint_key``, written
after the script, best-effort), plus every existing stream of a held bucket once per
``full_pass_s`` and when the lease is taken, so a lost hint only delays.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from gateway.backends.redis import slot_tag
from gateway.outbound import keys
from gateway.outbound.message import Message

log = logging.getLogger(__name__)

LEASE_MS = 5000
FULL_PASS_S = 10.0
CLAIM_BATCH = 500
CONSUMER_IDLE_MS = 3_600_000
CHUNK = 256  # commands per pipeline

_LEASE = resources.files("gateway.backends.redis").joinpath("lua/lease.lua").read_text()


def consumer_name() -> str:
    """This process's consumer name: host, pid and a random part (a restart is a new one)."""
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisSource:
    """One endpoint's consumer group, read by this node for the leases it holds."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str,
        app: str,
        group: str,
        consumer: str,
        lease_ms: int = LEASE_MS,
        full_pass_s: float = FULL_PASS_S,
    ) -> None:
        self.client = client
        self.prefix, self.app, self.group, self.consumer = prefix, app, group, consumer
        self.lease_ms = lease_ms
        self.full_pass_s = full_pass_s
        self.cluster = isinstance(client, RedisCluster)
        self._buckets: list[int] = list(range(keys.BUCKETS))
        self._lease = client.register_script(_LEASE)
        self._held: set[int] = set()
        self._claim: set[int] = set()  # leases just taken: their pending to claim
        self._passes: dict[int, float] = {}  # Cluster: bucket -> when its next full pass is due
        self._active: set[str] = set()  # Cluster: the slot streams to read
        self._draining: dict[int, float] = {}  # given up, in flight: bucket -> deadline
        self._renewed = 0.0
        self._rounds = 0
        self._taken: set[str] = set()  # refs handed out and not done: never handed out twice

    # leases

    async def _renew(self) -> None:
        now = time.monotonic()
        if now - self._renewed < self.lease_ms / 5000:
            return
        self._renewed = now
        registry = keys.registry_key(self.prefix, self.app, self.group)
        wall = int(time.time() * 1000)
        await self.client.zadd(registry, {self.consumer: wall + self.lease_ms})
        await self.client.zremrangebyscore(registry, "-inf", wall)
        share = math.ceil(len(self._buckets) / max(1, await self.client.zcard(registry)))
        self._rounds += 1
        if self._rounds == 1:
            return  # registered: nodes started together see each other before taking leases
        for bucket in list(self._held):
            if not await self._take(bucket, self.lease_ms):
                self._lose(bucket)
        await self._drain()
        extra = len(self._held) - share
        for bucket in random.sample(sorted(self._held, key=str), max(0, extra)):
            self._lose(bucket)  # no new deliveries; given back once those in flight end
            self._draining[bucket] = now + 15.0
        free = [b for b in self._buckets if b not in self._held and b not in self._draining]
        random.shuffle(free)
        for bucket in free:
            if len(self._held) >= share:
                break
            if await self._take(bucket, self.lease_ms):
                self._held.add(bucket)
                self._claim.add(bucket)
                log.info("webhooks out %s: delivering bucket %s", self.group, bucket)

    async def _drain(self) -> None:
        """Renew the leases given up until their deliveries in flight end, then give them
        back: a planned hand-over sends nothing twice."""
        busy = {self._bucket(ref.partition(" ")[0]) for ref in self._taken}
        for bucket, deadline in list(self._draining.items()):
            if bucket in busy and time.monotonic() < deadline:
                await self._take(bucket, self.lease_ms)
            else:
                await self._take(bucket, 0)
                del self._draining[bucket]

    async def _take(self, bucket: int, ttl_ms: int) -> bool:
        key = keys.lease_key(self.prefix, self.app, self.group, bucket)
        return bool(await self._lease(keys=[key], args=[self.consumer, ttl_ms]))

    def _lose(self, bucket: int) -> None:
        self._held.discard(bucket)
        self._claim.discard(bucket)
        self._passes.pop(bucket, None)
        self._active = {t for t in self._active if self._bucket(t) != bucket}
        log.info("webhooks out %s: no longer delivering bucket %s", self.group, bucket)

    def _bucket(self, tag: str) -> int:
        """The bucket of a stream: Cluster, that of its slot; standalone, in its name."""
        if self.cluster:
            return keys.bucket_of(key_slot(tag.encode()))
        return int(tag.removeprefix("b"))

    def owns(self, message: Message) -> bool:
        """Whether this node still holds the lease of the message's stream."""
        return self._bucket(message.ref.partition(" ")[0]) in self._held

    def forget(self, message: Message) -> None:
        """A message handed out that will not be done here (its lease went elsewhere)."""
        self._taken.discard(message.ref)

    # reading

    def _stream(self, tag: str) -> bytes:
        return keys.stream_key(self.prefix, self.app, tag)

    async def take(self, limit: int) -> list[Message]:
        await self._renew()
        if not self._held:
            await asyncio.sleep(self.lease_ms / 5000)
            return []
        out: list[Message] = []
        for bucket in list(self._claim):
            tags = await self._existing(bucket)
            if not self.cluster:  # so one blocking read covers every held stream (NOGROUP)
                await self._pipeline(
                    [
                        ("XGROUP", "CREATE", self._stream(t), self.group, "$", "MKSTREAM")
                        for t in tags
                    ]
                )
            for tag in tags:
                out += await self._claim_pending(tag)
                await self._forget_consumers(tag)
            self._active.update(tags)
            self._passes[bucket] = time.monotonic() + self.full_pass_s
            self._claim.discard(bucket)
        if out:
            return out
        if not self.cluster:
            return await self._read_blocking(limit)
        await self._find()
        out = await self._read(sorted(self._active), limit)
        if not out:
            await asyncio.sleep(0.1)
        return out

    async def _find(self) -> None:
        """Cluster: add the streams hinted, and those of held buckets due a full pass."""
        now = time.monotonic()
        for bucket in list(self._held):
            if self._passes.get(bucket, 0.0) <= now:
                self._passes[bucket] = now + self.full_pass_s
                self._active.update(await self._existing(bucket))
        held = list(self._held)
        replies = await self._pipeline(
            [("SMEMBERS", keys.hint_key(self.prefix, self.app, b)) for b in held]
        )
        drops = []
        for bucket, members in zip(held, replies, strict=True):
            if isinstance(members, Exception) or not members:
                continue
            drops.append(("SREM", keys.hint_key(self.prefix, self.app, bucket), *members))
            for member in members:
                if member.isdigit() and keys.bucket_of(int(member)) == bucket:
                    self._active.add(slot_tag(int(member)))
        if drops:
            await self._pipeline(drops)

    async def _existing(self, bucket: int) -> list[str]:
        """The streams of ``bucket`` that exist (standalone: its one stream)."""
        if not self.cluster:
            return [keys.standalone_tag(bucket)]
        tags = [slot_tag(s) for s in keys.slots_of(bucket)]
        found = await self._pipeline([("EXISTS", self._stream(t)) for t in tags])
        return [t for t, n in zip(tags, found, strict=True) if n == 1]

    async def _read_blocking(self, limit: int) -> list[Message]:
        """Standalone: one XREADGROUP over the held buckets' streams, blocking up to 1 s."""
        tags = {self._stream(keys.standalone_tag(b)): keys.standalone_tag(b) for b in self._held}
        try:
            reply: Any = await self.client.xreadgroup(
                self.group, self.consumer, dict.fromkeys(tags, ">"), count=limit, block=1000
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._claim.update(self._held)  # a stream lost its group (deleted): make it again
            return []
        out: list[Message] = []
        for name, entries in _entries(reply or []):
            tag = tags.get(name if isinstance(name, bytes) else str(name).encode())
            if tag is not None:
                out += self._messages(tag, entries)
        return out

    async def _read(self, tags: Sequence[str], limit: int) -> list[Message]:
        """Cluster: a non-blocking XREADGROUP per slot stream, pipelined per node."""
        out: list[Message] = []
        replies = await self._pipeline(
            [
                (
                    "XREADGROUP",
                    "GROUP",
                    self.group,
                    self.consumer,
                    "COUNT",
                    limit,
                    "STREAMS",
                    self._stream(t),
                    ">",
                )
                for t in tags
            ]
        )
        for tag, reply in zip(tags, replies, strict=True):
            if isinstance(reply, Exception) or not reply:
                self._active.discard(tag)  # nothing new there (or no group yet)
                continue
            for _, entries in _entries(reply):
                out += self._messages(tag, entries)
        return out

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(commands), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for args in commands[i : i + CHUNK]:
                pipe.execute_command(*args)
            out += await pipe.execute(raise_on_error=False)
        return out

    async def _claim_pending(self, tag: str) -> list[Message]:
        out: list[Message] = []
        start: Any = "0-0"
        while True:
            try:
                claimed: Any = await self.client.xautoclaim(
                    self._stream(tag), self.group, self.consumer, 0, start, count=CLAIM_BATCH
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return out
            start, entries = claimed[0], claimed[1]
            out += self._messages(tag, [e for e in entries if e and e[1]])
            if start in (b"0-0", "0-0"):
                return out

    async def _forget_consumers(self, tag: str) -> None:
        """Drop the group's consumers idle past ``CONSUMER_IDLE_MS`` with nothing pending
        (nodes gone: every restart is a new consumer), so the group does not grow."""
        try:
            consumers: Any = await self.client.xinfo_consumers(self._stream(tag), self.group)
        except ResponseError:
            return
        for c in consumers:
            name, idle, pending = c.get("name"), c.get("idle", 0), c.get("pending", 1)
            if name and not pending and idle > CONSUMER_IDLE_MS:
                await self.client.xgroup_delconsumer(self._stream(tag), self.group, name)

    def _messages(self, tag: str, entries: Iterable[Any]) -> list[Message]:
        out = []
        for entry_id, fields in entries:
            ref = f"{tag} {entry_id.decode()}"
            if ref in self._taken:
                continue
            try:
                message = Message(
                    self.app, fields[b"t"].decode(), fields[b"s"], int(fields[b"at"]), ref
                )
            except (KeyError, ValueError):
                log.warning("webhooks out %s: dropped a malformed entry", self.group)
                continue
            self._taken.add(ref)
            out.append(message)
        return out

    async def done(self, message: Message) -> None:
        tag, _, entry_id = message.ref.partition(" ")
        await self.client.xack(self._stream(tag), self.group, entry_id)
        self._taken.discard(message.ref)

    async def depth(self) -> int:
        """Entries not yet read plus pending, over the streams this node reads."""
        total = 0
        if self.cluster:
            tags = sorted(self._active)
        else:
            tags = [keys.standalone_tag(b) for b in sorted(self._held)]
        replies = await self._pipeline([("XINFO", "GROUPS", self._stream(t)) for t in tags])
        for groups in replies:
            if isinstance(groups, Exception):
                continue
            for g in groups:
                if isinstance(g, list):
                    g = dict(zip(g[::2], g[1::2], strict=True))
                if g.get(b"name", g.get("name")) in (self.group, self.group.encode()):
                    lag = g.get(b"lag", g.get("lag"))
                    total += int(lag or 0) + int(g.get(b"pending", g.get("pending")) or 0)
        return total

    def dropped(self) -> int:
        return 0  # MAXLEN ~ trims without saying whether this group had read them

    async def close(self) -> None:
        # give the leases back: another node goes on at once
        for bucket in [*self._held, *self._draining]:
            try:
                await self._take(bucket, 0)
            except Exception:  # the lease runs out by itself
                break
        self._held.clear()


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """XREADGROUP's reply, as raw pipeline replies come (RESP2 list, or a dict)."""
    if isinstance(reply, dict):
        return list(reply.items())
    return [(name, entries) for name, entries in reply]
