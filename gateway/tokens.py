"""Client tokens: HS256 JWTs signed with the app's ``client_secret`` (SPEC section 5)."""

from __future__ import annotations

import time

import jwt
import msgspec

from gateway.errors import GatewayError

ALGORITHMS = ["HS256"]  # anything else, ``none`` included, is refused
MAX_WATCH_CLAIM = 100_000


class TokenError(GatewayError):
    """The token is missing, malformed, expired, or not signed by this app."""


class Claims(msgspec.Struct, frozen=True):
    """What a verified token grants."""

    sub: str
    exp: int
    watch: frozenset[str] | None = None  # None: no watch list in the token


def verify(token: str, secret: str, app_id: str) -> Claims:
    """Verify ``token`` for ``app_id``; raise TokenError with a short reason otherwise.

    A token carrying an ``app`` claim, or an ``aud`` claim, that does not name this app is
    refused; and since no two apps may share a secret (config), a token of one app never
    verifies in another.
    """
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise TokenError("missing or oversized token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            options={"require": ["sub", "exp"], "verify_aud": False},  # checked below
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {type(exc).__name__}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 256:
        raise TokenError("invalid token: sub must be a user id")
    app = claims.get("app")
    if app is not None and app != app_id:
        raise TokenError("token is for another app")
    aud = claims.get("aud")
    if aud is not None and app_id not in (aud if isinstance(aud, list) else [aud]):
        raise TokenError("token is for another audience")
    watch = claims.get("watch")
    if watch is not None and (
        not isinstance(watch, list)
        or len(watch) > MAX_WATCH_CLAIM
        or not all(isinstance(u, str) for u in watch)
    ):
        raise TokenError("invalid token: watch must be a list of user ids")
    return Claims(
        sub=sub, exp=int(claims["exp"]), watch=frozenset(watch) if watch is not None else None
    )


def issue(
    secret: str, app_id: str, user: str, ttl_s: int = 3600, watch: list[str] | None = None
) -> str:
    """Sign a client token (dev tokens, tests, and a reference for app backends)."""
    payload: dict[str, object] = {"sub": user, "app": app_id, "exp": int(time.time()) + ttl_s}
    if watch is not None:
        payload["watch"] = watch
    return jwt.encode(payload, secret, algorithm="HS256")
