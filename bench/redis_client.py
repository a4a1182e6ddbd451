"""redis-py against the store's own wire layer, on the same apply.lua calls and the same feed.

``python -m bench.redis_client [--backend standalone|cluster|both] [--feed]`` starts its own
redis-server (or a 3-master cluster) on free loopback ports, pins Redis to one core and this
process to the other (``bench.procs.Cores``), and runs, per client, a closed loop of
``--callers`` concurrent callers for ``--warmup`` + ``--duration`` seconds:

- ``single``: Tencent-like webhooks, one event each (64 callers);
- ``batch``: RongCloud-like webhooks, 100 events of 100 users each (16 callers).

Every caller calls ``RedisStore.apply``. The clients differ only below it:

- ``wire``: RedisStore as shipped (pre-encoded EVALSHA over ``redis_wire`` lanes);
- ``redis-py``: the same store with ``_run_users`` sending the same EVALSHA (same keys, same
  ARGV, one call per 100 users on standalone, per hash slot on Cluster) through redis-py with
  hiredis: a ``BlockingConnectionPool`` (standalone) or ``RedisCluster`` (Cluster), one call
  as ``execute_command``, several as a pipeline (``transaction=False`` on standalone, the
  cluster pipeline on Cluster). Concurrent applies still share a script call (the store's
  ``_queued``), so only the client differs;
- ``redis-py-percall`` (single only): the same without that sharing, every webhook its own
  EVALSHA: what a straight port to redis-py would do.

Reported per row: calls/s (apply calls answered), events/s, this process's CPU (% of a core
and µs per call, from ``time.process_time``), Redis's CPU per call, p50/p99 of a call, errors
(by type), and the load of other processes on the machine during the window.

``--feed``: the receive path of the published states: a publisher process SPUBLISHes to
``--feed-users`` channels at ``--feed-rate`` messages/s; this process receives them with
``RedisBroker`` or with redis-py's PubSub (``get_message`` on standalone,
``get_sharded_message`` per node on Cluster); CPU µs per message received.

The result is a table and one JSON line (also saved under ``bench/results/``).

Result (2026-12-01, 2 cores shared with other work: 0.3-1.8 cores of foreign load, so read the
CPU per call, not the calls/s; two runs of ``python -m bench.redis_client --backend standalone
--feed`` and ``--backend cluster --feed``, 1 s + 4 s a row): the client's CPU per call, wire vs
redis-py 8.1 with hiredis, the same calls, turn-sharing on for both:

    standalone  single closed 11-13 vs 16-19 µs (x1.45), @2000/s net 43-46 vs 55-62 (x1.3),
                batch closed 393-480 vs 752-882 (x1.85), @50/s net 441-676 vs 1044-1219 (x2)
    cluster     single closed 20-21 vs 44 µs (x2.1), @2000/s net 57-60 vs 91-101 (x1.65),
                batch closed 918-968 vs 2661-2689 (x2.8), @50/s net 1100-1131 vs 3124-3189 (x2.8)
    feed        6.0-6.8 vs 9.2-9.9 µs a message standalone, 6.9-7.0 vs 10.3-10.6 Cluster (x1.5)

Without the sharing (``redis-py-percall``) redis-py costs 76-83 µs a webhook on standalone;
on Cluster its connections fail under 64 concurrent callers (``AttributeError: 'NoneType'
object has no attribute 'writelines'`` from inside redis-py, 31 and 91 calls in 4 s). Redis's
own CPU per call is lower with the wire too (one connection, one read per batch). So: keep the
wire layer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import redis
import redis.utils
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.crc import key_slot

from bench.procs import Cores, cpu_seconds, machine_busy_seconds, pin
from bench.procs import Redis as RedisProcs
from gateway.backends.base import PresenceSettings
from gateway.backends.redis import RedisBroker, RedisStore, slot_tag
from gateway.errors import StoreUnavailable
from gateway.model import MAX_MARKS, PresenceEvent

APP = "bench"
PREFIX = "rc"
MAX_USERS_PER_CALL = 100  # as RedisStore's calls: one EVALSHA per 100 users (standalone)
RESULTS = Path(__file__).parent / "results"

# The key layout of the store's module doc, for the bench's users ("u<n>": nothing to escape),
# written out here so that the bench imports only the package's public names.


def user_channel(prefix: str, app: str, user: str) -> str:
    return f"{prefix}:c:{{{app}/{user}}}"


def slot_index(prefix: str, slot: int) -> str:
    return f"{prefix}:grace:{{{slot_tag(slot)}}}"


def parse_channel(prefix: str, channel: str | bytes) -> tuple[str, str] | None:
    """(app, user) of a bench channel, as the broker's reader parses each message's."""
    if isinstance(channel, bytes):
        channel = channel.decode()
    head = f"{prefix}:c:{{"
    if not channel.startswith(head) or not channel.endswith("}"):
        return None
    app, sep, user = channel[len(head) : -1].partition("/")
    return (app, user) if sep else None


def apply_source() -> str:
    """apply.lua's source, wherever the backend package keeps it now."""
    import gateway.backends as backends

    for base in ("gateway.backends.redis", "gateway.backends"):
        with contextlib.suppress(ModuleNotFoundError, FileNotFoundError, TypeError):
            found = resources.files(base).joinpath("lua/apply.lua")
            if found.is_file():
                return found.read_text()
    for path in Path(backends.__file__).parent.rglob("apply.lua"):
        return path.read_text()
    raise FileNotFoundError("apply.lua not found under gateway/backends")


