"""The Redis backend: the presence map in Redis or Redis Cluster, merged atomically in Lua.

Layout (``<prefix>`` is ``pg`` unless configured; ``<tag>`` is ``<app>/<user>`` with ``%``, ``{``
and ``}`` of the user id percent-escaped, so the whole tag is the Cluster hash tag and a user's
key and channel always share a slot)::

    <prefix>:u:{<tag>}   hash  d:<device> -> "<time>,<+|->,<base>,<ons>,<offs>,<platform>"
                                  a device record (``DeviceRecord``; platform last)
                               a, a:<platform> -> the user's and each platform's anchor
                                  of the compacted history, "<start>,<end>" (``model.compact``)
                               s -> the last published state (JSON)   v -> its version
                               g -> while an offline waits out the grace: when it ends (ms)
                               c -> the custom status, "<time>,<text as JSON>" (the winner
                                  by time, then text; ``model.merge_custom``; "" cleared)
    <prefix>:c:{<tag>}   shard channel: every state published for the user (SPUBLISH)

    <prefix>:grace       sorted set  <tag> -> when the user's offline grace ends (ms)
                         (standalone Redis: the one grace index)
    <prefix>:grace:{<s>} the same, on Cluster: one index per hash slot, holding the users of
                         that slot; ``<s>`` is a short tag hashing to the slot (``slot_tag``)
    <prefix>:gh:{<s>}    sorted set  <slot> -> the earliest grace end in that slot's index: a
                         Cluster primary's hint of its non-empty indexes (``<s>`` the tag of
                         the lowest slot it serves)

Webhooks out (SPEC 9): apply.lua also XADDs each published change into the stream of the
user's slot (Cluster) or of its slot's bucket (standalone), in the same atomic step; those keys,
their leases and the hints ``_hint_webhooks`` writes are in ``gateway/outbound/keys.py``.

``lua/apply.lua`` merges a user's events, stores and publishes in one atomic step, for several
users per call: a webhook batch is one EVALSHA on standalone Redis (up to ``MAX_USERS_PER_CALL``
users a call) and one per hash slot on Cluster, sent in one write per node (``redis_wire``).

Offline grace: apply.lua marks a user whose last device went offline (field ``g`` of its hash)
instead of publishing, and writes its grace index entry in the same atomic step (the index of
the call: one key on standalone, the slot's on Cluster), so no failure can leave a marked user
that no sweep finds. ``sweep`` (every node runs it) takes the due entries and runs apply.lua in
"sweep" mode per user: the hash, not the index, decides, atomically, and the same step removes
the entry (or moves it to the hash's ``g``), so each grace ends with exactly one publish however
many nodes sweep. On Cluster the sweep finds the non-empty slot indexes through the primaries'
hints, written best-effort after the apply, plus a slow pass over every slot's index
(``FULL_PASS_S``): a lost hint delays an offline by at most that, never loses it. Each slot's
index lives on its own primary, so the sweep's work spreads with the users. The single index
of older versions (``<prefix>:grace`` on Cluster) is still drained, for rolling upgrades.

Expiry: while a user has an online device the key never expires; once every device is offline
it expires ``last_seen_retention_s`` after the user's last-seen time (its latest offline
record), the published state and its last-seen with it; tombstones go before that, at the next
apply past ``session_retention_s``. ``MemoryStore`` forgets users at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import itertools
import logging
import random
import string
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from time import monotonic
from typing import Any, NamedTuple

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from gateway.backends.base import ApplyResult, MessageHandler, PresenceSettings, ResetHandler
from gateway.backends.memory import clock_ms
from gateway.backends.redis.coordination import RedisCoordination
from gateway.backends.redis.wire import Wire, bulk, command, redact
from gateway.errors import StoreUnavailable
from gateway.model import (
    MAX_MARKS,
    DeviceRecord,
    PresenceEvent,
    UserState,
    state_decoder,
)
from gateway.outbound import keys as outbound_keys

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0  # webhooks get ~2 s in all (Tencent): fail fast, answer 503
SOCKET_TIMEOUT_S = 2.0
SWEEP_BATCH = 500  # grace entries per sweep round trip
FULL_PASS_S = 5.0  # Cluster: every slot's grace index is looked at once in this long


def _lua(name: str) -> str:
    return resources.files("gateway.backends.redis").joinpath(f"lua/{name}").read_text()


_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})
_json = msgspec.json.Encoder()


def user_tag(app: str, user: str) -> str:
    """The hash tag of a user's key and channel: ``app/user`` with no ``{`` or ``}`` left."""
    return f"{app}/{user.translate(_ESCAPES)}"


def user_key(prefix: str, app: str, user: str) -> str:
    """The hash holding a user's device records and last published state."""
    return f"{prefix}:u:{{{user_tag(app, user)}}}"


def user_channel(prefix: str, app: str, user: str) -> str:
    """The shard channel a user's states are published on."""
    return f"{prefix}:c:{{{user_tag(app, user)}}}"


