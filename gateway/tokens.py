"""Client tokens: HS256 JWTs signed with the app's ``client_secret`` (SPEC section 5)."""

from __future__ import annotations

import time

import jwt
import msgspec

from gateway.errors import TokenError as TokenError
from gateway.types import USER_ID

ALGORITHMS = ["HS256"]  # anything else, ``none`` included, is refused
MAX_WATCH_CLAIM = 100_000
LEEWAY_S = 5
"""Clock skew forgiven on ``exp``, ``nbf`` and ``iat``: an app backend whose clock runs a
second or two ahead must not issue tokens that bounce (and clients that reconnect in a loop)."""
MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z; beyond it a time claim is nonsense


class Claims(msgspec.Struct, frozen=True):
    """What a verified token grants."""

    sub: str
    exp: float  # a NumericDate: RFC 7519 allows fractions
    watch: frozenset[str] | None = None  # None: no watch list in the token

    def deadline(self) -> float:
        """When a connection opened with this token is closed (epoch seconds): the leeway
        that let a just-expired token in must not close it the moment it is welcomed."""
        return self.exp + LEEWAY_S


def _numeric_date(claims: dict[str, object], name: str) -> float | None:
    """The claim ``name`` as a NumericDate (RFC 7519: a JSON number); TokenError otherwise."""
    value = claims.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_NUMERIC_DATE  # refuses NaN and infinities too
    ):
        raise TokenError(f"invalid token: {name} must be a time in seconds since the epoch")
    return float(value)


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
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {type(exc).__name__}") from None
    except Exception as exc:  # a library surprise on hostile input is a bad token, not a 500
        raise TokenError(f"invalid token: {type(exc).__name__}") from None
    if not isinstance(claims, dict):
        raise TokenError("invalid token: the payload must be an object")
    exp = _numeric_date(claims, "exp")
    _numeric_date(claims, "nbf")
    _numeric_date(claims, "iat")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not USER_ID.match(sub):
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
    if exp is None:  # PyJWT requires it; never trust that alone
        raise TokenError("invalid token: no exp")
    return Claims(sub=sub, exp=exp, watch=frozenset(watch) if watch is not None else None)


def issue(
    secret: str, app_id: str, user: str, ttl_s: int = 3600, watch: list[str] | None = None
) -> str:
    """Sign a client token (dev tokens, tests, and a reference for app backends)."""
    payload: dict[str, object] = {"sub": user, "app": app_id, "exp": int(time.time()) + ttl_s}
    if watch is not None:
        payload["watch"] = watch
    return jwt.encode(payload, secret, algorithm="HS256")