# -- the redis-py side ----------------------------------------------------------------------


class RedisPyStore(RedisStore):
    """RedisStore whose script calls go through redis-py instead of ``redis_wire``.

    apply() (grouping, result decoding), the turn-sharing of concurrent applies (unless
    ``share`` is off) and the EVALSHA's keys and ARGV are the store's; only the client differs.
    Only presence events (no custom status), no webhooks out, no grace (the bench's settings).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        settings: PresenceSettings,
        prefix: str,
        sha: str,
        share: bool = True,
    ) -> None:
        super().__init__(client, settings=settings, prefix=prefix)
        self.sha = sha
        self.share = share
        self.redis = client
        windows = (
            settings.max_event_age_s * 1000,
            settings.session_retention_s * 1000,
            settings.last_seen_retention_s * 1000,
            settings.offline_grace_ms,
            MAX_MARKS,
            settings.future_skew_s * 1000,
            settings.max_devices_per_user,
        )
        self.windows = [b"%d" % n for n in windows]  # apply.lua's ARGV[2..8]

    async def _queued(self, users: list[Any]) -> list[list[Any]]:
        if self.share:
            return await super()._queued(users)
        return await self._run_users(b"apply", users)

    async def _run_users(self, mode: bytes, users: Sequence[Any]) -> list[list[Any]]:
        keys = [f"{self.prefix}:u:{{{tag}}}".encode() for _, tag, _, _ in users]
        cluster = isinstance(self.redis, RedisCluster)
        groups: list[list[int]]
        if cluster:
            by_slot: dict[int, list[int]] = {}
            for i, key in enumerate(keys):
                by_slot.setdefault(key_slot(key), []).append(i)
            groups = [
                idx[j : j + MAX_USERS_PER_CALL]
                for idx in by_slot.values()
                for j in range(0, len(idx), MAX_USERS_PER_CALL)
            ]
        else:
            every = list(range(len(users)))
            groups = [
                every[j : j + MAX_USERS_PER_CALL] for j in range(0, len(every), MAX_USERS_PER_CALL)
            ]
        calls: list[list[Any]] = []
        for idx in groups:
            index = f"{self.prefix}:grace".encode()
            if cluster:
                index = slot_index(self.prefix, key_slot(keys[idx[0]])).encode()
            call_keys: list[bytes] = [index]
            argv: list[bytes] = [mode, *self.windows]
            for i in idx:
                now, _, user, evs = users[i]
                key = keys[i]
                call_keys += [key, key.replace(b":u:", b":c:", 1)]
                argv += [json.dumps(user).encode(), b"%d" % now, b"", b"%d" % len(evs)]
                for ev in evs:
                    argv += [
                        ev.device.encode(),
                        b"%d" % ev.time,
                        b"1" if ev.online else b"0",
                        ev.platform.encode(),
                    ]
            calls.append(["EVALSHA", self.sha, len(call_keys), *call_keys, *argv])
        replies = await self._send(calls)
        out: list[list[Any]] = [[]] * len(users)
        for idx, flat in zip(groups, replies, strict=True):
            for j, i in enumerate(idx):
                out[i] = flat[4 * j : 4 * j + 4]
        return out

    async def _send(self, calls: list[list[Any]]) -> list[Any]:
        """One call as execute_command; several as a pipeline (non-transactional)."""
        if len(calls) == 1:
            return [await self.redis.execute_command(*calls[0])]
        if isinstance(self.redis, RedisCluster):
            cpipe = self.redis.pipeline()
            for call in calls:
                cpipe.execute_command(*call)
            return list(await cpipe.execute())
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.execute_command(*call)
            return list(await pipe.execute())

    async def close(self) -> None:
        await super().close()  # the unused wire's lanes (none) and the client


def redis_py_client(url: str, cluster: bool, connections: int) -> Redis | RedisCluster:
    """redis-py configured for the job: pool big enough for every caller, hiredis parser."""
    if cluster:
        return RedisCluster.from_url(url, max_connections=connections, socket_timeout=5.0)
    pool = BlockingConnectionPool.from_url(url, max_connections=connections, timeout=5.0)
    return Redis(connection_pool=pool, socket_timeout=5.0)


# -- the workloads ---------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    workload: str
    client: str
    callers: int
    calls_s: float = 0.0
    events_s: float = 0.0
    cpu_pct: float = 0.0  # this process, % of one core
    cpu_us_call: float = 0.0
    net_us_call: float = 0.0  # open loop: less the CPU of the idle arrival loop (idle_cpu)
    redis_us_call: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    foreign_cores: float = 0.0  # cores other processes kept busy meanwhile


class Meter:
    """CPU and wall time of a window: this process, Redis, and the rest of the machine."""

    def __init__(self, redis_pids: Sequence[int], extra_pids: Sequence[int] = ()) -> None:
        self.redis_pids = list(redis_pids)
        self.extra_pids = list(extra_pids)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.redis0 = sum(cpu_seconds(p) for p in self.redis_pids)
        self.extra0 = sum(cpu_seconds(p) for p in self.extra_pids)
        self.busy0 = machine_busy_seconds()

    def stop(self) -> None:
        self.wall = time.monotonic() - self.t0
        self.cpu = time.process_time() - self.cpu0
        self.redis = sum(cpu_seconds(p) for p in self.redis_pids) - self.redis0
        extra = sum(cpu_seconds(p) for p in self.extra_pids) - self.extra0
        busy = machine_busy_seconds() - self.busy0
        self.foreign = max(busy - self.cpu - self.redis - extra, 0.0) / self.wall


def events_for(
    workload: str, rng: random.Random, users: int, clock: Callable[[], int]
) -> list[PresenceEvent]:
    """One webhook's events: one (single) or 100 of 100 distinct users (batch)."""
    count = 1 if workload == "single" else 100
    picked = rng.sample(range(users), count)
    return [
        PresenceEvent(
            user=f"u{n}",
            device=f"d{n % 3}",
            platform=("ios", "android", "web")[n % 3],
            online=rng.random() < 0.6,
            time=clock(),
        )
        for n in picked
    ]


