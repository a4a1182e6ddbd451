"""The server API and operations endpoints (SPEC section 6) and dev tokens (section 7).

Every JSON body in or out is one of the Structs below (or ``UserState``), so the OpenAPI
document (``gateway.openapi``) is generated from exactly what the routes encode.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated
from urllib.parse import parse_qsl

import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway import tokens
from gateway.backends.base import PresenceStore
from gateway.config import AppConfig
from gateway.errors import BadQuery as BadQuery
from gateway.errors import BodyTooLarge, StoreUnavailable
from gateway.metrics import Metrics
from gateway.model import MAX_CUSTOM_BYTES, UserState, custom_event, custom_too_long
from gateway.reconcile.scheduler import Reconciler
from gateway.types import MAX_QUERY_USERS as MAX_QUERY_USERS
from gateway.types import MAX_USER_ID, UserId, clock_ms
from gateway.types import USER_ID as USER_ID
from gateway.webhooks import read_body

USER_ID_MAX = MAX_USER_ID  # the name sse.py and openapi.py import
MAX_QUERY_FIELDS = 2 * MAX_QUERY_USERS  # parameters of any name, repeats included
MAX_API_KEY = 4096  # a longer Authorization header is refused before any comparison
_encoder = msgspec.json.Encoder()
Apps = Mapping[str, AppConfig]


class PresenceReply(msgspec.Struct):
    """``GET /v1/apps/{app}/presence``: the state of every user asked for, in order."""

    presence: list[UserState]


class TokenReply(msgspec.Struct):
    """``GET /v1/apps/{app}/dev-token``: a client token for the WebSocket hello."""

    token: str


class ErrorReply(msgspec.Struct):
    """Any refusal of the server API: a short reason, never a traceback."""

    error: str


def json_response(body: msgspec.Struct, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


def error(status: int, reason: str) -> Response:
    return json_response(ErrorReply(reason), status)


def query_values(request: Request, name: str) -> list[str]:
    """Every value of ``name`` in the query string, decoded strictly.

    Starlette replaces invalid UTF-8 in percent-escapes, which would silently query a
    different user; here it is refused, and so is a query of more than MAX_QUERY_FIELDS
    parameters (counted before any is decoded).
    """
    raw: bytes = request.scope.get("query_string", b"")
    try:
        pairs = parse_qsl(
            raw.decode("latin-1"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadQuery("the query string is not valid UTF-8") from None
    except ValueError:
        raise BadQuery(f"at most {MAX_QUERY_FIELDS} query parameters") from None
    return [value for key, value in pairs if key == name]


def _bearer_ok(request: Request, api_key: str) -> bool:
    header = request.headers.get("authorization", "")
    if len(header) > MAX_API_KEY:
        return False
    scheme, _, key = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        key.strip().encode("latin-1"),
        api_key.encode(),  # the header's own bytes
    )


async def presence(request: Request, *, apps: Apps, store: PresenceStore) -> Response:
    """GET /v1/apps/{app}/presence?user=…: the current state of up to 1000 users."""
    app = apps.get(request.path_params["app"])
    if app is None:
        return error(404, "unknown app")
    if not _bearer_ok(request, app.api_key):
        return error(401, "missing or wrong api key")
    try:
        given = query_values(request, "user")
    except BadQuery as exc:
        return error(400, str(exc))
    if not given:
        return error(400, "give at least one user=")
    if len(given) > MAX_QUERY_USERS:
        return error(400, f"at most {MAX_QUERY_USERS} users per query")
    if not all(USER_ID.match(u) for u in given):
        return error(400, f"user ids are 1 to {USER_ID_MAX} characters")
    users = list(dict.fromkeys(given))
    try:
        states = await store.get(app.id, users)
    except StoreUnavailable:
        return error(503, "store unavailable")
    return json_response(PresenceReply(states))


MAX_CUSTOM_BODY = 4096  # a 100-byte custom, JSON-escaped at 6 bytes per byte, fits well below


class CustomRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``PUT /v1/apps/{app}/users/{user}/custom`` body: the user's custom status, at most
    100 UTF-8 bytes; null (or "") clears it."""

    custom: Annotated[str, msgspec.Meta(max_length=MAX_CUSTOM_BYTES)] | None


_custom_decoder = msgspec.json.Decoder(CustomRequest)


