"""The ``presence-gateway simulate`` command: checks its arguments, runs the sender and the
reconciliation side (``--serve-pull-api``, ``--check-every``, ``--watch-all``), handles Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading

from gateway.simulate.behaviour import Simulation
from gateway.simulate.delivery import PROVIDER_NAMES, Delivery, user_ids
from gateway.simulate.requests import Target
from gateway.simulate.sender import (
    Options,
    Result,
    format_dropped,
    format_result,
    run,
    stopped,
    to_stderr,
)


def _problem(args: argparse.Namespace) -> str | None:
    if not args.url.startswith(("http://", "https://")):
        return "--url must start with http:// or https://"
    port, linger = args.serve_pull_api, args.linger
    checks = [
        (args.users >= 1, "--users must be at least 1"),
        (args.rate > 0, "--rate must be > 0"),
        (args.duration is None or args.duration >= 0, "--duration must be >= 0"),
        (args.count is None or args.count >= 1, "--count must be at least 1"),
        (args.concurrency >= 1, "--concurrency must be at least 1"),
        (0 <= args.drop <= 1, "--drop must be a fraction within [0, 1]"),
        (port is None or 0 <= port <= 65535, "--serve-pull-api must be a port (0: a free one)"),
        (args.check_every is None or args.check_every > 0, "--check-every must be > 0"),
        (linger is None or linger >= 0, "--linger must be >= 0"),
        (
            linger is None or port is not None or args.check_every is not None,
            "--linger needs --serve-pull-api or --check-every",
        ),
    ]
    return next((message for ok, message in checks if not ok), None)


def _target(args: argparse.Namespace) -> Target:
    pulled = {
        name: getattr(args, name)
        for name in ("tencent_admin", "tencent_secret_key", "openim_admin_user", "openim_secret")
        if getattr(args, name) is not None
    }
    return Target(
        app=args.app,
        tencent_sdkappid=args.tencent_sdkappid,
        tencent_token=args.tencent_token,
        rongcloud_app_key=args.rongcloud_app_key,
        rongcloud_app_secret=args.rongcloud_app_secret,
        openim_token=args.openim_token,
        standard_secret=args.standard_secret,
        easemob_appkey=args.easemob_appkey,
        easemob_secret=args.easemob_secret,
        netease_app_key=args.netease_app_key,
        netease_app_secret=args.netease_app_secret,
        wukongim_token=args.wukongim_token,
        **pulled,
    )


async def command(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """``simulate`` once its arguments are valid, until done or ``stop`` (no signals here)."""
    from gateway.simulate.heal import check_every, config_hint, pull_calls, serve_model, watch_all

    providers = PROVIDER_NAMES if args.provider == "mixed" else (args.provider,)
    sim = Simulation(user_ids(args.users), providers, args.seed)
    target = _target(args)
    options = Options(
        rate=args.rate,
        duration_s=args.duration or None,
        count=args.count,
        concurrency=args.concurrency,
        drop=args.drop,
        drop_seed=None if args.seed is None else args.seed + 1,
    )
    url = args.url.rstrip("/")
    limits = [f"{args.duration:g} s"] if args.duration else []
    limits += [f"{args.count} webhooks"] if args.count else []
    how_long = "for " + " or ".join(limits) if limits else "until Ctrl-C"
    dropping = f", dropping {100 * args.drop:g} % of them" if args.drop else ""
    to_stderr(
        f"simulating {args.users} users ({', '.join(providers)}) at {args.rate:g} webhooks/s "
        f"{how_long}{dropping} -> {url}, app {args.app}"
    )
    if len(providers) > args.users:
        left_out = ", ".join(providers[args.users :])
        to_stderr(f"note: one provider per user, so no users for {left_out}; try --users 7")

    def show(result: Result) -> None:
        if not args.quiet or not 200 <= result.status < 300:
            print(format_result(result), flush=True)

    def dropped(d: Delivery) -> None:
        if not args.quiet:
            print(format_dropped(d), flush=True)

    async with contextlib.AsyncExitStack() as stack:
        server = None
        if args.serve_pull_api is not None:
            try:
                server = await stack.enter_async_context(
                    serve_model(sim, target, args.serve_pull_api)
                )
            except OSError as exc:
                where = f"127.0.0.1:{args.serve_pull_api}"
                to_stderr(f"simulate: cannot serve the pull APIs on {where}: {exc.strerror}")
                return 2
            for line in config_hint(server.url):
                to_stderr(line)
            if len(providers) > 1:
                to_stderr(
                    "note: reconcile one IM provider per app (a check counts every device of "
                    "a user as its provider's, gateway/reconcile/rules.py): try --provider tencent"
                )
        check_stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            if args.watch_all:
                watching = watch_all(url, args.app, user_ids(args.users), check_stop, to_stderr)
                group.create_task(watching)
            checker = None
            if args.check_every is not None:
                checks = check_every(
                    url, args.app, args.api_key, sim, args.check_every, check_stop, to_stderr
                )
                checker = group.create_task(checks)
            summary = await run(
                sim, target, url, options, stop=stop, on_result=show, on_drop=dropped
            )
            if (server or checker) and not stop.is_set():
                what = "serving the pull APIs" if server else "checking"
                until = f"for {args.linger:g} s" if args.linger is not None else "until Ctrl-C"
                to_stderr(f"all webhooks sent; still {what} {until}")
                if args.linger is None:
                    await stop.wait()
                else:
                    await stopped(stop, args.linger)
            check_stop.set()
        print(summary.line(), flush=True)
        if server is not None:
            calls = pull_calls(server.fakes)
            print(
                "pull APIs answered: " + ", ".join(f"{p} {n} calls" for p, n in calls.items()),
                flush=True,
            )
    return 0 if summary.ok else 1


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []

    def interrupted() -> None:
        to_stderr("stopping (sending the late webhooks still held); Ctrl-C again to quit now")
        stop.set()
        for sig in handled:  # a second Ctrl-C raises KeyboardInterrupt
            loop.remove_signal_handler(sig)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, interrupted)
                handled.append(sig)
    try:
        return await command(args, stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def main(args: argparse.Namespace) -> int:
    """``presence-gateway simulate``: 0 when every webhook got a 2xx answer, else 1 (2: usage)."""
    if problem := _problem(args):
        to_stderr(f"simulate: {problem}")
        return 2
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        to_stderr("simulate: interrupted")
        return 130