async def run_workload(
    store: RedisStore,
    row: Row,
    *,
    workload: str,
    users: int,
    warmup: float,
    duration: float,
    meter: Meter,
    rate: float = 0.0,
    idle: float = 0.0,
) -> None:
    """A closed loop of ``row.callers`` callers, or with ``rate`` an open loop of that many
    calls a second; fills ``row`` from the measured window."""
    measuring = False
    stop = False
    calls = events = 0
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    base = int(time.time() * 1000)
    start = time.monotonic()

    def clock() -> int:
        return base + int((time.monotonic() - start) * 1000)

    async def one(rng: random.Random) -> None:
        nonlocal calls, events
        evs = events_for(workload, rng, users, clock)
        t0 = time.perf_counter()
        try:
            await store.apply(APP, evs, clock())
        except StoreUnavailable as exc:  # apply turns every failure into this
            if measuring:
                errors[str(exc).split(":")[1].strip() if ":" in str(exc) else str(exc)] += 1
            await asyncio.sleep(0.01)
            return
        if measuring:
            calls += 1
            events += len(evs)
            latencies.append(time.perf_counter() - t0)

    async def caller(i: int) -> None:
        rng = random.Random(i)
        while not stop:
            await one(rng)

    async def arrivals() -> None:
        """Open loop: ``rate`` webhooks a second, each its own task (at most ``callers``)."""
        rng = random.Random(0)
        flying: set[asyncio.Task[None]] = set()
        t0, sent = time.monotonic(), 0
        try:
            while not stop:
                due = int((time.monotonic() - t0) * rate) - sent
                for _ in range(due):
                    sent += 1
                    if len(flying) >= row.callers:
                        if measuring:
                            errors["shed (too many in flight)"] += 1
                        continue
                    task = asyncio.create_task(one(rng))
                    flying.add(task)
                    task.add_done_callback(flying.discard)
                await asyncio.sleep(0.002)
        finally:
            await asyncio.gather(*flying, return_exceptions=True)

    if rate:
        tasks = [asyncio.create_task(arrivals())]
    else:
        tasks = [asyncio.create_task(caller(i)) for i in range(row.callers)]
    try:
        await asyncio.sleep(warmup)
        measuring = True
        meter.start()
        await asyncio.sleep(duration)
        meter.stop()
        measuring = False
    finally:
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
    row.calls_s = calls / meter.wall
    row.events_s = events / meter.wall
    row.cpu_pct = 100 * meter.cpu / meter.wall
    row.cpu_us_call = 1e6 * meter.cpu / max(calls, 1)
    row.net_us_call = 1e6 * (meter.cpu - (idle * meter.wall if rate else 0.0)) / max(calls, 1)
    row.redis_us_call = 1e6 * meter.redis / max(calls, 1)
    row.foreign_cores = meter.foreign
    latencies.sort()
    if latencies:
        row.p50_ms = 1000 * latencies[len(latencies) // 2]
        row.p99_ms = 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    row.errors = dict(errors)


async def idle_cpu(duration: float) -> float:
    """CPU seconds a second of the open loop's ticking with no call (its base cost)."""
    t0, c0 = time.monotonic(), time.process_time()
    for _ in range(int(duration / 0.002)):  # the tick of ``arrivals``
        await asyncio.sleep(0.002)
    return (time.process_time() - c0) / (time.monotonic() - t0)


async def load_scripts(url: str, cluster: bool, source: str) -> str:
    """SCRIPT LOAD apply.lua on every primary (as both clients find it after NOSCRIPT)."""
    shas: set[Any] = set()
    if cluster:
        cluster_client = RedisCluster.from_url(url)
        await cluster_client.initialize()
        for node in cluster_client.get_primaries():
            shas.add(
                await cluster_client.execute_command("SCRIPT", "LOAD", source, target_nodes=node)
            )
        await cluster_client.aclose()
    else:
        client = Redis.from_url(url)
        shas.add(await client.script_load(source))
        await client.aclose()
    [sha] = shas
    return sha.decode() if isinstance(sha, bytes) else str(sha)


def make_store(
    client_name: str, url: str, cluster: bool, sha: str, callers: int, prefix: str = PREFIX
) -> RedisStore:
    settings = PresenceSettings()  # no grace: apply is the script call alone (no hints)
    if client_name == "wire":
        return RedisStore.from_url(url, cluster=cluster, settings=settings, prefix=prefix)
    client = redis_py_client(url, cluster, connections=max(2 * callers, 64))
    return RedisPyStore(
        client,
        settings=settings,
        prefix=prefix,
        sha=sha,
        share=client_name != "redis-py-percall",
    )


async def check_same_replies(url: str, cluster: bool, sha: str) -> None:
    """Both clients' calls do the same: the same events give the same published states."""
    evs = [PresenceEvent(f"chk{i}", "d", "ios", True, 1_763_700_000_000 + i) for i in range(7)]
    got = []
    for name in ("wire", "redis-py"):
        store = make_store(name, url, cluster, sha, 8, prefix=f"chk{name.replace('-', '')}")
        try:
            result = await store.apply(APP, evs, 1_763_700_000_010)
        finally:
            await store.close()
        got.append([(s.user, s.status, s.since, s.v) for s in result.published])
    if got[0] != got[1] or len(got[0]) != len(evs):
        raise SystemExit(f"the clients' script calls differ: {got}")


# -- the feed ---------------------------------------------------------------------------------


def publisher_main(argv: Sequence[str]) -> None:
    """``--publish URL CLUSTER USERS RATE``: SPUBLISH round-robin at RATE/s, raw sockets."""
    url, cluster, users, rate = argv[0], argv[1] == "1", int(argv[2]), float(argv[3])
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    routes: dict[int, int] = {}
    if cluster:
        admin = redis.RedisCluster(host="127.0.0.1", port=port)
        for n in range(users):
            ch = user_channel(PREFIX, APP, f"u{n}").encode()
            routes[n] = int(admin.get_node_from_key(ch).port)  # type: ignore[no-untyped-call]
        admin.close()
    else:
        routes = dict.fromkeys(range(users), port)
    socks = {p: socket.create_connection(("127.0.0.1", p)) for p in set(routes.values())}
    payload = (
        b'{"user":"u0","status":"online","since":1763700000000,'
        b'"devices":[{"platform":"ios","since":1763700000000}],"v":1763700000000,"custom":null}'
    )
    cmds = []
    for n in range(users):
        ch = user_channel(PREFIX, APP, f"u{n}").encode()
        cmds.append(
            (routes[n], b"*3\r\n$8\r\nSPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
                len(ch), ch, len(payload), payload))
        )  # fmt: skip
    tick = 0.005
    per_tick = max(1, int(rate * tick))
    n = 0
    next_at = time.monotonic()
    while True:
        batch: dict[int, list[bytes]] = {}
        for _ in range(per_tick):
            p, cmd = cmds[n % users]
            batch.setdefault(p, []).append(cmd)
            n += 1
        for p, parts in batch.items():
            sock = socks[p]
            sock.sendall(b"".join(parts))
            want = 0
            got = b""
            want = len(parts)
            while got.count(b"\r\n") < want:  # ":<subscribers>\r\n" per command
                got += sock.recv(65536)
        next_at += tick
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()


