"""``create_app(settings)``: the Starlette application; its lifespan starts and stops the node."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import api, devtools, openapi, sse, webhooks
from gateway.config import Settings
from gateway.edge import Edge, redact_path
from gateway.errors import CloseCode
from gateway.node import Node
from gateway.session import Session
from gateway.startup import startup_warnings
from gateway.types import APP_ID

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

# Package data (pyproject.toml), so a pip-installed gateway serves them too: the browser client
# under /web/ always, the demo and test pages (under / and /demo/) in dev mode only.
WEB_DIR = Path(__file__).resolve().parent / "web"
DEMO_DIR = Path(__file__).resolve().parent / "demo"


def log_access(method: str, path: str, status: int, started: float) -> None:
    access_log.info(
        "%s %s %d %.1fms",
        method,
        redact_path(path),
        status,
        (time.perf_counter() - started) * 1000,
    )


class AccessLog:
    """One line per HTTP request, with secrets redacted and no query string (signatures)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log_access(scope["method"], scope["path"], status, started)


def create_app(settings: Settings) -> WebSocketFront:
    """Build the gateway for ``settings``; nothing connects until the lifespan starts."""
    node = Node(settings)
    apps, store = settings.apps, node.store

    async def webhook(request: Request) -> Response:
        app_id = request.path_params["app"]
        provider = node.providers.get((app_id, request.path_params["provider"]))
        if provider is None:
            return JSONResponse({"error": "unknown app or provider"}, status_code=404)
        return await webhooks.handle(
            request,
            app_id,
            provider,
            node.store,
            node.metrics,
            timeout_s=settings.server.request_timeout_s,
            max_body=settings.server.max_body_bytes,
            reconciler=node.reconciler,
            deliver=node.hub.deliver,
        )

    async def index(request: Request) -> Response:
        if not settings.dev_mode:
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(DEMO_DIR / "index.html")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if settings.dev_mode:
            log.warning(
                "DEV MODE: no config file, app 'demo' with well-known secrets and dev tokens; "
                "not for production (set PRESENCE_CONFIG or --config)"
            )
        for warning in startup_warnings(settings):
            log.warning("config %s: %s", settings.source, warning)
        await node.start()
        try:
            yield {Edge.STATE_KEY: node.edge}  # uvicorn hands it to every connection (transport)
        finally:
            await node.stop()

    hook = "/v1/apps/{app}/webhooks/{provider}"
    routes: list[BaseRoute] = [
        Route(hook, webhook, methods=["POST"]),
        Route(hook + "/{rest:path}", webhook, methods=["POST"]),
        Route(
            "/v1/apps/{app}/presence",
            partial(api.presence, apps=apps, store=store),
            methods=["GET"],
        ),
        Route(
            "/v1/apps/{app}/users/{user:path}/custom",
            partial(api.set_custom, apps=apps, store=store, deliver=node.hub.deliver),
            methods=["PUT"],
        ),
        Route(
            "/v1/apps/{app}/reconcile",
            partial(api.reconcile, apps=apps, reconciler=node.reconciler),
            methods=["GET", "POST"],
        ),
        Route("/v1/apps/{app}/dev-token", partial(api.dev_token, apps=apps), methods=["GET"]),
        Route(
            "/v1/apps/{app}/dev-webhook/{provider}",
            partial(devtools.webhook, apps=apps, dev_mode=settings.dev_mode),
            methods=["POST"],
        ),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", partial(api.readyz, store=store), methods=["GET"]),
        Route("/metrics", partial(api.metrics, metrics=node.metrics), methods=["GET"]),
        Route("/openapi.json", openapi.serve, methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    if WEB_DIR.is_dir():
        routes.append(Mount("/web", app=StaticFiles(directory=WEB_DIR), name="web"))
    if settings.dev_mode:
        routes.append(Mount("/demo", app=StaticFiles(directory=DEMO_DIR), name="demo"))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = node  # the attribute name tests and workers reach the node by
    app.add_middleware(AccessLog)
    return WebSocketFront(app, node, webhook)


Gateway = Node  # the name tests/test_fanout.py imports from here

_WS_PATH = re.compile(rf"\A/v1/apps/({APP_ID})/ws\Z")
# Starlette's "{app}/webhooks/{provider}" and ".../{rest:path}" routes, as its router matches them
_HOOK_PATH = re.compile(r"\A/v1/apps/([^/]+)/webhooks/([^/]+)(?:/(.*))?\Z")
_SSE_PATH = re.compile(rf"\A/v1/apps/({APP_ID})/sse\Z")


def _app_in(pattern: re.Pattern[str], path: str) -> str | None:
    """The app id ``pattern`` finds in ``path``, or None."""
    found = pattern.match(path)
    return found.group(1) if found else None


class WebSocketFront:
    """Hands ``/v1/apps/{app}/ws`` straight to a ``Session``, ``/v1/apps/{app}/sse`` to the
    event stream (``gateway.sse``) and webhook POSTs to their handler; the rest to Starlette.

    Every open connection keeps its ASGI call's coroutine frames for its lifetime; skipping
    Starlette's middleware and router for the two long-lived routes keeps that stack short.
    Webhooks skip them for speed: they are the latency path (the handler answers every
    outcome itself, and the access line is written here as ``AccessLog`` writes it).
    """

    def __init__(
        self,
        app: Starlette,
        node: Node,
        webhook: Callable[[Request], Awaitable[Response]] | None = None,
    ) -> None:
        self.app = app
        self.state = app.state  # tests and operators reach the node as app.state.gateway
        self.gw = node  # and tests/test_heap.py as .gw
        self.resolver = node.edge.resolver
        self.apps = node.settings.apps
        self.hub = node.hub
        self.sse = sse.Endpoint(self.apps, self.hub)
        self.webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.resolver.trusted and scope["type"] != "lifespan":
            # behind a trusted proxy the client is in X-Forwarded-For (SPEC section 3); with
            # none configured, the TCP peer it stays and forwarding headers mean nothing
            peer = scope.get("client")
            client = self.resolver.resolve(peer[0] if peer else None, scope["headers"])
            scope["client"] = (client, 0) if client is not None else None
        if scope["type"] != "websocket":
            if scope["type"] == "http":
                if scope["method"] == "POST" and (webhook := self.webhook) is not None:
                    if hook := _HOOK_PATH.match(scope["path"]):
                        await _run_webhook(webhook, scope, receive, send, hook)
                        return
                elif (stream_app := _app_in(_SSE_PATH, scope["path"])) is not None:
                    scope["path_params"] = {"app": stream_app}
                    await self.sse(scope, receive, send)
                    return
            await self.app(scope, receive, send)
            return
        # no match object in this frame: it would live as long as the connection (136 B)
        ws_app = _app_in(_WS_PATH, scope["path"])
        app_cfg = self.apps.get(ws_app) if ws_app is not None else None
        if app_cfg is None:
            await receive()  # websocket.connect
            # the handshake gets 403
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
            return
        await Session(receive, app_cfg, self.hub).run(scope, send)


async def _run_webhook(
    webhook: Callable[[Request], Awaitable[Response]],
    scope: Scope,
    receive: Receive,
    send: Send,
    hook: re.Match[str],
) -> None:
    """A webhook POST without Starlette: its path params as the router would set them, the
    handler's response, and the access line ``AccessLog`` would write."""
    started = time.perf_counter()
    app_id, provider, rest = hook.groups()
    params = {"app": app_id, "provider": provider}
    if rest is not None:
        params["rest"] = rest
    scope["path_params"] = params
    response = await webhook(Request(scope, receive))
    await response(scope, receive, send)
    if access_log.isEnabledFor(logging.INFO):
        log_access("POST", scope["path"], response.status_code, started)
