"""``presence-gateway serve | check-config | token | simulate``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from gateway import config
from gateway.errors import ConfigError

log = logging.getLogger("gateway")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="presence-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", help="TOML config file (default: $PRESENCE_CONFIG, else dev mode)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: $PORT, else 8000)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (default 1; more than 1 needs Redis)",
    )
    token = sub.add_parser(
        "token",
        help="print a client token signed with an app's client_secret",
        description="Print a client token (HS256 JWT) for trying things out.",
    )
    token.add_argument(
        "--config", help="TOML config file (default: $PRESENCE_CONFIG, else dev mode's demo app)"
    )
    token.add_argument("--app", required=True, help="app id")
    token.add_argument("--user", required=True, help="the user id the token is for (sub)")
    token.add_argument("--watch", help="comma-separated users the token may watch (a,b)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (3600)")
    check = sub.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("file")
    sim = sub.add_parser(
        "simulate",
        help="send realistic signed provider webhooks to a running gateway",
        description="Send correctly signed webhooks (Tencent IM, RongCloud, OpenIM, Standard "
        "Webhooks, Easemob, NetEase Yunxin, WuKongIM) for N users to a running gateway: "
        "multi-device users, reconnect flaps, kicks, late and repeated deliveries. Without "
        "flags it drives a dev-mode gateway.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    sim.add_argument("--app", default="demo", help="app id")
    sim.add_argument(
        "--provider",
        default="mixed",
        choices=[
            "tencent",
            "rongcloud",
            "openim",
            "standard",
            "easemob",
            "netease",
            "wukongim",
            "mixed",
        ],
        help="whose webhooks to send (mixed: users spread over all seven)",
    )
    sim.add_argument(
        "--users",
        type=int,
        default=7,
        help="alice, bob, carol, dave, erin, frank, user7, ... (mixed: spread over the providers)",
    )
    sim.add_argument("--rate", type=float, default=2.0, help="webhooks per second")
    sim.add_argument("--duration", type=float, default=None, help="seconds (0 or none: forever)")
    sim.add_argument("--count", type=int, default=None, help="stop after this many webhooks")
    sim.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight (more: out of order)"
    )
    sim.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    sim.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    heal = sim.add_argument_group("reconciliation demo (SPEC 8; docs/heal-demo.toml)")
    heal.add_argument(
        "--drop",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="share of webhooks never sent, like a provider under load; the model (and the "
        "served pull APIs) still have the change",
    )
    heal.add_argument(
        "--serve-pull-api",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the Tencent, RongCloud and OpenIM pull APIs on 127.0.0.1:PORT, answering "
        "from the model (0: a free port)",
    )
    heal.add_argument(
        "--check-every",
        type=float,
        default=None,
        metavar="S",
        help="every S seconds, compare the gateway's query API with the model",
    )
    heal.add_argument(
        "--watch-all",
        action="store_true",
        help="watch every simulated user over WebSocket (a dev token: dev_tokens = true), as "
        "viewers would: the gateway re-checks watched users shown offline",
    )
    heal.add_argument(
        "--linger",
        type=float,
        default=None,
        metavar="S",
        help="after the last webhook, keep serving / checking this long (default: until Ctrl-C)",
    )
    secrets = sim.add_argument_group("provider secrets (defaults: the dev-mode app)")
    dev = config.dev_settings().apps["demo"]  # the one copy of the dev secrets
    assert dev.tencent and dev.rongcloud and dev.standard, "dev mode configures every provider"
    assert dev.easemob and dev.netease, "dev mode configures every provider"
    secrets.add_argument("--tencent-sdkappid", type=int, default=dev.tencent.sdkappid)
    secrets.add_argument("--tencent-token", default="", help="callback token ('': unsigned)")
    secrets.add_argument("--rongcloud-app-key", default=dev.rongcloud.app_key)
    secrets.add_argument("--rongcloud-app-secret", default=dev.rongcloud.app_secret)
    secrets.add_argument("--openim-token", default="", help="token path segment ('': none)")
    secrets.add_argument("--standard-secret", default=dev.standard.secret)
    secrets.add_argument("--easemob-appkey", default=dev.easemob.appkey, help="org#app")
    secrets.add_argument("--easemob-secret", default=dev.easemob.secret)
    secrets.add_argument("--netease-app-key", default=dev.netease.app_key)
    secrets.add_argument("--netease-app-secret", default=dev.netease.app_secret)
    secrets.add_argument("--wukongim-token", default="", help="token path segment ('': none)")
    secrets.add_argument("--api-key", default=dev.api_key, help="the app's api_key (--check-every)")
    pulled = "(--serve-pull-api; default: docs/heal-demo.toml's)"
    secrets.add_argument("--tencent-admin", default=None, help=f"the App admin {pulled}")
    secrets.add_argument("--tencent-secret-key", default=None, help=f"signs the UserSig {pulled}")
    secrets.add_argument("--openim-admin-user", default=None, help=f"admin userID {pulled}")
    secrets.add_argument("--openim-secret", default=None, help=f"share.yml secret {pulled}")
    return parser


def uvicorn_options() -> dict[str, Any]:
    """How the gateway runs under uvicorn (also used by the tests).

    The ``[server]`` limits reach the protocols through the app's lifespan state
    (``gateway.edge.Edge``), so these options are the same for every config and worker.
    """
    from gateway.transport import EdgeHTTPProtocol, PresenceWebSocketProtocol

    return {
        "http": EdgeHTTPProtocol,  # header/body deadlines, connection limits, quiet logs
        "ws": PresenceWebSocketProtocol,  # raw frame writes for the fan-out; 4009 on big frames
        "ws_per_message_deflate": False,  # frames are built once for every recipient
        "ws_max_size": 64 * 1024,
        "ws_ping_interval": None,  # clients ping every heartbeat_ms; the hub drops silent ones
        "access_log": False,  # gateway.access logs requests with secrets redacted
        "proxy_headers": False,  # the gateway resolves X-Forwarded-For ([server] trusted_proxies)
        "server_header": False,
        "timeout_graceful_shutdown": 5,
    }


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        settings = config.load(args.config, host=args.host)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else int(os.environ.get("PORT", "8000"))
    if args.workers != 1:
        from gateway import workers

        return workers.run(
            settings, host=args.host, port=port, workers=args.workers, log_level=args.log_level
        )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=port,
        log_config=None,
        **uvicorn_options(),
    )
    return 0


def check_config(args: argparse.Namespace) -> int:
    try:
        settings = config.parse_file(args.file)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    backend = (
        "redis cluster"
        if settings.redis and settings.redis.cluster
        else ("redis" if settings.redis else "memory")
    )
    from gateway.startup import startup_warnings

    for line in startup_warnings(settings):
        print(f"warning: {line}", file=sys.stderr)
    print(f"{args.file}: ok ({len(settings.apps)} app(s), backend {backend})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "token":
        from gateway import tokencmd

        return tokencmd.main(args)
    if args.command == "simulate":
        from gateway import simulate

        return simulate.main(args)
    return check_config(args)
