"""``python -m bench heal``: reconciliation heals what dropped webhooks broke (SPEC 8).

One gateway process (on the run's Redis, or ``--backend memory``) with two sets of apps fed
the same webhooks: ``heal-<provider>`` reconcile with the simulator's pull APIs
(``interval_s`` 10), ``noheal-<provider>`` have no reconcile tables. One provider per app:
the checks judge every device of a user as the checking provider's
(``gateway/reconcile/rules.py``), so an app takes presence from one IM provider. The
simulator (``gateway.simulate``) drives ``--users`` users spread over Tencent IM, RongCloud
and OpenIM at ``--rate`` webhooks/s for ``--duration`` s and drops 5 % of the webhooks
(``Dropper``: never sent to either set; its model, which the pull APIs answer from, still
has the change). Every user is watched (one WebSocket connection per app, ``max_watch``
users each), since reconciliation re-checks only the users shown online and the watched ones.
Once a second each app's query API is compared with the model
(``gateway.simulate.heal.compare``: users whose online/offline status is wrong); after the
last webhook it goes on until the ``heal`` set shows 0 wrong twice in a row or
``HEAL_LIMIT_S``.

Without the reconcile tables wired into the config (the scheduler), only ``noheal`` runs and
the output says so. The apps and their config: ``bench/heal_target.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.heal_target import (
    HEAL,
    INTERVAL_S,
    NOHEAL,
    HealTarget,
    app_id,
    reconcile_wired,
    sim_target,
)
from bench.procs import LOOPBACK, BenchError
from bench.runner import Bench, Window
from bench.scenarios.common import Result, window_rows
from bench.target import API_KEY, CLIENT_SECRET, Target
from gateway.simulate.behaviour import Simulation
from gateway.simulate.delivery import Dropper, clock_ms, user_ids
from gateway.simulate.heal import PULL_PROVIDERS, Comparison, compare, pull_calls, serve_model
from gateway.simulate.requests import build
from gateway.tokens import issue

DROP = 0.05
HEAL_LIMIT_S = 60.0  # after the last webhook
SAMPLE_S = 1.0
PRINT_EVERY_S = 5.0
IN_FLIGHT = 8  # webhook requests at once (each delivery goes to both apps)
PING_S = 10.0


def merged(parts: list[Comparison]) -> Comparison:
    """Several apps' comparisons as one."""
    return Comparison(
        sum(c.users for c in parts),
        tuple(u for c in parts for u in c.ghosts),
        tuple(u for c in parts for u in c.missing),
        sum(c.platforms_off for c in parts),
    )


@dataclass
class Sample:
    t: float  # s since the first webhook
    sending: bool
    wrong: dict[str, Comparison]
    pull_calls: int


@dataclass
class Run:
    """What the async half measured."""

    samples: list[Sample] = field(default_factory=list)
    webhooks: int = 0  # deliveries the model made
    dropped: int = 0
    posted: int = 0  # requests (deliveries x apps) answered 2xx
    errors: int = 0
    send_s: float = 0.0
    calls_sending: dict[str, int] = field(default_factory=dict)
    calls_total: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    closed: int = 0  # watcher connections closed by the server


