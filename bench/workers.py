"""Load-generator processes: webhook senders and WebSocket watchers.

Each worker is a spawned process pinned to the generator cores, running uvloop, driven by the
parent over a pipe with ``(command, kwargs)`` -> ``("ok", result) | ("error", text)``. Times
that must agree across processes are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns``).

Shared memory (``Shared``) links both sides: a sender writes, just before it writes event
``k``'s request to the socket, ``send_ns[k]``, and on the ack ``status[k]``; a watcher that
receives the state caused by ``k`` computes the end-to-end latency from ``send_ns[k]``, and
at the end counts as lost every acked event a watcher of its user never saw (nor anything
later of that user).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import time
import traceback
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvloop

from bench.churn import Churner
from bench.dialects import CONNECTIONS, DIALECTS, WatcherSession
from bench.events import BATCH, Plan, RongCloudRequests, TencentRequests
from bench.hist import Histogram
from bench.http import HttpConn, connect_many
from bench.procs import LOOPBACK, BenchError, pin, raise_nofile
from bench.ws import CLOCK, WsConn

SENT, ACKED, FAILED = 1, 2, 3


@dataclass
class Shared:
    """Per-event shared memory: when it was sent and how it was acked."""

    capacity: int
    send_ns: Any  # ctypes array of c_int64
    status: Any  # ctypes array of c_uint8

    @classmethod
    def create(cls, capacity: int) -> Shared:
        ctx = multiprocessing.get_context("spawn")
        return cls(
            capacity,
            ctx.RawArray(ctypes.c_int64, capacity),
            ctx.RawArray(ctypes.c_uint8, capacity),
        )


Handler = Callable[..., Awaitable[Any]]


def _worker_main(
    kind: str,
    cores: frozenset[int],
    pipe: multiprocessing.connection.Connection,
    init: dict[str, Any],
    nice: int = 0,
) -> None:
    """Entry point of every worker process.

    The cyclic GC is off while measuring (a full collection over tens of thousands of
    sessions would stall every connection of the process and show up as server latency);
    ``Watchers.reset`` and ``Sender.open_loop`` collect between steps instead.
    """
    raise_nofile()
    pin(0, cores)
    gc.disable()
    # The sender one step above the watchers: it keeps the send schedule when the watcher
    # processes on the same cores are busy.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice - 5 if kind == "sender" else nice)
    uvloop.run(_serve(kind, pipe, init))


async def _serve(
    kind: str, pipe: multiprocessing.connection.Connection, init: dict[str, Any]
) -> None:
    worker: Sender | Watchers = Sender(**init) if kind == "sender" else Watchers(**init)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: inbox.put_nowait(pipe.recv()))
    while True:
        command, kwargs = await inbox.get()
        if command == "exit":
            await worker.close()
            pipe.send(("ok", None))
            return
        try:
            result = await getattr(worker, command)(**kwargs)
        except Exception:
            pipe.send(("error", traceback.format_exc()))
        else:
            pipe.send(("ok", result))


class Pool:
    """The parent's handle on a group of worker processes of one kind."""

    def __init__(
        self, kind: str, cores: frozenset[int], inits: list[dict[str, Any]], nice: int = 0
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.kind = kind
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i, init in enumerate(inits):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(kind, cores, theirs, init, nice), name=f"{kind}-{i}"
            )
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def send(self, command: str, each: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        for i, pipe in enumerate(self.pipes):
            pipe.send((command, each[i] if each is not None else kwargs))

    def gather(self, wait: float = 120.0) -> list[Any]:
        """Every worker's answer to the last command, in order (raise after ``wait`` s)."""
        deadline = time.monotonic() + wait
        out = []
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            while not pipe.poll(0.1):
                if not proc.is_alive():
                    raise BenchError(f"{proc.name} died (exit code {proc.exitcode})")
                if time.monotonic() > deadline:
                    raise BenchError(f"{proc.name} did not answer within {wait:.0f}s")
            status, result = pipe.recv()
            if status != "ok":
                raise BenchError(f"{proc.name} failed:\n{result}")
            out.append(result)
        return out

    def call(
        self,
        command: str,
        each: list[dict[str, Any]] | None = None,
        wait: float = 120.0,
        **kwargs: Any,
    ) -> list[Any]:
        self.send(command, each, **kwargs)
        return self.gather(wait)

    def close(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            if proc.is_alive():
                try:
                    pipe.send(("exit", {}))
                except OSError:
                    continue
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# ----------------------------------------------------------------------------- senders


async def _sleep_until(t_ns: int) -> None:
    delay = t_ns - time.monotonic_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)


class Sender:
    """Posts signed webhooks over keep-alive connections (raw asyncio, or httpx to compare)."""

    def __init__(self, port: int, path: str, plan: Plan, shared: Shared | None) -> None:
        self.port = port
        self.path = path
        self.plan = plan
        self.shared = shared
        self.conns: list[HttpConn] = []

    async def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns = []

    async def open_loop(
        self,
        k0: int,
        count: int,
        stride: int,
        offset: int,
        rate: float,
        t0_ns: int,
        conns: int,
        provider: str = "tencent",
    ) -> dict[str, Any]:
        """Send events ``k0 .. k0 + count - 1`` at ``rate`` events/s (open loop) on up to
        ``conns`` connections, each request at the due time of its first event,
        ``t0 + (k - k0) / rate``.

        ``tencent``: one single-event request per event ``k0 + offset + i * stride``.
        ``rongcloud``: one request per batch of ``BATCH`` events, request ``i`` of this worker
        carrying batch ``offset + i * stride``; every event of a batch is sent (and acked) when
        its request is.
        """
        assert self.shared is not None
        send_ns, status = self.shared.send_ns, self.shared.status
        build: Callable[[int], bytes]
        if provider == "tencent":
            build, per = TencentRequests(self.plan, self.port, self.path), 1
        else:
            build, per = RongCloudRequests(self.plan, self.port, self.path), BATCH
        idle: deque[HttpConn] = deque()
        wake: deque[asyncio.Future[None]] = deque()
        hist = Histogram()
        codes: Counter[int] = Counter()
        inflight = 0
        drained: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()

        def on_response(conn: HttpConn, code: int) -> None:
            nonlocal inflight
            inflight -= 1
            mark = ACKED if 200 <= code < 300 else FAILED
            if per == 1:
                status[conn.k] = mark
            else:
                status[conn.k : conn.k + per] = bytes((mark,)) * per
            codes[code] += 1
            hist.record((time.monotonic_ns() - conn.sent_ns) // 1000)
            if not conn.closed:
                idle.append(conn)
                if wake:
                    w = wake.popleft()
                    if not w.done():
                        w.set_result(None)
            if inflight == 0 and drained is not None and not drained.done():
                drained.set_result(None)

        starved = 0  # times every connection was busy: the server acked too slowly

        async def take() -> HttpConn:
            """The most recently used idle connection (a stack: at low rates only a few stay
            in use, and the rest may hit the server's keep-alive timeout harmlessly)."""
            nonlocal starved
            while True:
                while idle:
                    conn = idle.pop()
                    if not conn.closed:
                        return conn
                if inflight == 0:  # all closed while idle: open a fresh one
                    (conn,) = await connect_many(self.port, 1, on_response)
                    self.conns.append(conn)
                    return conn
                starved += 1
                w = loop.create_future()
                wake.append(w)
                await w

        await self.close()
        self.conns = await connect_many(self.port, conns, on_response)
        idle.extend(self.conns)
        gc.collect()
        max_lag = 0
        late = 0  # sends more than 5 ms behind schedule
        sent = 0
        step_ns = 1e9 / rate
        for k in range(k0 + offset * per, k0 + count, stride * per):
            due = t0_ns + int((k - k0) * step_ns)
            if due > time.monotonic_ns():
                await _sleep_until(due)
            conn = await take()
            request = build(k)
            now = time.monotonic_ns()
            lag = now - due
            max_lag = max(max_lag, lag)
            late += lag > 5_000_000
            conn.k = k
            conn.sent_ns = now
            if per == 1:
                send_ns[k] = now
                status[k] = SENT
            else:
                send_ns[k : k + per] = [now] * per
                status[k : k + per] = bytes((SENT,)) * per
            inflight += 1
            sent += per
            conn.send(request)
        last_send = time.monotonic_ns()
        if inflight:
            drained = loop.create_future()
            try:
                await asyncio.wait_for(drained, 30)
            except TimeoutError:
                codes[-1] += inflight  # never answered
        return {
            "sent": sent,
            "codes": dict(codes),
            "hist": hist,
            "max_lag_ms": max_lag / 1e6,
            "late": late,
            "starved": starved,
            "first_due_ns": t0_ns,
            "last_send_ns": last_send,
            "events_per_request": per,
        }

    async def closed_loop(
        self,
        provider: str,
        conns: int,
        stride: int,
        offset: int,
        first: int,
        t_start_ns: int,
        t_measure_ns: int,
        t_end_ns: int,
        client: str = "raw",
    ) -> dict[str, Any]:
        """Each connection sends its next request as soon as the last one is answered.

        Only requests sent in ``[t_measure, t_end)`` count. Request ``i`` of this worker
        carries event ``first + (offset + i * stride) * events_per_request`` (and, for a
        RongCloud batch, the next ones).
        """
        if provider == "tencent":
            build: Callable[[int], bytes] = TencentRequests(self.plan, self.port, self.path)
            per_request = 1
        else:
            build = RongCloudRequests(self.plan, self.port, self.path)
            per_request = BATCH
        counter = itertools.count()

        def next_request() -> bytes:
            return build(first + (offset + stride * next(counter)) * per_request)

        if client == "httpx":
            return await self._closed_loop_httpx(
                next_request, per_request, conns, t_start_ns, t_measure_ns, t_end_ns
            )
        hist = Histogram()
        codes: Counter[int] = Counter()
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        running = conns

        def on_response(conn: HttpConn, code: int) -> None:
            nonlocal running
            now = time.monotonic_ns()
            if conn.sent_ns >= t_measure_ns and now <= t_end_ns + 2_000_000_000:
                codes[code] += 1
                hist.record((now - conn.sent_ns) // 1000)
            if now < t_end_ns and not conn.closed:
                request = next_request()
                conn.sent_ns = time.monotonic_ns()
                conn.send(request)
                return
            running -= 1
            if running == 0 and not finished.done():
                finished.set_result(None)

        await self.close()
        self.conns = await connect_many(self.port, conns, on_response)
        gc.collect()
        await _sleep_until(t_start_ns)
        for conn in self.conns:
            request = next_request()
            conn.sent_ns = time.monotonic_ns()
            conn.send(request)
        await asyncio.wait_for(finished, (t_end_ns - time.monotonic_ns()) / 1e9 + 30)
        ok = sum(n for c, n in codes.items() if 200 <= c < 300)
        return {
            "requests": sum(codes.values()),
            "ok": ok,
            "codes": dict(codes),
            "hist": hist,
            "events_per_request": per_request,
        }

    async def _closed_loop_httpx(
        self,
        next_request: Callable[[], bytes],
        per_request: int,
        conns: int,
        t_start_ns: int,
        t_measure_ns: int,
        t_end_ns: int,
    ) -> dict[str, Any]:
        import httpx

        hist = Histogram()
        codes: Counter[int] = Counter()
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        base = f"http://{LOOPBACK}:{self.port}"

        async def one(client: httpx.AsyncClient) -> None:
            while True:
                raw = next_request()
                head, _, body = raw.partition(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                sent = time.monotonic_ns()
                if sent >= t_end_ns:
                    return
                try:
                    response = await client.post(
                        base + target, content=body, headers={"content-type": "application/json"}
                    )
                    code = response.status_code
                except httpx.HTTPError:
                    code = 0
                if sent >= t_measure_ns:
                    codes[code] += 1
                    hist.record((time.monotonic_ns() - sent) // 1000)

        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            await _sleep_until(t_start_ns)
            await asyncio.gather(*(one(client) for _ in range(conns)))
        ok = sum(n for c, n in codes.items() if 200 <= c < 300)
        return {
            "requests": sum(codes.values()),
            "ok": ok,
            "codes": dict(codes),
            "hist": hist,
            "events_per_request": per_request,
        }


# ----------------------------------------------------------------------------- watchers


class Watchers:
    """Many WebSocket connections in one process, each watching some users."""

    def __init__(
        self,
        port: int,
        path: str,
        dialect: str,
        plan: Plan,
        shared: Shared | None,
        specs: list[tuple[int, list[int]]],
        ping: bool = True,
    ) -> None:
        self.port = port
        self.path = path
        self.plan = plan
        self.shared = shared
        self.capacity = shared.capacity if shared is not None else 0
        self.send_ns = shared.send_ns if shared is not None else None
        self.specs = specs
        self.factory = DIALECTS[dialect]
        self.conn_class: Any = CONNECTIONS.get(dialect, WsConn)
        self.sessions: list[WatcherSession] = []
        self.use_ping = ping
        self.heartbeat_ms = 0
        self._pinger: asyncio.Task[None] | None = None
        self.churner: Churner | None = None  # soak: bench.churn replaces connections
        self._reset(0, 0)
        self.closes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()

    def _reset(self, k_lo: int, k_mid: int) -> None:
        self.k_lo = k_lo
        self.k_mid = k_mid
        self.hist_a = Histogram()  # events sent in the first half of the window
        self.hist_b = Histogram()  # ... and in the second half (queueing shows as growth)
        self.exact = 0
        self.stale = 0  # a state not newer than one already received for that user
        self.unmatched = 0  # a state that no event of this run explains
        self.regress = 0  # v lower than one already received
        self.resync_states = 0
        self.earlier = 0  # a state of an event of an earlier step (arrived after its drain)
        self.frames = 0
        self.last_ns = 0

    # -- Recorder (called by sessions) --

    def state(self, sess: WatcherSession, user: int, since: int | None, v: int) -> None:
        now = CLOCK.rx_ns
        self.frames += 1
        self.last_ns = now
        last = sess.lastv.get(user, 0)
        if v < last:
            self.regress += 1
        else:
            sess.lastv[user] = v
        if since is None:
            self.unmatched += 1
            return
        k = since - self.plan.base_ms
        if k < 0 or k >= self.capacity or k % self.plan.users != user:
            self.unmatched += 1
            return
        if k <= sess.maxk.get(user, -1):
            self.stale += 1
            return
        sess.maxk[user] = k
        if k < self.k_lo:
            self.earlier += 1
            return
        assert self.send_ns is not None
        sent = self.send_ns[k]
        if not sent:
            self.unmatched += 1
            return
        (self.hist_a if k < self.k_mid else self.hist_b).record((now - sent) // 1000)
        self.exact += 1

    def resync(self, sess: WatcherSession, user: int, since: int | None, v: int) -> None:
        self.resync_states += 1
        sess.lastv[user] = max(v, sess.lastv.get(user, 0))
        if since is not None:
            k = since - self.plan.base_ms
            if 0 <= k < self.capacity and k > sess.maxk.get(user, -1):
                sess.maxk[user] = k

    def ready(self, sess: WatcherSession) -> None:
        sess.ready_ns = time.monotonic_ns()
        if sess.waiter is not None and not sess.waiter.done():
            sess.waiter.set_result(None)

    def error(self, sess: WatcherSession, code: str) -> None:
        self.errors[code] += 1
        if sess.waiter is not None and not sess.waiter.done():
            sess.waiter.set_exception(BenchError(f"error {code}"))

    def closed(self, sess: WatcherSession, code: int) -> None:
        if self.churner is not None and self.churner.retired(sess, code):
            return  # a close the churn asked for: counted by the churner
        self.closes[code] += 1
        if sess.waiter is not None and not sess.waiter.done():
            sess.waiter.set_exception(BenchError(f"closed with {code} during setup"))

    # -- commands --

    async def connect(self, concurrency: int, limit_s: float) -> dict[str, Any]:
        """Open every connection (``concurrency`` handshakes at a time): hello..snapshot."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        failures: Counter[str] = Counter()
        started = time.monotonic_ns()

        async def one(conn_no: int, users: list[int]) -> None:
            sess = self.factory(conn_no, users, self)
            self.sessions.append(sess)
            async with gate:
                sess.waiter = loop.create_future()
                try:
                    async with asyncio.timeout(limit_s):
                        await loop.create_connection(
                            lambda: self.conn_class(self.port, self.path, sess),
                            LOOPBACK,
                            self.port,
                        )
                        await sess.waiter
                except (OSError, TimeoutError, BenchError) as exc:
                    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    failures[f"{what} (waiting for {sess.stage})"] += 1
                    if sess.ws is not None:
                        sess.ws.abort()
                finally:
                    sess.waiter = None

        await asyncio.gather(*(one(n, users) for n, users in self.specs))
        ready = [s.ready_ns for s in self.sessions if s.ready_ns]
        if self.use_ping and self.heartbeat_ms > 0 and self._pinger is None:
            self._pinger = asyncio.create_task(self._heartbeat())
        return {
            "ok": len(ready),
            "failed": dict(failures),
            "started_ns": started,
            "last_ready_ns": max(ready, default=started),
        }

    async def _heartbeat(self) -> None:
        """An application ping per connection every ``heartbeat_ms``, spread over the period
        (what the browser client does)."""
        period = self.heartbeat_ms / 1000
        tick = 0.1
        per_tick = max(1, int(len(self.sessions) * tick / period) + 1)
        cursor = 0
        while True:
            await asyncio.sleep(tick)
            n = len(self.sessions)
            for _ in range(min(per_tick, n)):
                sess = self.sessions[cursor % n]
                cursor += 1
                if sess.ws is not None and sess.ready_ns:
                    sess.ping()

    async def reset(self, k_lo: int, k_mid: int) -> None:
        """Start a new measurement window for events from ``k_lo`` (``k_mid``: second half)."""
        gc.collect()
        gc.freeze()
        self._reset(k_lo, k_mid)
        self.closes.clear()
        self.errors.clear()

    async def quiet(self) -> int:
        """When the last state arrived (monotonic ns; 0: none since the reset)."""
        return self.last_ns

    def _acked(self, k_lo: int, k_hi: int) -> dict[int, list[int]]:
        """Per user, the acked events among ``k_lo .. k_hi - 1`` (ascending)."""
        assert self.shared is not None
        status = bytes(memoryview(self.shared.status).cast("B")[k_lo:k_hi])
        users = self.plan.users
        acked: dict[int, list[int]] = {}
        for i, s in enumerate(status):
            if s == ACKED:
                k = k_lo + i
                acked.setdefault(k % users, []).append(k)
        return acked

    async def missing(self, k_lo: int, k_hi: int) -> int:
        """How many (connection, user) pairs still wait for the latest acked event of that
        user: 0 once everything sent has arrived (or been superseded)."""
        acked = self._acked(k_lo, k_hi)
        last = {u: ks[-1] for u, ks in acked.items()}
        count = 0
        for sess in self.sessions:
            if not sess.ready_ns:
                continue
            maxk = sess.maxk
            for u in sess.users:
                k = last.get(u)
                if k is not None and maxk.get(u, -1) < k:
                    count += 1
        return count

    async def report(self, k_lo: int, k_hi: int) -> dict[str, Any]:
        """Deliveries, latency and loss for the events ``k_lo .. k_hi - 1`` (after a drain)."""
        acked = self._acked(k_lo, k_hi)
        expected = lost = 0
        examples: list[str] = []
        for sess in self.sessions:
            if not sess.ready_ns:
                continue  # never set up: counted as a connection failure, not as loss
            for u in sess.users:
                ks = acked.get(u)
                if not ks:
                    continue
                expected += len(ks)
                seen = sess.maxk.get(u, -1)
                if seen < ks[-1]:
                    missing = len(ks) - bisect_right(ks, seen)
                    lost += missing
                    if len(examples) < 5:
                        examples.append(
                            f"user u{u}: {missing} event(s) after k={seen}, "
                            f"connection closed={sess.closed_code}"
                        )
        return {
            "expected": expected,
            "exact": self.exact,
            "lost": lost,
            "lost_examples": examples,
            "stale": self.stale,
            "unmatched": self.unmatched,
            "regress": self.regress,
            "resync_states": self.resync_states,
            "earlier": self.earlier,
            "frames": self.frames,
            "hist_a": self.hist_a,
            "hist_b": self.hist_b,
            "last_ns": self.last_ns,
            "closes": dict(self.closes),
            "errors": dict(self.errors),
            "open": sum(1 for s in self.sessions if s.ws is not None and s.ready_ns),
        }

    async def churn_start(self, rate: float) -> None:
        """Replace ``rate`` connections/s from now on, in the background (``bench.churn``)."""
        self.churner = Churner(self, rate)

    async def churn_stats(self) -> dict[str, Any]:
        assert self.churner is not None
        return self.churner.stats()

    async def churn_stop(self) -> dict[str, Any]:
        assert self.churner is not None
        return await self.churner.stop()

    async def count_open(self) -> int:
        return sum(1 for s in self.sessions if s.ws is not None and s.ready_ns)

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        for sess in self.sessions:
            if sess.ws is not None:
                sess.ws.abort()
        self.sessions = []
