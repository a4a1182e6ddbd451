"""The server API and operations endpoints (SPEC section 6) and dev tokens (section 7)."""

from __future__ import annotations

import asyncio
import hmac
import re
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gateway import tokens
from gateway.errors import StoreUnavailable
from gateway.model import UserState

if TYPE_CHECKING:
    from gateway.app import Gateway

MAX_QUERY_USERS = 1000
USER_ID = re.compile(r"^.{1,256}$", re.DOTALL)
_encoder = msgspec.json.Encoder()


class PresenceReply(msgspec.Struct):
    presence: list[UserState]


def error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _bearer_ok(request: Request, api_key: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        key.strip().encode(), api_key.encode()
    )


async def presence(request: Request, gw: Gateway) -> Response:
    """GET /v1/apps/{app}/presence?user=…: the current state of up to 1000 users."""
    app = gw.settings.apps.get(request.path_params["app"])
    if app is None:
        return error(404, "unknown app")
    if not _bearer_ok(request, app.api_key):
        return error(401, "missing or wrong api key")
    users = list(dict.fromkeys(request.query_params.getlist("user")))
    if not users:
        return error(400, "give at least one user=")
    if len(users) > MAX_QUERY_USERS:
        return error(400, f"at most {MAX_QUERY_USERS} users per query")
    if not all(USER_ID.match(u) for u in users):
        return error(400, "user ids are 1 to 256 characters")
    try:
        states = await gw.store.get(app.id, users)
    except StoreUnavailable:
        return error(503, "store unavailable")
    return Response(_encoder.encode(PresenceReply(states)), media_type="application/json")


async def dev_token(request: Request, gw: Gateway) -> Response:
    """GET /v1/apps/{app}/dev-token?user=ID: a client token, only where dev_tokens is on."""
    app = gw.settings.apps.get(request.path_params["app"])
    if app is None or not app.dev_tokens:
        return error(404, "not found")
    user = request.query_params.get("user", "")
    if not USER_ID.match(user):
        return error(400, "give user= (1 to 256 characters)")
    return JSONResponse({"token": tokens.issue(app.client_secret, app.id, user)})


async def healthz(request: Request, gw: Gateway) -> Response:
    """200 while the process runs."""
    return PlainTextResponse("ok")


async def readyz(request: Request, gw: Gateway) -> Response:
    """200 only while the backend answers."""
    try:
        await asyncio.wait_for(gw.store.ping(), timeout=2.0)
    except (StoreUnavailable, TimeoutError):
        return PlainTextResponse("store unavailable", status_code=503)
    return PlainTextResponse("ready")


async def metrics(request: Request, gw: Gateway) -> Response:
    """Prometheus text exposition."""
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
