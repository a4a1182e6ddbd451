"""``python -m bench.heapshot``: what an idle connection holds, per allocation site.

Runs the gateway in this process (memory backend, the bench's app, uvicorn with the gateway's
own protocols), starts ``tracemalloc``, opens ``--conns`` real WebSocket connections from a
child process (hello, then watch ``--watch`` of ``--users`` users, as ``bench conns``), and
prints the allocation sites whose memory grew, in bytes and blocks per connection, plus the
tracemalloc total per connection. A dev tool: nothing of it is in the gateway itself.

    python -m bench.heapshot --conns 5000 --top 15
    python -m bench.heapshot --conns 5000 --group traceback --frames 6   # who called
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import random
import socket
import sys
import time
import tracemalloc
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import uvicorn

from bench.procs import LOOPBACK
from bench.target import APP_ID, CLIENT_SECRET, Target
from bench.ws import WsConn
from gateway import cli, config, tokens
from gateway.app import create_app

WARM = 20  # connections opened before the first snapshot (lazy module state, caches)


class _Msg(msgspec.Struct):
    type: str


_decode = msgspec.json.Decoder(_Msg).decode


class _Watcher:
    """hello, watch, then idle; ``done`` resolves at the snapshot (or a close)."""

    __slots__ = ("done", "hello", "stage", "users", "ws")

    def __init__(self, n: int, users: list[str], done: asyncio.Future[None]) -> None:
        token = tokens.issue(CLIENT_SECRET, APP_ID, f"h{n}", ttl_s=6 * 3600)
        self.hello = msgspec.json.encode({"type": "hello", "token": token})
        self.users = users
        self.done = done
        self.ws: WsConn | None = None
        self.stage = "tcp"

    def on_open(self, ws: WsConn) -> None:
        self.ws = ws
        ws.send_text(self.hello)

    def on_text(self, payload: bytes) -> None:
        kind = _decode(payload).type
        if kind == "welcome" and self.ws is not None:
            self.ws.send_text(msgspec.json.encode({"type": "watch", "id": 1, "users": self.users}))
        elif kind in ("snapshot", "error") and not self.done.done():
            self.done.set_result(None)

    def on_close(self, code: int) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed {code}"))


async def _open(port: int, first: int, count: int, args: argparse.Namespace) -> list[WsConn]:
    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed + first)
    gate = asyncio.Semaphore(128)
    path = f"/v1/apps/{APP_ID}/ws"

    async def one(n: int) -> WsConn:
        async with gate:
            users = [f"u{u}" for u in rng.sample(range(args.users), args.watch)]
            session = _Watcher(n, users, loop.create_future())
            _, conn = await loop.create_connection(
                lambda: WsConn(port, path, session), LOOPBACK, port
            )
            await asyncio.wait_for(session.done, 30)
            return conn

    return list(await asyncio.gather(*(one(first + i) for i in range(count))))


def _client(port: int, args: argparse.Namespace, pipe: Connection) -> None:
    """The child: WARM connections, then the rest on the parent's word; hold until told."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        held = await _open(port, 0, WARM, args)
        pipe.send("warm")
        await loop.run_in_executor(None, pipe.recv)
        held += await _open(port, WARM, args.conns, args)
        pipe.send("ready")
        while not await loop.run_in_executor(None, pipe.poll, 10.0):
            for conn in held:  # keep them alive past the hub's idle sweep
                if conn.open:
                    conn.send_text(b'{"type":"ping","id":1}')
        pipe.recv()

    _run(main(), args.loop)


def _report(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, args: argparse.Namespace
) -> None:
    n = args.conns
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    stats = after.compare_to(before, args.group)
    total = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    print(
        f"tracemalloc growth over {n} connections: {total / n:,.0f} B/conn in "
        f"{blocks / n:.1f} blocks/conn (gc objects frozen: {gc.get_freeze_count():,})"
    )
    print(f"{'bytes/conn':>10} {'blocks/conn':>11}  site")
    for stat in stats[: args.top]:
        frames = stat.traceback.format(limit=args.frames if args.group == "traceback" else 1)
        site = "\n                         ".join(line.strip() for line in frames if line.strip())
        print(f"{stat.size_diff / n:>10,.0f} {stat.count_diff / n:>11.2f}  {site}")