def grace_index(prefix: str) -> str:
    """The sorted set of users whose offline waits out the grace, by when it ends.

    The one index on standalone Redis; on Cluster, where older versions used it, it is only
    drained (see ``slot_index``).
    """
    return f"{prefix}:grace"


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For each Cluster hash slot, a short tag (at most 4 characters) that hashes to it."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    left = REDIS_CLUSTER_HASH_SLOTS
    alphabet = string.digits + string.ascii_lowercase
    for size in itertools.count(1):
        for chars in itertools.product(alphabet, repeat=size):
            tag = "".join(chars)
            slot = key_slot(tag.encode())
            if tags[slot] is None:
                tags[slot] = tag
                left -= 1
                if not left:
                    return tuple(t for t in tags if t is not None)
    raise AssertionError("unreachable")


def slot_tag(slot: int) -> str:
    """A short tag that hashes to ``slot``."""
    return slot_tags()[slot]


def slot_index(prefix: str, slot: int) -> str:
    """On Cluster, the grace index of the users of hash slot ``slot`` (in that slot)."""
    return f"{prefix}:grace:{{{slot_tag(slot)}}}"


def hint_key(prefix: str, slot: int) -> str:
    """On Cluster, the hint set of the primary whose lowest slot is ``slot`` (in that slot)."""
    return f"{prefix}:gh:{{{slot_tag(slot)}}}"


def parse_tag(tag: str | bytes) -> tuple[str, str] | None:
    """``(app, user)`` of a tag made by ``user_tag``; None when it is not one."""
    if isinstance(tag, bytes):
        tag = tag.decode()
    app, sep, escaped = tag.partition("/")
    if not sep or not app:
        return None
    parts = escaped.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        out.append(chr(int(part[:2], 16)) + part[2:])
    return app, "".join(out)


def _parse_member(tag: bytes) -> tuple[str, str] | None:
    """``parse_tag`` of a grace index member; None for one this store did not write."""
    try:
        return parse_tag(tag)
    except (ValueError, IndexError):  # UnicodeDecodeError included
        return None


def parse_channel(prefix: str, channel: str | bytes) -> tuple[str, str] | None:
    """``(app, user)`` of a channel made by ``user_channel``; None when it is not one."""
    if isinstance(channel, bytes):
        channel = channel.decode()
    head = f"{prefix}:c:{{"
    if not channel.startswith(head) or not channel.endswith("}"):
        return None
    return parse_tag(channel[len(head) : -1])


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


def _times(times: tuple[int, ...]) -> str:
    return ";".join(map(str, times))


def encode_record(rec: DeviceRecord) -> str:
    """A device record as apply.lua stores it: ``time,+|-,base,on1;on2;…,off1;off2;…,platform``."""
    base = "" if rec.base is None else str(rec.base)
    flag = "+" if rec.online else "-"
    return f"{rec.time},{flag},{base},{_times(rec.ons)},{_times(rec.offs)},{rec.platform}"


def _parse_times(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(";") if t)


def decode_record(raw: bytes | str) -> DeviceRecord:
    """The record ``encode_record`` made, or one of the older forms (see apply.lua)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    head = text.split(",", 2)
    if head[1] in ("+", "-"):
        time, flag, base, ons, offs, platform = text.split(",", 5)
        return DeviceRecord(
            int(time),
            flag == "+",
            platform,
            _parse_times(ons),
            _parse_times(offs),
            int(base) if base else None,
        )
    parts = text.split(",", 4)
    at, online = int(parts[0]), parts[1] == "1"
    if len(parts) == 3:  # time,online,platform: the record of that one event
        return DeviceRecord(at, online, parts[2], (at,) if online else (), () if online else (at,))
    last_off, old_ons, old_platform = parts[2:]  # time,online,off,ons,platform
    old_offs = (int(last_off),) if last_off else ()
    return DeviceRecord(at, online, old_platform, _parse_times(old_ons), old_offs)


class _Script:
    """A Lua script of ``lua/``: its source, its SHA1, and the start of an EVALSHA of it."""

    def __init__(self, name: str) -> None:
        self.source = _lua(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.load = command(b"SCRIPT", b"LOAD", self.source.encode())
        self.head = bulk(b"EVALSHA") + bulk(self.sha.encode())

    def call(self, keys: Sequence[bytes], args: Sequence[bytes] = ()) -> bytes:
        """The EVALSHA command of ``keys`` and ``args``."""
        parts = [bulk(b"%d" % len(keys)), *map(bulk, keys), *map(bulk, args)]
        return b"*%d\r\n%b%b" % (len(parts) + 2, self.head, b"".join(parts))


APPLY = _Script("apply.lua")
GET = _Script("get.lua")
GRACE_DONE = _Script("grace_done.lua")
SCRIPTS = (APPLY, GET, GRACE_DONE)

MAX_USERS_PER_CALL = 100
"""Users in one script call: bounds how long one call holds Redis (~30 µs a user)."""

_ONLINE, _OFFLINE, _CUSTOM = bulk(b"1"), bulk(b"0"), bulk(b"c")


def _custom_args(text: str, time: int) -> bytes:
    """A custom status event's 4 values for apply.lua."""
    raw = text.encode()
    return bulk(raw) + bulk(b"%d" % time) + _CUSTOM + bulk(_json.encode(text))


_PING = command(b"PING")
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


