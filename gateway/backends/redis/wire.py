"""Pre-encoded Redis commands over one shared connection per node, replies read in order.

redis-py's pipeline costs ~100 µs of CPU per call (per-argument packing and encoding, a pooled
connection checked out per call, a Task per timed write, observability hooks), and its Cluster
client opens a connection per call in flight: past ``max_connections`` (100) per node it raises
``MaxConnectionsError``, a ``ConnectionError``, on which the cluster pipeline retries after
``aclose()`` of the whole client, disconnecting the connections of the other calls in flight
(which then die inside redis-py with ``AttributeError: 'NoneType' object has no attribute
'writelines'``). So the store takes from redis-py only what it does once, the handshake of a
connection (auth, TLS, db, unix socket) and the Cluster topology, and sends its own RESP:

- a ``Lane`` is one connection to one node that every caller shares. A call on a quiet lane
  writes its commands (already encoded) at once; while calls are in flight, later ones queue
  and one writer task writes everything queued in one write; one reader task hands the
  replies out in order. A connection that fails, or leaves the call at the head of its queue
  unanswered for the timeout (counted from when the calls ahead of it were answered, so a
  slow call does not fail the quick ones queued behind it), fails every call on it; the next
  call reconnects, one attempt at a time however many callers wait.
- a ``Wire`` routes: standalone Redis is one lane; Redis Cluster one lane per primary, by hash
  slot, following MOVED and ASK (and waiting out TRYAGAIN while a slot migrates), and
  re-reading the topology after a MOVED, CLUSTERDOWN, or a failed or timed-out connection.
  Every lane, to a node known at startup or one met later (added, promoted, moved), connects
  with the client's connection class and settings (TLS, AUTH, timeouts), host and port aside;
  the lane of a node that no longer serves slots is closed once its calls are answered.

Error replies come back as exception values (``ResponseError`` and subclasses), in place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_REDIRECTS = 3
LATE_LOOK_S = 0.05  # a call past its deadline is failed if still unanswered this much later
TRYAGAIN_WAITS_S = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)  # a migrating slot's multi-key call


def safe_url(url: str) -> str:
    """``url`` fit for logs and error messages: any password shown as ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # unparseable (a bad port): keep nothing of it
        return "<redis url>"


def redact(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (and ``url`` itself) masked."""
    text = text.replace(url, safe_url(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    return text


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One RESP command."""
    return b"*%d\r\n%b" % (len(args), b"".join([bulk(a) for a in args]))


ASKING = command(b"ASKING")


class _Call:
    """Commands written (or about to be) on a lane, and the replies read for them so far."""

    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, count: int, future: asyncio.Future[list[Any]], deadline: float) -> None:
        self.count = count
        self.future = future
        self.deadline = deadline
        self.replies: list[Any] = []


