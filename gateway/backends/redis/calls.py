"""The store's calls: apply.lua packed by hand, applies coalesced, commands run per node.

``lua/apply.lua`` merges a user's events, stores and publishes in one atomic step, for several
users per call: a webhook batch is one EVALSHA on standalone Redis (up to ``MAX_USERS_PER_CALL``
users a call) and one per hash slot on Cluster, sent in one write per node (``wire``).
This packing (``Calls._run_users``) is the hot path of every webhook: the EVALSHA is written
byte by byte, platform names encoded once. Applies made in the same turn of the event loop
share one call (``Calls._queued``), each user's events still merged in one atomic step.

Webhooks out (SPEC 9): apply.lua also XADDs each published change into the stream of the
user's slot (Cluster) or of its slot's bucket (standalone), in the same atomic step; those keys,
their leases and the hints ``_hint_webhooks`` writes are in ``gateway/outbound/keys.py``.

Every command goes over the ``wire`` lanes of the client, a write per node, nodes in
parallel; ``unavailable`` turns any failure into the one exception the contract names.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.backends.redis.keys import slot_index, slot_tag
from gateway.backends.redis.lane import bulk, command
from gateway.backends.redis.scripts import APPLY, SCRIPTS
from gateway.backends.redis.wire import Wire
from gateway.errors import StoreUnavailable
from gateway.model import PresenceEvent
from gateway.outbound import keys as outbound_keys

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()


@contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn any failure inside the block into ``StoreUnavailable``.

    A failure that is not a Redis or network error is a bug (ours, or redis-py's: its Cluster
    client has raised ``AttributeError`` from connections it closed under load); it is logged
    with its traceback, and the caller still gets the one exception the contract names.
    """
    try:
        yield
    except StoreUnavailable:
        raise
    except (RedisError, RedisClusterException, OSError) as exc:
        raise StoreUnavailable(f"redis {what}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        log.error("redis %s failed unexpectedly", what, exc_info=exc)
        raise StoreUnavailable(f"redis {what}: {type(exc).__name__}: {exc}") from exc


MAX_USERS_PER_CALL = 100
"""Users in one script call: bounds how long one call holds Redis (~30 µs a user)."""

_ONLINE, _OFFLINE, _CUSTOM = bulk(b"1"), bulk(b"0"), bulk(b"c")


def _custom_args(text: str, time: int) -> bytes:
    """A custom status event's 4 values for apply.lua."""
    raw = text.encode()
    return bulk(raw) + bulk(b"%d" % time) + _CUSTOM + bulk(_json.encode(text))


_platforms: dict[str, bytes] = {}  # platform -> its bulk string; few distinct ones


def _platform(name: str) -> bytes:
    encoded = _platforms.get(name)
    if encoded is None:
        encoded = bulk(name.encode())
        if len(_platforms) < 4096:
            _platforms[name] = encoded
    return encoded


_wires: weakref.WeakKeyDictionary[Redis | RedisCluster, Wire] = weakref.WeakKeyDictionary()


def _wire(client: Redis | RedisCluster) -> Wire:
    """The lanes of ``client``, shared by every store made on it."""
    wire = _wires.get(client)
    if wire is None:
        wire = _wires[client] = Wire(client)
        wire.scripts = [script.load for script in SCRIPTS]  # for NOSCRIPT after a redirect
    return wire


_User = tuple[int, str, str, Sequence[PresenceEvent]]
"""A user in an apply.lua call: now (ms), tag, user id, events (none to sweep)."""


class _Queued(NamedTuple):
    """An apply waiting for its turn's script call: its users, and the future of their replies."""

    users: list[_User]
    future: asyncio.Future[list[list[Any]]]


class Calls:
    """What ``RedisStore`` runs its commands with (``GraceSweep`` and ``RedisCoordination``
    call these too): the apply queue, apply.lua's packing, and commands by node."""

    prefix: str
    webhooks: dict[str, bytes]
    _wire: Wire
    _index: bytes
    _windows: bytes
    _queue: list[_Queued]
    _senders: set[asyncio.Task[None]]
    _applying: int
    _cluster: bool

    async def _queued(self, users: list[_User]) -> list[list[Any]]:
        """Run ``users`` with those of every apply made in the same turn of the event loop.

        Concurrent webhooks (Tencent sends one event per request) then share one script call
        and one reply instead of paying for one each: each user's events are still merged in
        one atomic step, in the order the applies were made. If the call fails, every apply
        in it fails. With no apply in flight there is nobody to wait for: it goes at once.
        """
        if not self._queue and not self._applying:  # nothing to share a call with
            self._applying += 1
            try:
                return await self._run_users(b"apply", users)
            finally:
                self._applying -= 1
        future: asyncio.Future[list[list[Any]]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(users, future))
        if len(self._queue) == 1:  # the first this turn: send once the others have queued
            task = asyncio.create_task(self._send_queued(), name="redis-apply")
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return await future

    async def _send_queued(self) -> None:
        queued, self._queue = self._queue, []
        self._applying += 1
        try:
            replies = await self._run_users(b"apply", [u for q in queued for u in q.users])
        except BaseException as exc:
            for q in queued:
                if not q.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        q.future.set_exception(RedisConnectionError("store closed"))
                    else:
                        q.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._applying -= 1
        start = 0
        for q in queued:
            end = start + len(q.users)
            if not q.future.done():  # not cancelled
                q.future.set_result(replies[start:end])
            start = end

    async def _run_users(self, mode: bytes, users: Sequence[_User]) -> list[list[Any]]:
        """Run apply.lua for ``users`` (now, tag, user id, events), a call per node and slot.

        Returns each user's 4 values, in the order of ``users``.
        """
        keys = [f"{self.prefix}:u:{{{tag}}}".encode() for _, tag, _, _ in users]
        groups = await self._groups(keys)
        head = bulk(mode) + self._windows
        skip = len(self.prefix) + 3  # the channel is the key with ":c:" for ":u:"
        channel = self.prefix.encode() + b":c:"
        calls = []
        for node, idx in groups:
            # KEYS[1]: the call's grace index (Cluster: its slot's; a call is one slot there)
            index = self._index
            if self._cluster:
                index = slot_index(self.prefix, key_slot(keys[idx[0]])).encode()
            keyparts: list[bytes] = [bulk(index)]
            argv: list[bytes] = [head]
            events = 0
            streams: dict[bytes, bytes] = {}  # webhooks out: stream -> its hook arg (apply.lua)
            stream_keys: list[bytes] = []
            for i in idx:
                now, tag, user, evs = users[i]
                key, name = keys[i], _json.encode(user)
                clock, count = b"%d" % now, b"%d" % len(evs)
                chan = channel + key[skip:]
                keyparts.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(chan), chan))
                hook = b""
                if self.webhooks:
                    hook = self._hook_arg(tag, keys[i], len(idx), streams, stream_keys)
                argv.append(
                    b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                    % (len(name), name, len(clock), clock, len(hook), hook, len(count), count)
                )
                events += len(evs)
                for ev in evs:
                    if ev.custom is not None:  # apply.lua: text, time, "c", the text as JSON
                        argv.append(_custom_args(ev.custom, ev.time))
                        continue
                    device, time = ev.device.encode(), b"%d" % ev.time
                    platform = _platforms.get(ev.platform) or _platform(ev.platform)
                    argv.append(
                        b"$%d\r\n%b\r\n$%d\r\n%b\r\n%b%b"
                        % (
                            len(device),
                            device,
                            len(time),
                            time,
                            _ONLINE if ev.online else _OFFLINE,
                            platform,
                        )
                    )
            keyparts.extend(map(bulk, stream_keys))
            nkeys = 1 + 2 * len(idx) + len(stream_keys)
            nargs = 3 + nkeys + 8 + 4 * len(idx) + 4 * events
            calls.append(
                (
                    node,
                    b"*%d\r\n%b%b%b%b"
                    % (
                        nargs,
                        APPLY.head,
                        bulk(b"%d" % nkeys),
                        b"".join(keyparts),
                        b"".join(argv),
                    ),
                )
            )
        replies = await self._run_calls(calls)
        out: list[list[Any]] = [[]] * len(users)
        for (_, idx), flat in zip(groups, replies, strict=True):
            for j, i in enumerate(idx):
                out[i] = flat[4 * j : 4 * j + 4]
        return out

    def _hook_arg(
        self,
        tag: str,
        key: bytes,
        users: int,
        streams: dict[bytes, bytes],
        stream_keys: list[bytes],
    ) -> bytes:
        """apply.lua's hook arg of the user ``tag``: its stream's keys, added once a call."""
        app = tag.partition("/")[0]
        spec = self.webhooks.get(app)
        if spec is None:
            return b""
        slot = key_slot(key)
        if self._cluster:  # the stream of the user's slot
            where = slot_tag(slot)
        else:  # that of its slot's bucket: the work still spreads over the leases
            where = outbound_keys.standalone_tag(outbound_keys.bucket_of(slot))
        stream = outbound_keys.stream_key(self.prefix, app, where)
        arg = streams.get(stream)
        if arg is None:
            stream_keys += [stream, outbound_keys.groups_key(self.prefix, app, where)]
            k = 2 + 2 * users + len(stream_keys) - 2  # KEYS index (1-based) of the stream
            arg = streams[stream] = b"%d,%b" % (k, spec)
        return arg

    async def _hint_webhooks(self, users: Sequence[_User], replies: Sequence[list[Any]]) -> None:
        """Cluster, best-effort: hint the slots whose webhook streams got entries (see
        gateway/outbound/redis.py); a lost hint waits for the workers' full pass."""
        hints: dict[bytes, set[bytes]] = {}
        for (_, tag, _, _), reply in zip(users, replies, strict=True):
            app = tag.partition("/")[0]
            if reply[2] is not None and app in self.webhooks:
                slot = key_slot(tag.encode())
                key = outbound_keys.hint_key(self.prefix, app, outbound_keys.bucket_of(slot))
                hints.setdefault(key, set()).add(b"%d" % slot)
        if not hints:
            return
        try:
            with unavailable("webhook hint"):
                calls = [(await self._node(k), command(b"SADD", k, *v)) for k, v in hints.items()]
                await self._run_calls(calls)
        except StoreUnavailable as exc:
            log.warning("webhook hint not written; the full pass will find it: %s", exc)

    async def _node(self, key: bytes) -> str:
        """The node serving ``key`` ("" on standalone Redis)."""
        slots = await self._wire.topology()
        return slots[key_slot(key)] if slots else ""

    async def _groups(
        self, keys: Sequence[bytes], size: int = MAX_USERS_PER_CALL
    ) -> list[tuple[str, list[int]]]:
        """``keys`` (by index) in calls of at most ``size``: one hash slot each on Cluster."""
        slots = await self._wire.topology()
        if not slots:
            every = list(range(len(keys)))
            return [("", every[i : i + size]) for i in range(0, len(every), size)]
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(key_slot(key), []).append(i)
        return [
            (slots[slot], idx[i : i + size])
            for slot, idx in by_slot.items()
            for i in range(0, len(idx), size)
        ]

    async def _run_calls(self, calls: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Run (node, command) ``calls``: a write per node, nodes in parallel; replies in order."""
        by_node: dict[str, list[int]] = {}
        for i, (node, _) in enumerate(calls):
            by_node.setdefault(node, []).append(i)
        replies: list[Any] = [None] * len(calls)

        async def run(node: str, idx: list[int]) -> None:
            got = await self._run_node(node, [calls[i][1] for i in idx])
            for i, reply in zip(idx, got, strict=True):
                replies[i] = reply

        if len(by_node) == 1:
            [(node, idx)] = by_node.items()
            await run(node, idx)
        else:
            await asyncio.gather(*(run(node, idx) for node, idx in by_node.items()))
        return replies

    async def _run_node(self, node: str, commands: list[bytes]) -> list[Any]:
        """Run ``commands`` on one node in one write; raise the first error reply.

        A node that lost its script cache (restart, failover) answers NOSCRIPT without running
        anything: load the scripts there and run those commands again.
        """
        replies = await self._wire.run(node, commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for reply in await self._wire.run(node, [script.load for script in SCRIPTS]):
                if isinstance(reply, Exception):
                    raise reply
            again = await self._wire.run(node, [commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