class FeedReceiver:
    """Counts the messages one client receives on the channels of users u0..u<n>."""

    def __init__(self) -> None:
        self.messages = 0
        self.subscribed = asyncio.Event()


async def feed_wire(
    url: str, cluster: bool, users: int, rx: FeedReceiver
) -> Callable[[], Awaitable[None]]:
    broker = RedisBroker(url, cluster=cluster, prefix=PREFIX)

    def on_message(app: str, user: str, payload: bytes) -> None:
        rx.messages += 1

    broker.set_handlers(on_message, lambda: None)
    await broker.start()
    await broker.subscribe(APP, [f"u{n}" for n in range(users)])
    return broker.close


async def feed_redis_py(
    url: str, cluster: bool, users: int, rx: FeedReceiver
) -> Callable[[], Awaitable[None]]:
    channels = [user_channel(PREFIX, APP, f"u{n}") for n in range(users)]
    tasks: list[asyncio.Task[None]] = []

    def handle(msg: dict[str, Any] | None) -> None:
        smessage = msg is not None and msg["type"] in ("smessage", b"smessage")
        if smessage and parse_channel(PREFIX, msg["channel"]) is not None:  # type: ignore[index]
            rx.messages += 1

    if cluster:
        client = RedisCluster.from_url(url)
        await client.initialize()
        ps = client.pubsub()
        for ch in channels:
            await ps.ssubscribe(ch)
        nodes = [client.get_node(node_name=name) for name in list(ps.node_pubsub_mapping)]

        async def read_node(node: Any) -> None:
            while True:
                handle(
                    await ps.get_sharded_message(
                        ignore_subscribe_messages=True, timeout=1.0, target_node=node
                    )
                )

        tasks = [asyncio.create_task(read_node(n)) for n in nodes if n is not None]
    else:
        sclient = Redis.from_url(url)
        sps = sclient.pubsub()
        await sps.ssubscribe(*channels)

        async def read() -> None:
            while True:
                handle(await sps.get_message(ignore_subscribe_messages=True, timeout=1.0))

        tasks = [asyncio.create_task(read())]

    async def close() -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if cluster:
            await ps.aclose()
            await client.aclose()
        else:
            await sps.aclose()  # type: ignore[no-untyped-call]
            await sclient.aclose()

    return close