class Lane:
    """One connection to one Redis node, shared by every caller (see the module doc)."""

    def __init__(
        self,
        name: str,
        make: Callable[[], AbstractConnection],
        *,
        timeout: float | None,
        connect_timeout: float | None,
    ) -> None:
        self.name = name
        self._make = make
        self._timeout = timeout or None
        # The handshake runs with no socket timeout (the lane reads without one): bound it.
        self._connect_budget = (connect_timeout or 5.0) + (timeout or 5.0)
        self._conn: AbstractConnection | None = None
        self._epoch = 0  # bumped by each connection and failure: stale tasks stand down
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None  # the writer waits for calls on it
        self._connecting: asyncio.Task[AbstractConnection] | None = None
        self._calls: collections.deque[_Call] = collections.deque()
        self._outbox: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._suspect: _Call | None = None  # the oldest call, seen past its deadline once
        self.retiring = False  # the node serves no slots now: close once no call is left

    @property
    def busy(self) -> bool:
        """Whether calls are in flight or queued."""
        return bool(self._calls)

    def retire(self) -> None:
        """Close the connection as soon as no call is in flight (at once when none is)."""
        self.retiring = True
        if not self._calls:
            self._fail(self._epoch, RedisConnectionError(f"{self.name} retired"))

    async def call(self, packed: bytes, count: int) -> list[Any]:
        """Send ``count`` encoded commands; return their ``count`` replies, in order.

        Raises redis-py's ``ConnectionError`` or ``TimeoutError`` when the connection fails or
        does not answer in time (the commands may or may not have run).
        """
        conn = self._conn
        if conn is None:
            conn = await self._connect()
            if conn is not self._conn:
                raise RedisConnectionError(f"connection to {self.name} lost")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        deadline = loop.time() + self._timeout if self._timeout else 0.0
        quiet = not self._calls  # nothing queued or in flight: no write to share
        self._calls.append(_Call(count, future, deadline))
        if self._timer is None and self._timeout:
            self._timer = loop.call_at(deadline, self._check)
        if quiet:
            # Write now rather than wake the writer for the next turn. Only when quiet: a
            # failed or interrupted write then fails this call alone.
            epoch = self._epoch
            try:
                await conn.send_packed_command(packed, check_health=False)
            except asyncio.CancelledError:
                self._fail(epoch, RedisConnectionError(f"write to {self.name} interrupted"))
                raise
            except Exception as exc:
                self._fail(epoch, exc)
        else:
            self._outbox.append(packed)
            idle = self._idle
            if idle is not None:
                self._idle = None
                idle.set_result(None)
        return await future

    async def close(self) -> None:
        """Fail the calls in flight and close the connection; a later call reconnects."""
        tasks = (self._connecting, self._writer, self._reader)
        self._fail(self._epoch, RedisConnectionError(f"connection to {self.name} closed"))
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _write(self, conn: AbstractConnection, epoch: int) -> None:
        """Write what callers queued, all of it at once, whenever there is some.

        A call queues its commands and wakes this task, which runs once the callers that are
        ready in the same turn of the event loop have queued theirs too: under load, many
        calls share one write (and Redis one read).
        """
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        try:
            while True:
                if not outbox:
                    self._idle = loop.create_future()
                    await self._idle
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                await conn.send_packed_command(data, check_health=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(epoch, exc)

    async def _read(self, conn: AbstractConnection, epoch: int) -> None:
        """Hand each reply to the oldest call, until the connection fails or is closed."""
        calls = self._calls
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    reply = await conn.read_response()
                except ResponseError as exc:  # an error reply: the stream is still in step
                    reply = exc
                if not calls:
                    raise RedisConnectionError(f"{self.name} sent a reply nobody asked for")
                call = calls[0]
                call.replies.append(reply)
                if len(call.replies) == call.count:
                    calls.popleft()
                    if not call.future.done():  # not cancelled
                        call.future.set_result(call.replies)
                    if calls:
                        # The next call's wait begins now: the time Redis spent on the
                        # calls ahead of it is not its own (fair to calls behind a slow one).
                        head = calls[0]
                        if self._timeout:
                            head.deadline = max(head.deadline, loop.time() + self._timeout)
                    elif self.retiring:
                        self._fail(epoch, RedisConnectionError(f"{self.name} retired"))
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(epoch, exc)
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    def _check(self) -> None:
        """The watchdog: fail the lane when its oldest call is past its deadline.

        The oldest call's deadline is the timeout from when it was sent or from when the call
        ahead of it was answered, whichever is later: a connection that answers nothing fails
        within the timeout, one that is busy with a long call ahead does not fail the rest.

        Past the deadline the call gets one more look a little later: the event loop runs
        due timers before it reads sockets, so after the loop itself was held up (a long
        callback, a starved process) the reply may be waiting unread.
        """
        self._timer = None
        if not self._calls:
            return
        loop = asyncio.get_running_loop()
        oldest = self._calls[0]
        if oldest.deadline > loop.time():
            self._suspect = None
            self._timer = loop.call_at(oldest.deadline, self._check)
        elif oldest is not self._suspect:
            self._suspect = oldest
            self._timer = loop.call_later(LATE_LOOK_S, self._check)
        else:
            self._fail(self._epoch, RedisTimeoutError(f"Timeout reading from {self.name}"))

    def _fail(self, epoch: int, exc: BaseException) -> None:
        """Drop the connection and fail every call on it (once per connection)."""
        if epoch != self._epoch:
            return
        self._epoch += 1
        self._conn = None
        self._outbox.clear()
        self._idle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._suspect = None
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()  # the reader's finally closes the connection
        self._reader = self._writer = None
        kind = RedisTimeoutError if isinstance(exc, RedisTimeoutError) else RedisConnectionError
        reason = exc if isinstance(exc, RedisError) else f"{type(exc).__name__}: {exc}"
        calls, self._calls = self._calls, collections.deque()
        for call in calls:
            if not call.future.done():
                call.future.set_exception(kind(f"{self.name}: {reason}"))

    async def _connect(self) -> AbstractConnection:
        """The lane's connection, made by one attempt that every waiting caller shares."""
        task = self._connecting
        if task is None:
            task = asyncio.create_task(self._open(), name=f"redis-connect {self.name}")
            task.add_done_callback(self._opened)
            self._connecting = task
        return await asyncio.shield(task)

    def _opened(self, task: asyncio.Task[AbstractConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter was cancelled

    async def _open(self) -> AbstractConnection:
        conn = self._make()
        try:
            async with asyncio.timeout(self._connect_budget):
                await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"Timeout connecting to {self.name}") from exc
            raise
        self._epoch += 1
        self._conn = conn
        self._reader = asyncio.create_task(
            self._read(conn, self._epoch), name=f"redis-reader {self.name}"
        )
        self._writer = asyncio.create_task(
            self._write(conn, self._epoch), name=f"redis-writer {self.name}"
        )
        return conn


def lane_factory(
    connection_class: type[AbstractConnection], kwargs: dict[str, Any]
) -> Callable[[], AbstractConnection]:
    """Connections as ``connection_class(**kwargs)`` makes them, in the lane's mode.

    RESP2 (replies are plain values; nothing is pushed, so no maintenance notifications, which
    redis-py refuses on RESP2 without hiredis), raw bytes, no socket timeout (the lane times
    its calls itself), and no retry (the store decides).
    """
    options = {
        **kwargs,
        "socket_timeout": None,
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,
        "decode_responses": False,
    }
    if "maint_notifications_config" in options:
        options["maint_notifications_config"] = None
    return lambda: connection_class(**options)


class Wire:
    """The lanes of one redis-py client: one for standalone Redis, one per Cluster primary."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        # Weakly: stores find their wire by client in a WeakKeyDictionary, whose entries
        # would never go if the value held its key.
        self._client = weakref.ref(client)
        self.cluster = isinstance(client, RedisCluster)
        self._lanes: dict[str, Lane] = {}
        self._retired: set[Lane] = set()  # closing once their calls are answered
        self._slots: list[str] = []  # Cluster: the primary's name for each hash slot
        self._stale = True
        self._refreshing: asyncio.Lock | None = None
        # Commands that load what a node lacks when it answers NOSCRIPT after a redirect
        # (a node added or promoted has an empty script cache); the store sets them.
        self.scripts: Sequence[bytes] = ()
        if isinstance(client, Redis):
            pool = client.connection_pool
            self._timeout = pool.connection_kwargs.get("socket_timeout")
            self._connect_timeout = pool.connection_kwargs.get("socket_connect_timeout")
        else:
            self._timeout = client.nodes_manager.connection_kwargs.get("socket_timeout")
            self._connect_timeout = client.nodes_manager.connection_kwargs.get(
                "socket_connect_timeout"
            )

    @property
    def client(self) -> Redis | RedisCluster:
        client = self._client()
        if client is None:
            raise RedisConnectionError("the redis-py client is gone")
        return client

    async def topology(self) -> list[str] | None:
        """For Cluster, the name of the primary serving each hash slot; None for standalone."""
        if not self.cluster:
            return None
        if self._stale:
            await self._refresh()
        return self._slots

    async def primaries(self) -> list[str]:
        """The names of every node that takes writes ("" alone for standalone)."""
        if not self.cluster:
            return [""]
        if self._stale:
            await self._refresh()
        return sorted(set(self._slots))

    def invalidate(self) -> None:
        """Have the next call re-read the Cluster topology."""
        self._stale = self.cluster

    async def run(self, node: str, commands: Sequence[bytes]) -> list[Any]:
        """Run encoded ``commands`` on ``node`` in one write; their replies, in order.

        One retry on a fresh connection when the connection failed (a stale connection after a
        restart); none on a timeout. On Cluster a MOVED or ASK reply is followed to its node,
        TRYAGAIN retried briefly, and any failure has the next call re-read the topology.
        """
        packed = commands[0] if len(commands) == 1 else b"".join(commands)
        try:
            try:
                replies = await self._lane(node).call(packed, len(commands))
            except RedisConnectionError:
                self.invalidate()
                replies = await self._lane(node).call(packed, len(commands))
        except (RedisConnectionError, RedisTimeoutError):
            self.invalidate()
            raise
        if self.cluster:
            for i, reply in enumerate(replies):
                if isinstance(reply, AskError | TryAgainError | ClusterDownError):
                    replies[i] = await self._follow(node, commands[i], reply)
        return replies

    async def close(self) -> None:
        lanes, self._lanes = self._lanes, {}
        retired, self._retired = self._retired, set()
        for lane in [*lanes.values(), *retired]:
            await lane.close()

    async def _follow(self, node: str, cmd: bytes, reply: Any) -> Any:
        """Run ``cmd`` where a MOVED or ASK reply sent it, as many times as it takes (few).

        TRYAGAIN (a multi-key call while its slot migrates) is sent again after a short wait;
        NOSCRIPT on a node redirected to loads the scripts there first.
        """
        asking = False
        redirects = waits = 0
        loaded = False
        while True:
            if isinstance(reply, MovedError):
                self._stale = True  # the slot moved for good: re-read the topology
                node, asking = f"{reply.host}:{reply.port}", False
                redirects += 1
            elif isinstance(reply, AskError):  # ASK: this command, once, on the importing node
                node, asking = f"{reply.host}:{reply.port}", True
                redirects += 1
            elif isinstance(reply, TryAgainError) and waits < len(TRYAGAIN_WAITS_S):
                await asyncio.sleep(TRYAGAIN_WAITS_S[waits])
                waits += 1
            elif isinstance(reply, NoScriptError) and redirects and self.scripts and not loaded:
                loaded = True
                await self._lane(node).call(b"".join(self.scripts), len(self.scripts))
            else:
                if isinstance(reply, ClusterDownError):
                    self._stale = True
                return reply
            if redirects > MAX_REDIRECTS:
                return reply
            if asking:
                [_, reply] = await self._lane(node).call(ASKING + cmd, 2)
            else:
                [reply] = await self._lane(node).call(cmd, 1)

    def _lane(self, node: str) -> Lane:
        lane = self._lanes.get(node)
        if lane is None:
            name = node
            client = self.client
            if isinstance(client, Redis):  # standalone: named by its address, for errors
                kwargs = client.connection_pool.connection_kwargs
                name = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            lane = self._lanes[node] = Lane(
                name,
                self._factory(node),
                timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )
        return lane

    def _factory(self, node: str) -> Callable[[], AbstractConnection]:
        """Connections to ``node`` as the client makes them (class, TLS, AUTH, timeouts).

        On Cluster every node, known at startup or not (added, promoted, readdressed), is
        configured the way redis-py configures the nodes it discovers: from the client's
        shared connection settings with only the address changed.
        """
        client = self.client
        if isinstance(client, Redis):
            pool = client.connection_pool
            return lane_factory(pool.connection_class, pool.connection_kwargs)
        host, _, port = node.rpartition(":")
        made = ClusterNode(host, int(port), **client.nodes_manager.connection_kwargs)
        return lane_factory(made.connection_class, made.connection_kwargs)

    async def _refresh(self) -> None:
        """Read the Cluster topology (once, however many callers want it).

        The lanes of nodes that no longer serve a slot (demoted, removed, readdressed) close
        once their calls are answered; a node met again later gets a fresh lane.
        """
        client = self.client
        assert isinstance(client, RedisCluster)
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if not self._stale:
                return
            if self._slots:  # a refresh: the client knows the nodes already
                await client.nodes_manager.initialize()
            else:
                await client.initialize()
            manager = client.nodes_manager
            self._slots = [
                manager.get_node_from_slot(slot).name for slot in range(REDIS_CLUSTER_HASH_SLOTS)
            ]
            self._stale = False
            serving = set(self._slots)
            self._retired = {lane for lane in self._retired if lane.busy}
            for name in [name for name in self._lanes if name not in serving]:
                lane = self._lanes.pop(name)
                lane.retire()
                if lane.busy:
                    self._retired.add(lane)
