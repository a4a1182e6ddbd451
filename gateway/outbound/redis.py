"""The Redis queue of one endpoint: its consumer group on the app's stream(s).

One node at a time delivers a stream to an endpoint: it holds the stream's lease
(``lease.lua``, renewed while it runs), so a user's messages, which share its slot's stream,
go out in ``v`` order. A node taking a lease first claims every pending entry of the group
(``XAUTOCLAIM``, idle or not: the lease says their reader died or gave up), then reads new
ones. An entry is acked (``XACK``) once delivered or given up; one whose node died before that
is delivered again by the next holder, with the same ``webhook-id``. Other nodes stand by,
retrying the lease every ``renew_s``; on Cluster the streams are per slot, so the leases (and
the work) spread over the nodes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from gateway.outbound import keys
from gateway.outbound.message import Message

log = logging.getLogger(__name__)

LEASE_MS = 5000
CLAIM_BATCH = 500

_LEASE = resources.files("gateway.backends").joinpath("lua/lease.lua").read_text()

Tags = Callable[[], Awaitable[Sequence[str | None]]]
"""The slot tags of the streams that may hold entries (``[None]``: standalone's one stream)."""


def consumer_name() -> str:
    """This process's consumer name: host, pid and a random part (a restart is a new one)."""
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"


async def _standalone() -> Sequence[str | None]:
    return [None]


class RedisSource:
    """One endpoint's consumer group, read by this node while it holds the leases."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str,
        app: str,
        group: str,
        consumer: str,
        tags: Tags = _standalone,
        lease_ms: int = LEASE_MS,
    ) -> None:
        self.client = client
        self.prefix, self.app, self.group, self.consumer = prefix, app, group, consumer
        self.lease_ms = lease_ms
        self._tags = tags
        self._lease = client.register_script(_LEASE)
        self._held: set[str | None] = set()
        self._claim: set[str | None] = set()  # leases just taken: their pending to claim
        self._renewed = 0.0
        self._taken: set[str] = set()  # refs handed out and not done: never handed out twice

    def _stream(self, tag: str | None) -> bytes:
        return keys.stream_key(self.prefix, self.app, tag)

    async def _renew(self) -> None:
        if time.monotonic() - self._renewed < self.lease_ms / 5000:
            return
        self._renewed = time.monotonic()
        held: set[str | None] = set()
        for tag in await self._tags():
            key = keys.lease_key(self.prefix, self.app, self.group, tag)
            if await self._lease(keys=[key], args=[self.consumer, self.lease_ms]):
                held.add(tag)
                if tag not in self._held:
                    self._claim.add(tag)
                    log.info("webhooks out %s: delivering stream %s", self.group, tag or "-")
        self._held = held

    async def take(self, limit: int) -> list[Message]:
        await self._renew()
        if not self._held:
            await asyncio.sleep(self.lease_ms / 5000)
            return []
        out: list[Message] = []
        for tag in list(self._claim):
            out += await self._claim_pending(tag)
            self._claim.discard(tag)
        if out:
            return out
        block = 1000 if len(self._held) == 1 else None
        for tag in self._held:
            try:
                reply: Any = await self.client.xreadgroup(
                    self.group, self.consumer, {self._stream(tag): ">"}, count=limit, block=block
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                continue  # nothing was ever queued for this endpoint there
            for _, entries in reply or ():
                out += self._messages(tag, entries)
        if not out and block is None:
            await asyncio.sleep(0.05)
        return out

    async def _claim_pending(self, tag: str | None) -> list[Message]:
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

    def _messages(self, tag: str | None, entries: Sequence[Any]) -> list[Message]:
        out = []
        for entry_id, fields in entries:
            ref = f"{tag or ''} {entry_id.decode()}"
            if ref in self._taken:
                continue
            try:
                message = Message(
                    self.app,
                    fields[b"t"].decode(),
                    fields[b"s"],
                    int(fields[b"at"]),
                    ref,
                )
            except (KeyError, ValueError):
                log.warning("webhooks out %s: dropped a malformed entry", self.group)
                continue
            self._taken.add(ref)
            out.append(message)
        return out

    async def done(self, message: Message) -> None:
        tag, _, entry_id = message.ref.partition(" ")
        await self.client.xack(self._stream(tag or None), self.group, entry_id)
        self._taken.discard(message.ref)

    async def depth(self) -> int:
        total = 0
        for tag in self._held:
            try:
                groups = await self.client.xinfo_groups(self._stream(tag))
            except ResponseError:
                continue
            for g in groups:
                if g.get("name") in (self.group, self.group.encode()):
                    total += int(g.get("lag") or 0) + int(g.get("pending") or 0)
        return total

    async def close(self) -> None:
        pass  # the lease runs out; the client is the Outbound's