async def run_feed(
    backend: str, client_name: str, url: str, procs: RedisProcs, args: argparse.Namespace,
    cores: Cores,
) -> Row:  # fmt: skip
    cluster = backend == "cluster"
    row = Row(backend, f"feed {args.feed_rate:.0f}/s", client_name, args.feed_users)
    rx = FeedReceiver()
    subscribe = feed_wire if client_name == "wire" else feed_redis_py
    close = await subscribe(url, cluster, args.feed_users, rx)
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.redis_client", "--publish", url, "1" if cluster else "0",
        str(args.feed_users), str(args.feed_rate), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    pin(publisher.pid, cores.server)
    meter = Meter(procs.pids, [publisher.pid])
    try:
        await asyncio.sleep(args.warmup)
        before = rx.messages
        meter.start()
        await asyncio.sleep(args.duration)
        meter.stop()
        got = rx.messages - before
    finally:
        if publisher.returncode is None:
            publisher.terminate()  # our own child, by its pid
        else:
            row.errors["publisher exited early"] = 1
        await publisher.wait()
        await close()
    row.calls_s = got / meter.wall
    row.events_s = row.calls_s
    row.cpu_pct = 100 * meter.cpu / meter.wall
    row.cpu_us_call = row.net_us_call = 1e6 * meter.cpu / max(got, 1)
    row.redis_us_call = 1e6 * meter.redis / max(got, 1)
    row.foreign_cores = meter.foreign
    return row