async def set_custom(
    request: Request,
    *,
    apps: Apps,
    store: PresenceStore,
    deliver: Callable[[str, Iterable[tuple[str, bytes]]], None] | None = None,
) -> Response:
    """PUT /v1/apps/{app}/users/{user}/custom: set (or clear) the user's custom status at the
    gateway's clock; 200 with the user's new state (SPEC 6). The state goes to this node's
    watchers at once (``deliver``, as for webhooks)."""
    app = apps.get(request.path_params["app"])
    if app is None:
        return error(404, "unknown app")
    if not _bearer_ok(request, app.api_key):
        return error(401, "missing or wrong api key")
    user = request.path_params["user"]
    if not USER_ID.match(user):
        return error(400, f"user ids are 1 to {USER_ID_MAX} characters")
    try:
        body = await read_body(request, MAX_CUSTOM_BODY)
    except BodyTooLarge:
        return error(413, "body too large")
    try:
        text = _custom_decoder.decode(body).custom
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return error(400, f'bad body, want {{"custom": "text" | null}}: {str(exc)[:120]}')
    if text is not None and custom_too_long(text):
        return error(400, f"custom is over {MAX_CUSTOM_BYTES} bytes (UTF-8)")
    now = clock_ms()
    try:
        result = await store.apply(app.id, [custom_event(user, text, now)], now_ms=now)
        if deliver is not None:
            deliver(app.id, result.payloads)
        states = result.published or await store.get(app.id, [user])
    except StoreUnavailable:
        return error(503, "store unavailable")
    return json_response(states[0])


async def dev_token(request: Request, *, apps: Apps) -> Response:
    """GET /v1/apps/{app}/dev-token?user=ID: a client token, only where dev_tokens is on."""
    app = apps.get(request.path_params["app"])
    if app is None or not app.dev_tokens:
        return error(404, "not found")
    try:
        users = query_values(request, "user")
    except BadQuery as exc:
        return error(400, str(exc))
    if len(users) != 1 or not USER_ID.match(users[0]):
        return error(400, f"give one user= (1 to {USER_ID_MAX} characters)")
    return json_response(TokenReply(tokens.issue(app.client_secret, app.id, users[0])))


async def healthz(request: Request) -> Response:
    """200 while the process runs."""
    return PlainTextResponse("ok")


async def readyz(request: Request, *, store: PresenceStore) -> Response:
    """200 only while the backend answers."""
    try:
        await asyncio.wait_for(store.ping(), timeout=2.0)
    except (StoreUnavailable, TimeoutError):
        return PlainTextResponse("store unavailable", status_code=503)
    return PlainTextResponse("ready")


async def metrics(request: Request, *, metrics: Metrics) -> Response:
    """Prometheus text exposition."""
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


MAX_RECONCILE_BODY = 512 * 1024  # 1000 ids of 256 characters, JSON-escaped, fit well below


class ReconcileRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/apps/{app}/reconcile`` body: the users to check (absent: every known user)."""

    users: (
        Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=MAX_QUERY_USERS)] | None
    ) = None


class ReconcileQueued(msgspec.Struct):
    """``POST /v1/apps/{app}/reconcile``: how many users are queued for a check."""

    queued: int


class ProviderPass(msgspec.Struct):
    """One provider's last reconciliation pass (null ``last_pass_at``: none yet)."""

    last_pass_at: int | None
    checked: int
    corrected: int
    errors: int


class ReconcileStatus(msgspec.Struct):
    """``GET /v1/apps/{app}/reconcile``: the last pass of each reconciled provider."""

    providers: dict[str, ProviderPass]


_reconcile_decoder = msgspec.json.Decoder(ReconcileRequest)


async def reconcile(request: Request, *, apps: Apps, reconciler: Reconciler) -> Response:
    """POST: queue checks (202); GET: the last pass per provider (SPEC 6, 8)."""
    app = apps.get(request.path_params["app"])
    if app is None:
        return error(404, "unknown app")
    if not _bearer_ok(request, app.api_key):
        return error(401, "missing or wrong api key")
    reconciled = [w for w in reconciler.by_app(app.id) if w.target.make_client is not None]
    try:
        if request.method == "GET":
            found = await reconciler.status(app.id)
            return json_response(
                ReconcileStatus(
                    {
                        name: ProviderPass(s.last_pass_at, s.checked, s.corrected, s.errors)
                        for name, s in found.items()
                    }
                )
            )
        try:
            body = await read_body(request, MAX_RECONCILE_BODY)
        except BodyTooLarge:
            return error(413, "body too large")
        users: list[str] | None = None
        if body.strip():
            try:
                given = _reconcile_decoder.decode(body).users
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                return error(400, f"bad body: {str(exc)[:160]}")
            users = None if given is None else list(dict.fromkeys(given))
        if not reconciled:
            return error(409, "no provider of this app has a reconcile table")
        queued = await reconciler.queue(app.id, users)
    except StoreUnavailable:
        return error(503, "store unavailable")
    return json_response(ReconcileQueued(queued), 202)