async def _hear(pipe: Connection, child: Any) -> object:
    """The child's next word; SystemExit if it died first."""
    loop = asyncio.get_running_loop()
    while not await loop.run_in_executor(None, pipe.poll, 0.5):
        if not child.is_alive():
            raise SystemExit(f"the client process ended ({child.exitcode})")
    return pipe.recv()


async def _snapshots(pipe: Connection, child: Any, args: argparse.Namespace) -> None:
    """tracemalloc before and after opening the connections; the growth per site."""
    tracemalloc.start(args.frames)
    await asyncio.sleep(1.5)  # past a heap-keeper round
    gc.collect()
    before = tracemalloc.take_snapshot()
    started = time.monotonic()
    pipe.send("go")
    assert await _hear(pipe, child) == "ready"
    seconds = time.monotonic() - started
    print(f"{args.conns} connections ready in {seconds:.1f} s (under tracemalloc)", file=sys.stderr)
    await asyncio.sleep(args.settle)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    _report(before, after, args)


async def _pauses(pipe: Connection, child: Any, args: argparse.Namespace) -> None:
    """Every collector pause while the connections are opened (no tracemalloc)."""
    pauses: list[tuple[float, int, float, int]] = []  # ms, generation, at s, collected
    started = time.perf_counter()
    began = [0.0]

    def timing(phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            began[0] = now
        else:
            pauses.append(
                ((now - began[0]) * 1000, info["generation"], now - started, info["collected"])
            )

    await asyncio.sleep(1.5)  # past a heap-keeper round, as bench conns
    gc.callbacks.append(timing)
    try:
        pipe.send("go")
        assert await _hear(pipe, child) == "ready"
        seconds = time.perf_counter() - started
        await asyncio.sleep(args.settle)
    finally:
        gc.callbacks.remove(timing)
    print(f"{args.conns} connections ready in {seconds:.1f} s; frozen {gc.get_freeze_count():,}")
    for gen in (0, 1, 2):
        mine = [p[0] for p in pauses if p[1] == gen]
        if mine:
            worst, total = max(mine), sum(mine)
            print(f"generation {gen}: {len(mine)} pauses, max {worst:.1f} ms, total {total:.0f} ms")
    print(
        "longest:",
        ", ".join(
            f"{ms:.1f} ms (gen {g} at {at:.1f} s, {n} collected)"
            for ms, g, at, n in sorted(pauses, reverse=True)[: args.top]
        ),
    )


async def _serve(args: argparse.Namespace) -> None:
    settings = config.parse(Target(max_watch=1000).config(None), "<heapshot>")
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {**cli.uvicorn_options(), "timeout_graceful_shutdown": 2}
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", **options))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 (uvicorn has no event for it)
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    child = multiprocessing.get_context("spawn").Process(target=_client, args=(port, args, theirs))
    child.start()
    try:
        assert await _hear(ours, child) == "warm"
        if args.gc:
            await _pauses(ours, child, args)
        else:
            await _snapshots(ours, child, args)
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        await loop.run_in_executor(None, child.join, 10)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.heapshot", description=__doc__)
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--watch", type=int, default=10)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--frames", type=int, default=1, help="traceback depth kept")
    parser.add_argument("--group", choices=("lineno", "traceback", "filename"), default="lineno")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds idle before the snapshot"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gc", action="store_true", help="report collector pauses during setup, not memory"
    )
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvicorn's default: uvloop"
    )
    args = parser.parse_args(argv)
    _run(_serve(args), args.loop)


def _run(main: Coroutine[Any, Any, None], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


if __name__ == "__main__":
    main()