# -- the run ----------------------------------------------------------------------------------


def print_table(rows: Sequence[Row]) -> None:
    head = (
        f"{'backend':<10} {'workload':<14} {'client':<17} {'callers':>7} {'calls/s':>9} "
        f"{'events/s':>9} {'CPU%':>5} {'µs/call':>8} {'net µs':>8} {'redis µs':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'foreign':>7}  errors"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        errs = ", ".join(f"{k}×{v}" for k, v in r.errors.items()) or "0"
        print(
            f"{r.backend:<10} {r.workload:<14} {r.client:<17} {r.callers:>7} {r.calls_s:>9.0f} "
            f"{r.events_s:>9.0f} {r.cpu_pct:>5.0f} {r.cpu_us_call:>8.1f} {r.net_us_call:>8.1f} "
            f"{r.redis_us_call:>8.1f} "
            f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.foreign_cores:>7.2f}  {errs}"
        )


async def run_backend(backend: str, args: argparse.Namespace, cores: Cores) -> list[Row]:
    cluster = backend == "cluster"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-redis-client-") as tmp:
        procs = RedisProcs.start(Path(tmp), cores.server if cores.pinned else None, 3 * cluster)
        try:
            url = procs.url
            sha = await load_scripts(url, cluster, apply_source())
            await check_same_replies(url, cluster, sha)
            idle = await idle_cpu(args.duration) if args.rates else 0.0
            for workload, rate in plan(args):
                callers = args.callers if workload == "single" else args.batch_callers
                for client_name in args.clients:
                    if client_name == "redis-py-percall" and workload != "single":
                        continue
                    store = make_store(client_name, url, cluster, sha, callers)
                    label = f"{workload} @{rate:g}/s" if rate else f"{workload} closed"
                    row = Row(backend, label, client_name, callers)
                    try:
                        await run_workload(
                            store,
                            row,
                            workload=workload,
                            users=args.users,
                            warmup=args.warmup,
                            duration=args.duration,
                            meter=Meter(procs.pids),
                            rate=rate,
                            idle=idle,
                        )
                    finally:
                        await store.close()
                    rows.append(row)
                    print_table([row]) if args.verbose else None
            if args.feed:
                for client_name in ("wire", "redis-py"):
                    rows.append(await run_feed(backend, client_name, url, procs, args, cores))
        finally:
            procs.stop()
    return rows


def plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(workload, rate) of each row group: closed loops, then the open-loop rates."""
    out: list[tuple[str, float]] = [(w, 0.0) for w in args.workload]
    for spec in args.rates:
        workload, _, rate = spec.partition("@")
        out.append((workload, float(rate)))
    return out


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.redis_client", description=__doc__.split(
        "\n")[0])  # fmt: skip
    p.add_argument("--backend", choices=["standalone", "cluster", "both"], default="both")
    p.add_argument("--workload", default="single,batch", help="single,batch")
    p.add_argument("--clients", default="wire,redis-py,redis-py-percall")
    p.add_argument("--callers", type=int, default=64, help="single: concurrent callers")
    p.add_argument("--batch-callers", type=int, default=16, help="batch: concurrent callers")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument(
        "--rates",
        default="single@2000,batch@50",
        help="open-loop rows, workload@calls-per-second, comma-separated ('' for none)",
    )
    p.add_argument("--feed", action="store_true", help="also the SSUBSCRIBE receive path")
    p.add_argument("--feed-users", type=int, default=200)
    p.add_argument("--feed-rate", type=float, default=20000.0)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    args = p.parse_args(argv)
    args.workload = [w for w in args.workload.split(",") if w]
    args.clients = [c for c in args.clients.split(",") if c]
    args.rates = [r for r in args.rates.split(",") if r]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    if raw[:1] == ["--publish"]:
        publisher_main(raw[1:])
        return 0
    args = parse(raw)
    cores = Cores.detect(pin=not args.no_pin)
    if cores.pinned:
        pin(0, cores.generator)
    load = os.getloadavg()
    backends = ["standalone", "cluster"] if args.backend == "both" else [args.backend]
    rows: list[Row] = []
    for backend in backends:
        rows += asyncio.run(run_backend(backend, args, cores))
    print(
        f"nproc {os.cpu_count()}, {cores.describe()}, load before {load[0]:.2f}; "
        f"redis-py {redis.__version__}, hiredis "
        f"{'on' if redis.utils.HIREDIS_AVAILABLE else 'OFF'}; "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per row"
    )
    print_table(rows)
    out = {
        "bench": "redis_client",
        "nproc": os.cpu_count(),
        "cores": cores.describe(),
        "load_before": load[0],
        "redis_py": redis.__version__,
        "rows": [asdict(r) for r in rows],
    }
    line = json.dumps(out)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"redis_client-{int(time.time())}.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
