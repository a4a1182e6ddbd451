"""``presence-gateway token``: print a client token for one app (SPEC section 2)."""

from __future__ import annotations

import argparse
import sys

from gateway import config, tokens
from gateway.errors import ConfigError

DEFAULT_TTL_S = 3600
MAX_TTL_S = 366 * 86400  # for trying things out; an app backend issues its own, short ones
MAX_USER_ID = 256


def _fail(message: str) -> int:
    print(f"presence-gateway token: {message}", file=sys.stderr)
    return 2


def _watch_list(text: str | None) -> list[str] | None:
    """``a,b`` as a list (spaces around names dropped); None without the flag."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def main(args: argparse.Namespace) -> int:
    """Print the token on stdout; exit 2 with a one-line reason on any bad input."""
    try:
        settings = config.load(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    app = settings.apps.get(args.app)
    if app is None:
        known = ", ".join(sorted(settings.apps)[:20])
        return _fail(f"unknown app {args.app[:64]!r} in {settings.source} (apps: {known})")
    if not 0 < len(args.user) <= MAX_USER_ID:
        return _fail(f"--user must be 1 to {MAX_USER_ID} characters")
    watch = _watch_list(args.watch)
    if watch is not None:
        if any(len(name) > MAX_USER_ID for name in watch):
            return _fail(f"--watch user ids are 1 to {MAX_USER_ID} characters")
        if len(watch) > tokens.MAX_WATCH_CLAIM:
            return _fail(f"--watch holds at most {tokens.MAX_WATCH_CLAIM} users")
    if not 0 < args.ttl <= MAX_TTL_S:
        return _fail(f"--ttl must be from 1 to {MAX_TTL_S} seconds")
    print(tokens.issue(app.client_secret, app.id, args.user, ttl_s=args.ttl, watch=watch))
    return 0
