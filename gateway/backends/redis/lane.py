"""``Lane``: one connection to one Redis node, shared by every caller; RESP we encode ourselves.

What it does: a call on a quiet lane writes its commands (already encoded, ``bulk`` and
``command``) at once; while calls are in flight, later ones queue and one writer task writes
everything queued in one write; one reader task hands the replies out in order. A connection
that fails, or leaves the call at the head of its queue unanswered for the timeout (counted
from when the calls ahead of it were answered, so a slow call does not fail the quick ones
queued behind it), fails every call on it; the next call reconnects, one attempt at a time
however many callers wait. Error replies come back as exception values (``ResponseError`` and
subclasses), in place.

Why it exists: redis-py's pipeline costs ~100 µs of CPU per call (per-argument packing and
encoding, a pooled connection checked out per call, a Task per timed write, observability
hooks), and its Cluster client opens a connection per call in flight: past ``max_connections``
(100) per node it raises ``MaxConnectionsError``, a ``ConnectionError``, on which the cluster
pipeline retries after ``aclose()`` of the whole client, disconnecting the connections of the
other calls in flight (which then die inside redis-py with ``AttributeError: 'NoneType' object
has no attribute 'writelines'``). So the store takes from redis-py only what it does once, the
handshake of a connection (auth, TLS, db, unix socket, via ``lane_factory``) and the Cluster
topology (``wire``), and sends its own RESP here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

LATE_LOOK_S = 0.05  # a call past its deadline is failed if still unanswered this much later


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One RESP command."""
    return b"*%d\r\n%b" % (len(args), b"".join([bulk(a) for a in args]))


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