class RedisStore(RedisCoordination):
    """The presence map in Redis (standalone or Cluster); see the module doc for the layout.

    Commands go over ``redis_wire`` lanes, not redis-py's pipelines: see that module's doc. The
    redis-py ``client`` supplies the connection settings and the Cluster topology.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        settings: PresenceSettings,
        prefix: str = "pg",
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"key prefix must be non-empty without braces: {prefix!r}")
        self.client = client
        self.settings = settings
        self.prefix = prefix
        self._wire = _wire(client)
        self._index = grace_index(prefix).encode()
        max_age = settings.max_event_age_s * 1000
        retention = settings.session_retention_s * 1000
        windows = (
            max_age,
            retention,
            settings.last_seen_retention_s * 1000,
            settings.offline_grace_ms,
            MAX_MARKS,
            settings.future_skew_s * 1000,
            settings.max_devices_per_user,
        )
        self._windows = b"".join(bulk(b"%d" % n) for n in windows)  # apply.lua's ARGV[2..8]
        self._queue: list[_Queued] = []  # applies waiting for the next call (see _queued)
        self._senders: set[asyncio.Task[None]] = set()
        self._applying = 0  # apply calls sent and not answered yet
        self._closed = False
        self._cluster = isinstance(client, RedisCluster)
        self.full_pass_s = FULL_PASS_S  # see sweep
        self._pass_slot = random.randrange(REDIS_CLUSTER_HASH_SLOTS)  # the full pass's cursor
        self._pass_at = monotonic()  # when the full pass last advanced
        self._hint_cache: tuple[list[str], dict[str, bytes]] | None = None
        # webhooks out (gateway/outbound): app -> "<maxlen>,<types>,<groups>" for apply.lua
        self.webhooks: dict[str, bytes] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool,
        settings: PresenceSettings,
        prefix: str = "pg",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        socket_timeout: float = SOCKET_TIMEOUT_S,
    ) -> RedisStore:
        """A store on ``url``; with ``cluster`` the URL names any one node of the cluster.

        Connections are made lazily: constructing the store never fails on a down Redis.
        """
        return cls(
            connect(
                url, cluster=cluster, connect_timeout=connect_timeout, socket_timeout=socket_timeout
            ),
            settings=settings,
            prefix=prefix,
        )

    def key(self, app: str, user: str) -> str:
        return user_key(self.prefix, app, user)

    def channel(self, app: str, user: str) -> str:
        return user_channel(self.prefix, app, user)

    async def apply(
        self, app: str, events: Sequence[PresenceEvent], now_ms: int | None = None
    ) -> ApplyResult:
        now = clock_ms() if now_ms is None else now_ms
        by_user: dict[str, list[PresenceEvent]] = {}
        for ev in events:
            evs = by_user.get(ev.user)
            if evs is None:
                by_user[ev.user] = [ev]
            else:
                evs.append(ev)
        result = ApplyResult(published=[])
        if not by_user:
            return result
        users: list[_User] = [(now, user_tag(app, u), u, evs) for u, evs in by_user.items()]
        hints: dict[int, int] = {}  # Cluster: slot -> the earliest grace end begun there
        with unavailable("apply"):
            replies = await self._queued(users)
            for (_, tag, _, _), (applied, ignored, state, grace_end) in zip(
                users, replies, strict=True
            ):
                result.applied += applied
                result.ignored += ignored
                if state is not None:
                    result.published.append(state_decoder.decode(state))
                if grace_end is not None and self._cluster:
                    slot = key_slot(tag.encode())  # the tag is the key's whole hash tag
                    hints[slot] = min(grace_end, hints.get(slot, grace_end))
        if hints:
            await self._hint(hints)
        if self.webhooks and self._cluster:
            await self._hint_webhooks(users, replies)
        return result

    async def sweep(self, now_ms: int | None = None) -> int:
        """Publish the offlines whose grace ended (see the module doc).

        Standalone: the due entries of the one index. Cluster: those of the old single index
        (rolling upgrades), of the slots the primaries' hints name, and of the slots of this
        call's share of the full pass (with the grace on), whose indexes are hinted again.
        """
        now = clock_ms() if now_ms is None else now_ms
        with unavailable("sweep"):
            if not self._cluster:
                return await self._sweep_indexes(now, [("", self._index)])
            slots = await self._wire.topology()
            assert slots
            published = await self._sweep_indexes(
                now, [(slots[key_slot(self._index)], self._index)], legacy=True
            )
            due = await self._hinted(now)
            if self.settings.offline_grace_ms > 0:  # else no new entries: hints cover the old
                due |= await self._full_pass(slots)
            if not due:
                return published
            indexes = [(slots[slot], slot_index(self.prefix, slot).encode()) for slot in due]
            published += await self._sweep_indexes(now, indexes)
            firsts = await self._run_calls(
                [
                    (node, command(b"ZRANGE", key, b"0", b"0", b"WITHSCORES"))
                    for node, key in indexes
                ]
            )
        ends = {slot: int(float(f[1])) for slot, f in zip(due, firsts, strict=True) if f}
        if ends:
            await self._hint(ends)  # the slots still waiting, for the next sweeps
        return published

    async def get(self, app: str, users: Sequence[str]) -> list[UserState]:
        if not users:
            return []
        keys = [self.key(app, user).encode() for user in users]
        with unavailable("get"):
            groups = await self._groups(keys)
            # A key alone in its slot (the rule on Cluster) costs Redis less as a plain HGET.
            replies = await self._run_calls(
                [
                    (node, GET.call([keys[i] for i in idx]))
                    if len(idx) > 1
                    else (node, command(b"HGET", keys[idx[0]], b"s"))
                    for node, idx in groups
                ]
            )
        raw: list[bytes | None] = [None] * len(users)
        for (_, idx), states in zip(groups, replies, strict=True):
            if len(idx) == 1:
                raw[idx[0]] = states
                continue
            for i, state in zip(idx, states, strict=True):
                raw[i] = state
        return [
            UserState(user) if state is None else state_decoder.decode(state)
            for user, state in zip(users, raw, strict=True)
        ]

    async def records(self, app: str, user: str) -> dict[str, DeviceRecord]:
        key = self.key(app, user).encode()
        with unavailable("records"):
            [flat] = await self._run_node(await self._node(key), [command(b"HGETALL", key)])
        return {
            field[2:].decode(): decode_record(value)
            for field, value in zip(flat[::2], flat[1::2], strict=True)
            if field.startswith(b"d:")
        }

    async def ping(self) -> None:
        with unavailable("ping"):
            nodes = await self._wire.primaries()
            await self._run_calls([(node, _PING) for node in nodes])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        senders = list(self._senders)
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await self._wire.close()
        await self.client.aclose()

    # the calls

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

    async def _sweep_indexes(
        self, now: int, indexes: Sequence[tuple[str, bytes]], *, legacy: bool = False
    ) -> int:
        """Sweep the due entries of grace ``indexes`` (node, key); return the states published.

        apply.lua removes each entry it sweeps from the user's own index (or moves it to the
        hash's ``g``); entries of the ``legacy`` index, which is nobody's own on Cluster, are
        then dropped if unchanged since read (``grace_done.lua``).
        """
        published = 0
        todo = list(indexes)
        while todo:
            reads = await self._run_calls(
                [
                    (
                        node,
                        command(
                            b"ZRANGEBYSCORE",
                            index,
                            b"-inf",
                            b"%d" % now,
                            b"LIMIT",
                            b"0",
                            b"%d" % SWEEP_BATCH,
                            b"WITHSCORES",
                        ),
                    )
                    for node, index in todo
                ]
            )
            users: list[_User] = []
            cleanup: list[tuple[str, bytes]] = []
            more = []
            for (node, index), flat in zip(todo, reads, strict=True):
                entries = list(zip(flat[::2], flat[1::2], strict=True))
                strays = []
                for tag, _ in entries:
                    parsed = _parse_member(tag)
                    if parsed is None:
                        strays.append(tag)  # not a tag this store wrote: sweeps nothing
                    else:
                        users.append((now, tag.decode(), parsed[1], ()))
                if legacy and entries:
                    done = [part for entry in entries for part in entry]
                    cleanup.append((node, GRACE_DONE.call([index], done)))
                elif strays:
                    cleanup.append((node, command(b"ZREM", index, *strays)))
                if len(entries) == SWEEP_BATCH:
                    more.append((node, index))
            if users:
                replies = await self._run_users(b"sweep", users)
                published += sum(state is not None for _, _, state, _ in replies)
                if self.webhooks and self._cluster:
                    await self._hint_webhooks(users, replies)
            if cleanup:
                await self._run_calls(cleanup)
            todo = more
        return published

    async def _hinted(self, now: int) -> set[int]:
        """Cluster: the slots the primaries' hints say are due, their hints taken down.

        A hint is dropped only if unchanged since read (``grace_done.lua``), and before its
        index is read: a grace begun meanwhile is either seen in the index or hinted anew.
        """
        keys = await self._hint_keys()
        reads = await self._run_calls(
            [
                (
                    node,
                    command(
                        b"ZRANGEBYSCORE",
                        key,
                        b"-inf",
                        b"%d" % now,
                        b"LIMIT",
                        b"0",
                        b"%d" % SWEEP_BATCH,
                        b"WITHSCORES",
                    ),
                )
                for node, key in keys.items()
            ]
        )
        due: set[int] = set()
        drops = []
        for (node, key), flat in zip(keys.items(), reads, strict=True):
            if flat:
                drops.append((node, GRACE_DONE.call([key], flat)))
                due.update(int(slot) for slot in flat[::2] if slot.isdigit())
        if drops:
            await self._run_calls(drops)
        return {slot for slot in due if slot < REDIS_CLUSTER_HASH_SLOTS}

    async def _full_pass(self, slots: Sequence[str]) -> set[int]:
        """Cluster: of this call's share of the full pass, the slots whose index has entries.

        The pass goes round every slot once per ``full_pass_s`` whatever the sweep interval:
        each call looks at as many slots as the time since the last call is worth.
        """
        at = monotonic()
        count = min(
            REDIS_CLUSTER_HASH_SLOTS,
            int((at - self._pass_at) / self.full_pass_s * REDIS_CLUSTER_HASH_SLOTS),
        )
        if count <= 0:
            return set()
        self._pass_at = at
        first, self._pass_slot = (
            self._pass_slot,
            (self._pass_slot + count) % REDIS_CLUSTER_HASH_SLOTS,
        )
        share = [(first + i) % REDIS_CLUSTER_HASH_SLOTS for i in range(count)]
        found = await self._run_calls(
            [(slots[s], command(b"EXISTS", slot_index(self.prefix, s).encode())) for s in share]
        )
        return {slot for slot, exists in zip(share, found, strict=True) if exists}

    async def _hint(self, ends: dict[int, int]) -> None:
        """Cluster, best-effort: hint slot -> earliest grace end to the slot's primary.

        A hint only speeds the sweep up; one lost (this write failing, the process dying
        first) is found by the full pass. So a failure here is logged, never raised.
        """
        try:
            with unavailable("grace hint"):
                slots = await self._wire.topology()
                assert slots
                keys = await self._hint_keys()
                by_node: dict[str, list[bytes]] = {}
                for slot, end in ends.items():
                    by_node.setdefault(slots[slot], []).extend((b"%d" % end, b"%d" % slot))
                await self._run_calls(
                    [
                        (node, command(b"ZADD", keys[node], b"LT", *args))
                        for node, args in by_node.items()
                        if node in keys
                    ]
                )
        except StoreUnavailable as exc:
            log.warning("grace hint not written; the full pass will find it: %s", exc)

    async def _hint_keys(self) -> dict[str, bytes]:
        """Cluster: each primary's hint key, in the lowest slot it serves."""
        slots = await self._wire.topology()
        assert slots
        cached = self._hint_cache
        if cached is None or cached[0] is not slots:
            lowest: dict[str, int] = {}
            for slot, node in enumerate(slots):
                lowest.setdefault(node, slot)
            keys = {node: hint_key(self.prefix, slot).encode() for node, slot in lowest.items()}
            cached = self._hint_cache = (slots, keys)
        return cached[1]

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


    async def claim_request(self, app: str, key: str, digest: bytes, ttl_ms: int) -> bool:
        """One ``SET NX GET PX`` (Redis >= 7.0) on ``<prefix>:n:{<app>/<key>}`` (its own slot)."""
        name = f"{self.prefix}:n:{{{app}/{key}}}".encode()
        claim = command(b"SET", name, digest, b"NX", b"GET", b"PX", b"%d" % max(ttl_ms, 1))
        with unavailable("claim"):
            [held] = await self._run_node(await self._node(name), [claim])
        return held is None or held == digest