async def _watch(
    port: int, app: str, users: list[str], ready: asyncio.Event, stop: asyncio.Event, run: Run
) -> None:
    """One WebSocket connection watching ``users`` of ``app`` until ``stop``: ``ready`` once
    the snapshot came, then frames read and forgotten, an application ping every PING_S."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    token = issue(f"{CLIENT_SECRET}-{app}", app, f"bench-watcher-{app}", ttl_s=3600)
    uri = f"ws://{LOOPBACK}:{port}/v1/apps/{app}/ws"
    async with connect(uri, max_size=2**22, ping_interval=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await ws.send(json.dumps({"type": "watch", "id": 1, "users": users}))
        async with asyncio.timeout(30):
            while json.loads(await ws.recv()).get("type") != "snapshot":
                pass
        ready.set()

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        n = 1
        try:
            while not reader.done() and not await _stopped(stop, PING_S):
                n += 1
                await ws.send(json.dumps({"type": "ping", "id": n}))
        except ConnectionClosed:
            pass
        if reader.done():
            run.closed += 1
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await reader


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


async def _measure(
    bench: Bench, args: argparse.Namespace, sim: Simulation, reconcile: bool
) -> tuple[Run, dict[str, Any]]:
    run = Run()
    kinds = [HEAL, NOHEAL] if reconcile else [NOHEAL]
    members = {
        p: [u for u in sim.expected() if sim.truth(p)(u) is not None] for p in PULL_PROVIDERS
    }
    dropper = Dropper(DROP, seed=args.seed + 1)
    async with serve_model(sim, sim_target(HEAL)) as pull:
        target = HealTarget(pull.url, reconcile, log_level=args.server_log_level)
        (server,) = await asyncio.to_thread(bench.start_servers, target, 1)
        base = f"http://{LOOPBACK}:{server.port}"
        stop_watch = asyncio.Event()
        limits = httpx.Limits(
            max_connections=IN_FLIGHT * 2, max_keepalive_connections=IN_FLIGHT * 2
        )
        async with (
            httpx.AsyncClient(base_url=base, timeout=10.0, limits=limits) as client,
            asyncio.TaskGroup() as watchers,
        ):
            ready = []
            for kind in kinds:
                for provider, users in members.items():
                    for i in range(0, len(users), 1000):
                        ready.append(asyncio.Event())
                        app, chunk = app_id(kind, provider), users[i : i + 1000]
                        watch = _watch(server.port, app, chunk, ready[-1], stop_watch, run)
                        watchers.create_task(watch)
            try:
                async with asyncio.timeout(60):
                    for event in ready:
                        await event.wait()
                window = Window(bench).start()
                await _drive(client, args, sim, dropper, kinds, members, pull.fakes, run)
                win = window.stop()
            finally:
                stop_watch.set()
        if reconcile:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            async with httpx.AsyncClient(base_url=base, timeout=5.0, headers=auth) as client:
                for provider in PULL_PROVIDERS:
                    r = await client.get(f"/v1/apps/{app_id(HEAL, provider)}/reconcile")
                    ok = r.status_code == 200
                    stats = r.json().get("providers", {}).get(provider) if ok else None
                    run.stats[provider] = stats or {"http_status": r.status_code}
        run.calls_total = pull_calls(pull.fakes)
    run.webhooks, run.dropped = dropper.offered, dropper.dropped
    return run, win


async def _drive(
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    sim: Simulation,
    dropper: Dropper,
    kinds: list[str],
    members: dict[str, list[str]],
    fakes: Any,
    run: Run,
) -> None:
    """Send at the rate for the duration (dropping), then sample until healed or the limit."""
    targets = {app_id(k, p): sim_target(app_id(k, p)) for k in kinds for p in PULL_PROVIDERS}
    gate = asyncio.Semaphore(IN_FLIGHT)
    inflight: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    sending = True

    async def post(app: str, d: Any) -> None:
        """One request; ``send`` took its slot of the gate."""
        try:
            req = build(d, targets[app], clock_ms())
            r = await client.request(
                req.method, req.path, params=req.query, headers=req.headers, content=req.body
            )
        except httpx.HTTPError:
            run.errors += 1
            return
        finally:
            gate.release()
        ok = 200 <= r.status_code < 300
        run.posted += ok
        run.errors += not ok

    async def send(deliveries: list[Any]) -> None:
        for d in deliveries:
            if dropper.drops(d):
                continue
            for kind in kinds:
                await gate.acquire()  # at most IN_FLIGHT requests at once
                task = asyncio.create_task(post(app_id(kind, d.provider), d))
                inflight.add(task)
                task.add_done_callback(inflight.discard)

    async def sample() -> Sample:
        expected = sim.expected()
        wrong = {}
        for kind in kinds:
            parts = [
                await compare(client, app_id(kind, p), API_KEY, {u: expected[u] for u in users})
                for p, users in members.items()
            ]
            wrong[kind] = merged(parts)
        calls = sum(pull_calls(fakes).values())
        return Sample(round(time.monotonic() - started, 1), sending, wrong, calls)

    async def sampler(stop: asyncio.Event) -> None:
        while True:
            run.samples.append(await sample())
            if await _stopped(stop, SAMPLE_S):
                return

    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop_sampling))
    try:
        interval = 1.0 / args.rate
        next_at = started
        end = started + args.duration
        while (now := time.monotonic()) < end:
            if next_at > now:
                await asyncio.sleep(next_at - now)
                continue
            next_at = max(next_at + interval, time.monotonic() - interval)
            await send(sim.step(clock_ms()))
        await send(sim.flush(clock_ms()))  # the late ones still held back
        await asyncio.gather(*inflight)
        run.send_s = time.monotonic() - started
        run.calls_sending = pull_calls(fakes)
        sending = False
        healed = 0
        deadline = time.monotonic() + HEAL_LIMIT_S
        while time.monotonic() < deadline and HEAL in kinds:
            await asyncio.sleep(SAMPLE_S)
            last = run.samples[-1]
            healed = healed + 1 if not last.sending and last.wrong[HEAL].wrong == 0 else 0
            if healed >= 2:
                break
        if HEAL not in kinds:  # the without half alone: watch it stay wrong a while
            await asyncio.sleep(2 * INTERVAL_S)
    finally:
        stop_sampling.set()
        await sampling


def heal(bench: Bench, args: argparse.Namespace, target: Target) -> Result:
    """Dropped webhooks, and the share shown wrongly with and without reconciliation."""
    if target.name != "gateway":
        raise BenchError("the heal scenario runs the gateway only (no --vs / --target)")
    why_not = reconcile_wired()
    reconcile = why_not is None
    if args.backend == "redis":
        bench.start_redis()
    sim = Simulation(user_ids(args.users), PULL_PROVIDERS, args.seed)
    run, win = asyncio.run(_measure(bench, args, sim, reconcile))
    bench.check_alive()
    return _result(args, run, win, reconcile, why_not)


def _healed_at(run: Run) -> Sample | None:
    """The first sample after sending from which ``heal`` showed 0 wrong to the end."""
    found = None
    for s in run.samples:
        if s.sending or HEAL not in s.wrong:
            continue
        found = (found or s) if s.wrong[HEAL].wrong == 0 else None
    return found


def _pct(c: Comparison | None) -> str:
    return "-" if c is None else f"{100 * c.share:5.2f} % ({c.wrong})"


def _result(
    args: argparse.Namespace,
    run: Run,
    win: dict[str, Any],
    reconcile: bool,
    why_not: str | None,
) -> Result:
    res = Result()
    res.section(
        f"heal: {args.users} users (tencent, rongcloud, openim), {args.rate:g} webhooks/s for "
        f"{args.duration:g} s, {100 * DROP:g} % dropped, reconcile interval_s {INTERVAL_S:g}"
    )
    if not reconcile:
        res.lines.append(
            "  WITHOUT HALF ONLY: the config refuses [apps.<provider>.reconcile] tables (the "
            f"scheduler has not landed): {why_not}"
        )
    res.row("webhooks made / dropped", f"{run.webhooks} / {run.dropped}")
    res.row(
        "requests answered 2xx / errors",
        f"{run.posted} / {run.errors} (each sent webhook, once per set)",
    )
    res.row("sending took", f"{run.send_s:.1f} s")
    res.lines.append("")
    res.lines.append(
        f"  {'t (s)':>6}  {'phase':<8} {'wrong: heal':>20} {'wrong: noheal':>20} {'pull calls':>10}"
    )
    printed = -PRINT_EVERY_S
    healed = _healed_at(run)
    for i, s in enumerate(run.samples):
        last = i + 1 == len(run.samples)
        last_sending = s.sending and (last or not run.samples[i + 1].sending)
        if s.t - printed < PRINT_EVERY_S and not (last or last_sending or s is healed):
            continue
        printed = s.t
        res.lines.append(
            f"  {s.t:6.1f}  {'sending' if s.sending else 'after':<8} "
            f"{_pct(s.wrong.get(HEAL)):>20} {_pct(s.wrong.get(NOHEAL)):>20} {s.pull_calls:>10}"
        )
    heal_s = None if healed is None else round(healed.t - run.send_s, 1)
    end = run.samples[-1] if run.samples else None
    without = healed.wrong[NOHEAL] if healed is not None else None
    res.lines.append("")
    if reconcile:
        res.row(
            "time to 0 wrong after the last webhook",
            f"{heal_s:g} s" if heal_s is not None else f"not within {HEAL_LIMIT_S:g} s",
        )
        res.row("wrong then without reconciliation", _pct(without))
        res.row("pull-API calls while sending", _calls(run.calls_sending))
        res.row("pull-API calls in all", _calls(run.calls_total))
        for provider, stats in run.stats.items():
            res.row(f"GET /reconcile of heal-{provider}", json.dumps(stats))
    else:
        res.row("time to 0 wrong with reconciliation", "needs the scheduler")
    if end is not None:
        off = " / ".join(str(end.wrong[k].platforms_off) for k in end.wrong)
        res.row(f"online on other platforms ({' / '.join(end.wrong)})", off)
    res.row("watcher connections closed by the server", run.closed)
    window_rows(res, win, ["gateway"])
    res.data = {
        "users": args.users,
        "rate": args.rate,
        "drive_s": args.duration,
        "drop": DROP,
        "interval_s": INTERVAL_S,
        "with_reconcile": reconcile,
        "webhooks": run.webhooks,
        "dropped": run.dropped,
        "errors": run.errors,
        "heal_s": heal_s,
        "wrong_without_at_heal": None if without is None else without.wrong,
        "wrong_without_end": None if end is None else end.wrong[NOHEAL].wrong,
        "pull_calls_sending": run.calls_sending,
        "pull_calls": run.calls_total,
        "reconcile_stats": run.stats or None,
        "samples": [
            [s.t, s.sending, *(s.wrong[a].wrong if a in s.wrong else None for a in (HEAL, NOHEAL))]
            for s in run.samples
        ],
        "window": win,
    }
    return res


def _calls(calls: dict[str, int]) -> str:
    return ", ".join(f"{p} {n}" for p, n in calls.items()) + f" (sum {sum(calls.values())})"