def connect(
    url: str,
    *,
    cluster: bool,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    socket_timeout: float | None = SOCKET_TIMEOUT_S,
) -> Redis | RedisCluster:
    """A lazily connecting client for ``url``, with short timeouts and one quick retry."""
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        # One immediate retry on a dropped connection (a pooled connection that went stale in
        # a restart); none on a timeout: the webhook waiting has a 2 s budget.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


# -- the feed: sharded pub/sub ---------------------------------------------------------------

PING_EVERY_S = 5.0  # a feed silent this long gets a PING; silent twice as long is dead
SUBSCRIBE_TIMEOUT_S = 2.0
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 5.0


class FeedLost(Exception):
    """A pub/sub connection stopped answering, or the feed could not be restored in time."""


SlotOf = Callable[[bytes], int]


class _NodeFeed:
    """One pub/sub connection to one Redis node."""

    def __init__(self, name: str, conn: Connection) -> None:
        self.name = name
        self.conn = conn
        # SUNSUBSCRIBE replies still due per channel: a reply we asked for is not a drop,
        # even when the channel is wanted again by the time it arrives (unwatch, re-watch)
        self.unsubscribing: dict[bytes, int] = {}

    async def send(self, command: str, channels: Sequence[bytes], slot_of: SlotOf) -> None:
        """Send ``command`` for ``channels``: one command per hash slot, in one write.

        Redis Cluster refuses a sharded (un)subscribe whose channels span slots; standalone
        (``slot_of`` constant) takes them all in one command.
        """
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(slot_of(channel), []).append(channel)
        packed = self.conn.pack_commands([(command, *group) for group in by_slot.values()])
        await self.conn.send_packed_command(packed, check_health=False)


class RedisBroker:
    """The feed of published states from Redis sharded pub/sub (standalone or Cluster).

    One pub/sub connection per node (standalone: one; Cluster: one per primary a wanted
    channel lives on, opened as nodes appear), each read by its own task under the listener
    that ``start`` creates and ``close`` ends. Channels follow their slot: when a node drops
    channels (its slot moved: resharding, failover) or its connection fails, those channels
    are subscribed again where the re-read topology (or the node's MOVED reply) says they
    live, with capped jittered backoff while no node takes them, the other connections
    untouched; once all are confirmed, the reset handler runs, as publishes may have been
    missed meanwhile. Anything else goes wrong: every connection is made again, and resets.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: bool,
        prefix: str = "pg",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        ping_every: float = PING_EVERY_S,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self.ping_every = ping_every
        self._wanted: set[bytes] = set()
        self._feeds: dict[str, _NodeFeed] = {}
        self._where: dict[bytes, str] = {}  # channel -> the feed it is (being) subscribed on
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}  # SSUBSCRIBE awaited
        # channels to subscribe again, each with the node a MOVED reply named (or None: ask
        # the topology); ``_awaiting``: sent again, not confirmed yet
        self._pending: dict[bytes, str | None] = {}
        self._awaiting: set[bytes] = set()
        self._changed = asyncio.Event()  # pending or awaiting changed
        self._missed = False  # a subscribed channel was lost: reset once restored
        self._setbacks = 0  # rerouting rounds that failed since the last progress
        self._fresh = False  # the topology was just read: the next round need not again
        self._slots: list[str] = []  # Cluster: the node of each hash slot, as last read
        self._topology: RedisCluster | None = None
        self._options: dict[str, Any] = {}
        self._conn_class: type[Connection] = Connection
        self._standalone = ""  # standalone: the server's address, its feed's name
        self._group: asyncio.TaskGroup | None = None
        self._live = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_message: MessageHandler | None = None
        self._on_reset: ResetHandler | None = None
        self.resets = 0  # feed losses recovered from, for tests and metrics
        self._failures = 0  # connection attempts failed in a row
        self._degraded = False  # a loss was logged; the next restore logs once too

    @classmethod
    def from_url(cls, url: str, *, cluster: bool, prefix: str = "pg") -> RedisBroker:
        """A broker on ``url``; with ``cluster`` the URL names any one node of the cluster."""
        return cls(url, cluster=cluster, prefix=prefix)

    @property
    def live(self) -> bool:
        """Whether every wanted channel's node is connected (channels moving aside)."""
        return self._live.is_set()

    def set_handlers(self, on_message: MessageHandler, on_reset: ResetHandler) -> None:
        self._on_message = on_message
        self._on_reset = on_reset

    async def start(self) -> None:
        """Start the listener; return once the feed is live or its first attempt failed."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="redis-broker-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await self._live.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wanted.clear()

    async def subscribe(self, app: str, users: Sequence[str]) -> None:
        """Subscribe ``users``; return once Redis confirmed every subscription.

        Raises ``StoreUnavailable`` when the feed is down or Redis does not confirm in time;
        the users stay wanted, so the next reconnect subscribes them (and resets).
        """
        channels = [user_channel(self.prefix, app, u).encode() for u in users]
        self._wanted.update(channels)
        if not self._live.is_set():
            raise StoreUnavailable("redis feed is down")
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        by_feed: dict[str, list[bytes]] = {}
        for channel in channels:
            by_feed.setdefault(self._route(channel), []).append(channel)
            fut: asyncio.Future[None] = loop.create_future()
            self._confirm.setdefault(channel, []).append(fut)
            waits.append(fut)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                for name, group in by_feed.items():
                    feed = self._feeds.get(name)
                    if feed is None:  # a node not connected yet: the rerouting opens it
                        self._repend(group, name)
                        continue
                    for channel in group:
                        self._where[channel] = name
                    await feed.send("SSUBSCRIBE", group, self._slot_of)
                await asyncio.gather(*waits)
        except (TimeoutError, RedisError, OSError, StoreUnavailable) as exc:
            for fut in waits:
                fut.cancel()
            for channel in channels:
                left = [f for f in self._confirm.get(channel, ()) if not f.done()]
                if left:
                    self._confirm[channel] = left
                else:
                    self._confirm.pop(channel, None)
            reason = redact(f"{type(exc).__name__}: {exc}", self.url)
            raise StoreUnavailable(f"redis subscribe: {reason}") from exc

    async def unsubscribe(self, app: str, users: Sequence[str]) -> None:
        """Stop delivering ``users`` at once; tell Redis without waiting for its answer."""
        channels = [user_channel(self.prefix, app, u).encode() for u in users]
        self._wanted.difference_update(channels)
        by_feed: dict[str, list[bytes]] = {}
        for channel in channels:
            self._pending.pop(channel, None)
            name = self._where.pop(channel, None)
            if name is not None:
                by_feed.setdefault(name, []).append(channel)
        try:
            for name, group in by_feed.items():
                feed = self._feeds.get(name)
                if feed is not None:
                    for channel in group:
                        feed.unsubscribing[channel] = feed.unsubscribing.get(channel, 0) + 1
                    await feed.send("SUNSUBSCRIBE", group, self._slot_of)
        except (RedisError, OSError) as exc:  # the reader notices the connection is gone
            reason = redact(f"{type(exc).__name__}: {exc}", self.url)
            raise StoreUnavailable(f"redis unsubscribe: {reason}") from exc

    # routing

    def _slot_of(self, channel: bytes) -> int:
        return key_slot(channel) if self.cluster else 0

    def _route(self, channel: bytes) -> str:
        """The node ``channel`` lives on, as last read (standalone: the one server)."""
        return self._slots[key_slot(channel)] if self.cluster else self._standalone

    def _repend(self, channels: Sequence[bytes], node: str | None) -> None:
        """Have the rerouting subscribe ``channels`` (at ``node`` if known) again."""
        for channel in channels:
            if channel in self._wanted:
                self._where.pop(channel, None)
                self._awaiting.discard(channel)
                self._pending[channel] = node
        self._changed.set()

    async def _read_topology(self) -> None:
        """Cluster: re-read which node serves each slot."""
        if not self.cluster:
            return
        if self._topology is None:
            self._topology = RedisCluster.from_url(
                self.url, socket_connect_timeout=self.connect_timeout, socket_timeout=2.0
            )
            await self._topology.initialize()
        else:
            await self._topology.nodes_manager.initialize()
        manager = self._topology.nodes_manager
        self._slots = [
            manager.get_node_from_slot(slot).name for slot in range(REDIS_CLUSTER_HASH_SLOTS)
        ]

    async def _feed(self, name: str) -> _NodeFeed:
        """The feed of node ``name`` ("host:port"), connected now if it was not."""
        feed = self._feeds.get(name)
        if feed is not None:
            return feed
        group = self._group
        if group is None:
            raise FeedLost("the feed is closing")
        conn = await self._open(name)
        feed = self._feeds.get(name)
        if feed is not None:  # opened meanwhile by another caller
            await conn.disconnect(nowait=True)
            return feed
        feed = self._feeds[name] = _NodeFeed(name, conn)
        group.create_task(self._read(feed), name=f"redis-feed {name}")
        return feed

    async def _open(self, name: str) -> Connection:
        """A pub/sub connection to node ``name``, with the URL's settings (TLS, AUTH)."""
        options = dict(self._options)
        if name != options.get("path"):
            host, _, port = name.rpartition(":")
            options.update(host=host, port=int(port))
        conn = self._conn_class(**options)
        try:
            async with asyncio.timeout(self.connect_timeout * 2):
                await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise FeedLost(f"timeout connecting to {name}") from None
            raise
        return conn

    # the listener

    async def _listen(self) -> None:
        """Connect, read, and on any loss reconnect with backoff, forever (until cancelled)."""
        first = True
        while True:
            try:
                await self._connect(first)
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    for feed in self._feeds.values():
                        group.create_task(self._read(feed), name=f"redis-feed {feed.name}")
                    group.create_task(self._reroute(), name="redis-feed-reroute")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                while isinstance(exc, ExceptionGroup):
                    exc = exc.exceptions[0]
                if self._failures == 0 and not self._degraded:
                    if isinstance(exc, FeedLost | RedisError | RedisClusterException | OSError):
                        self._log_lost(exc)
                    else:
                        log.error("redis feed listener failed; restarting it", exc_info=exc)
                self._degraded = True
                self._failures += 1
            finally:
                self._group = None
                await self._disconnect()
            first = False
            await asyncio.sleep(self._backoff(self._failures))

    @staticmethod
    def _backoff(failures: int) -> float:
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(failures, 16))
        return random.uniform(delay / 2, delay)

    def _log_lost(self, exc: BaseException, node: str = "") -> None:
        where = f" ({node})" if node else ""
        reason = redact(f"{type(exc).__name__}: {exc}", self.url)
        log.warning("redis feed lost%s: %s", where, reason)

    async def _connect(self, first: bool) -> None:
        """Read the topology and connect to every primary; every wanted channel is pending."""
        options: dict[str, Any] = dict(parse_url(self.url))
        self._conn_class = options.pop("connection_class", Connection)
        options.update(socket_connect_timeout=self.connect_timeout, socket_timeout=None)
        options["retry"] = Retry(NoBackoff(), 0)  # the listener does the reconnecting
        # RESP2: pub/sub replies are plain arrays read in order. (redis-py 8 speaks RESP3 by
        # default, where they are push frames that read_response does not return.)
        options["protocol"] = 2
        self._options = options
        if self.cluster:
            await self._read_topology()
            nodes = sorted(set(self._slots))
        else:
            host, port = options.get("host", "localhost"), options.get("port", 6379)
            self._standalone = options.get("path") or f"{host}:{port}"
            nodes = [self._standalone]
        for name in nodes:  # their readers start with the listener's task group
            self._feeds[name] = _NodeFeed(name, await self._open(name))
        self._pending = {channel: None for channel in sorted(self._wanted)}
        self._missed = not first
        self._fresh = True

    async def _reroute(self) -> None:
        """Subscribe the pending channels where they live, for as long as the feed runs.

        Rounds follow one another at once while they make progress and with capped jittered
        backoff after a setback (no node takes the channels yet: a failover in progress).
        """
        while True:
            self._changed.clear()
            if self._pending:
                if self._setbacks:
                    await asyncio.sleep(self._backoff(self._setbacks))
                await self._send_pending()
                continue
            if self._awaiting:
                try:
                    async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                        await self._changed.wait()
                except TimeoutError:  # sent, never confirmed: again, from the topology
                    self._setbacks += 1
                    self._repend(sorted(self._awaiting), None)
                continue
            if self._missed or not self._live.is_set():
                await self._restored()
            await self._changed.wait()

    async def _send_pending(self) -> None:
        pending = {c: n for c, n in self._pending.items() if c in self._wanted}
        self._pending = {}
        if self.cluster and not self._fresh and None in pending.values():
            try:
                await self._read_topology()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.debug("redis feed: topology unreadable: %s", redact(str(exc), self.url))
                self._setbacks += 1
                for channel, node in pending.items():
                    self._pending.setdefault(channel, node)
                return
        self._fresh = False
        by_node: dict[str, list[bytes]] = {}
        for channel, node in pending.items():
            by_node.setdefault(node or self._route(channel), []).append(channel)
        for name, group in by_node.items():
            try:
                feed = await self._feed(name)
                for channel in group:
                    self._where[channel] = name
                    self._awaiting.add(channel)
                await feed.send("SSUBSCRIBE", group, self._slot_of)
            except (FeedLost, RedisError, OSError) as exc:
                log.debug("redis feed: %s unreachable: %s", name, redact(str(exc), self.url))
                self._setbacks += 1
                self._repend(group, None)

    async def _restored(self) -> None:
        """Every wanted channel is subscribed: live, and after a loss, reset."""
        self._live.set()
        self._failures = self._setbacks = 0
        if self._degraded:
            self._degraded = False
            log.info("redis feed restored: %d channels subscribed", len(self._wanted))
        if self._missed:
            self._missed = False
            self.resets += 1
            await self._call(self._on_reset)

    async def _read(self, feed: _NodeFeed) -> None:
        """Read one node's feed until its connection fails (or the listener ends)."""
        pinged = False
        try:
            while True:
                try:
                    reply = await feed.conn.read_response(timeout=self.ping_every)
                except ResponseError as exc:  # an SSUBSCRIBE refused: the stream is in step
                    self._refused(feed, exc)
                    continue
                if reply is None:
                    if pinged:
                        raise FeedLost(f"node {feed.name} stopped answering")
                    await feed.conn.send_command("PING", check_health=False)
                    pinged = True
                    continue
                pinged = False
                await self._dispatch(feed, reply)
        except (FeedLost, RedisError, OSError) as exc:
            self._lose(feed, exc)
            with contextlib.suppress(Exception):
                await feed.conn.disconnect(nowait=True)

    def _lose(self, feed: _NodeFeed, exc: BaseException) -> None:
        """A node's connection failed: its channels go where the topology says, when it can."""
        if self._feeds.get(feed.name) is feed:
            del self._feeds[feed.name]
        lost = [channel for channel, name in self._where.items() if name == feed.name]
        if not lost:
            return  # nothing wanted there; a later subscribe connects again
        if not self._degraded:
            self._degraded = True
            self._log_lost(exc, feed.name)
        self._live.clear()
        self._missed = True
        self._setbacks += 1
        self._repend(lost, None)

    def _refused(self, feed: _NodeFeed, exc: ResponseError) -> None:
        """An SSUBSCRIBE refused: MOVED names the slot's node; else ask the topology again."""
        unconfirmed = [
            channel
            for channel, name in self._where.items()
            if name == feed.name and (channel in self._awaiting or channel in self._confirm)
        ]
        self._setbacks += 1
        if isinstance(exc, MovedError):
            node = f"{exc.host}:{exc.port}"
            if self.cluster:
                self._slots[exc.slot_id] = node
            self._repend([c for c in unconfirmed if key_slot(c) == exc.slot_id], node)
        else:  # CLUSTERDOWN and the like: the reply does not say which channels
            log.debug("redis feed: %s refused: %s", feed.name, exc)
            self._repend(unconfirmed, None)

    async def _dispatch(self, feed: _NodeFeed, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return  # +PONG before any subscription
        kind, channel = reply[0], reply[1]
        here = self._where.get(channel) == feed.name
        if kind == b"smessage":
            if here and channel in self._wanted and self._on_message is not None:
                parsed = parse_channel(self.prefix, channel)
                if parsed is not None:
                    await self._call(self._on_message, *parsed, reply[2])
        elif kind == b"ssubscribe":
            if here:
                for fut in self._confirm.pop(channel, []):
                    if not fut.done():
                        fut.set_result(None)
                if channel in self._awaiting:
                    self._awaiting.discard(channel)
                    self._setbacks = 0  # progress
                    self._changed.set()
        elif kind == b"sunsubscribe":
            due = feed.unsubscribing.get(channel, 0)
            if due > 1:
                feed.unsubscribing[channel] = due - 1
            elif due == 1:
                del feed.unsubscribing[channel]
            elif here and channel in self._wanted:
                # Not asked for: the slot moved to another node (resharding, failover).
                self._missed = True
                self._repend([channel], None)

    async def _call(self, handler: Callable[..., Any] | None, *args: Any) -> None:
        """Run a handler; its errors are logged, never allowed to stop the listener."""
        if handler is None:
            return
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("broker handler failed")

    async def _disconnect(self) -> None:
        self._live.clear()
        feeds, self._feeds = self._feeds, {}
        for feed in feeds.values():
            with contextlib.suppress(Exception):
                await feed.conn.disconnect(nowait=True)
        lost = StoreUnavailable("redis feed lost")
        for waiters in self._confirm.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(lost)
                    fut.exception()  # retrieved: no "never retrieved" log if nobody awaits
        self._confirm.clear()
        self._where.clear()
        self._pending.clear()
        self._awaiting.clear()
        topology, self._topology = self._topology, None
        if topology is not None:
            with contextlib.suppress(Exception):
                await topology.aclose()
