"""``create_app(settings)``: the Starlette application; its lifespan owns the store and broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import api, devtools, openapi, sse, webhooks
from gateway.backends import open_backend
from gateway.backends.base import Broker, PresenceStore
from gateway.config import Settings
from gateway.edge import Edge, redact_path
from gateway.errors import StoreUnavailable
from gateway.heap import HeapKeeper
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.outbound.service import Outbound
from gateway.providers import PROVIDERS
from gateway.providers.base import Provider
from gateway.reconcile.scheduler import Reconciler, targets
from gateway.session import Session
from gateway.startup import startup_warnings

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

# Package data (pyproject.toml), so a pip-installed gateway serves them too: the browser client
# under /web/ always, the demo and test pages (under / and /demo/) in dev mode only.
WEB_DIR = Path(__file__).resolve().parent / "web"
DEMO_DIR = Path(__file__).resolve().parent / "demo"


class Gateway:
    """The running gateway's parts, shared by every route."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.edge = Edge(settings.server)
        self.metrics = Metrics()
        self.store: PresenceStore
        self.broker: Broker
        self.store, self.broker = open_backend(settings)
        self.hub = Hub(self.store, self.broker, self.metrics, settings.connections)
        self.outbound = Outbound(settings, self.store, self.metrics)  # webhooks out (SPEC 9)
        self.heap = HeapKeeper()
        self._sweeper: asyncio.Task[None] | None = None
        self.providers: dict[tuple[str, str], Provider] = {
            (app.id, name): PROVIDERS[name](table, settings.presence)
            for app in settings.apps.values()
            for name, table in app.providers().items()
        }
        # reconciliation and max_silence_s (SPEC 8, 2): a full pass after a feed loss too
        self.reconciler = Reconciler(
            targets({app.id: app.providers() for app in settings.apps.values()}),
            self.store,
            self.metrics,
            watched=self._watched,
            max_age_ms=settings.presence.max_event_age_s * 1000,
        )
        hub_reset = self.hub.on_reset

        def on_reset() -> None:
            hub_reset()
            self.reconciler.request_full()

        self.broker.set_handlers(self.hub.on_message, on_reset)

    def _watched(self, app: str) -> list[str]:
        """The users this node's clients watch in ``app`` (the reconciler's watched pass)."""
        return [user for a, user in list(self.hub.index) if a == app]

    async def start(self) -> None:
        self.metrics.watch_gc()
        await self.heap.start()
        await self.hub.start()
        await self.broker.start()
        # Always: it also forgets expired users on memory and finishes graces left pending
        # by an earlier config with the grace on.
        grace = self.settings.presence.offline_grace_ms
        self._sweeper = asyncio.create_task(self._sweep(grace), name="grace-sweeper")
        await self.outbound.start()
        await self.reconciler.start()

    async def stop(self) -> None:
        await self.reconciler.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.outbound.stop()
        await self.broker.close()
        await self.hub.stop()
        await self.store.close()
        await self.heap.stop()
        self.metrics.unwatch_gc()

    async def _sweep(self, grace_ms: int) -> None:
        """Publish offlines whose grace ran out; every node sweeps, the store dedupes."""
        interval = min(0.25, max(0.02, grace_ms / 4000)) if grace_ms > 0 else 1.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.sweep()
            except StoreUnavailable:
                pass  # retried on the next tick; the grace ends late, never twice
            except Exception:
                log.exception("offline grace sweep failed")


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
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                redact_path(scope["path"]),
                status,
                (time.perf_counter() - started) * 1000,
            )


def create_app(settings: Settings) -> WebSocketFront:
    """Build the gateway for ``settings``; nothing connects until the lifespan starts."""
    gw = Gateway(settings)

    def bind(
        fn: Callable[[Request, Gateway], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await fn(request, gw)

        return endpoint

    async def webhook(request: Request) -> Response:
        app_id = request.path_params["app"]
        provider = gw.providers.get((app_id, request.path_params["provider"]))
        if provider is None:
            return JSONResponse({"error": "unknown app or provider"}, status_code=404)
        return await webhooks.handle(
            request,
            app_id,
            provider,
            gw.store,
            gw.metrics,
            timeout_s=settings.server.request_timeout_s,
            reconciler=gw.reconciler,
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
        await gw.start()
        try:
            yield {Edge.STATE_KEY: gw.edge}  # uvicorn hands it to every connection (transport)
        finally:
            await gw.stop()

    hook = "/v1/apps/{app}/webhooks/{provider}"
    routes: list[BaseRoute] = [
        Route(hook, webhook, methods=["POST"]),
        Route(hook + "/{rest:path}", webhook, methods=["POST"]),
        Route("/v1/apps/{app}/presence", bind(api.presence), methods=["GET"]),
        Route("/v1/apps/{app}/users/{user:path}/custom", bind(api.set_custom), methods=["PUT"]),
        Route("/v1/apps/{app}/reconcile", bind(api.reconcile), methods=["GET", "POST"]),
        Route("/v1/apps/{app}/dev-token", bind(api.dev_token), methods=["GET"]),
        Route("/v1/apps/{app}/dev-webhook/{provider}", bind(devtools.webhook), methods=["POST"]),
        Route("/healthz", bind(api.healthz), methods=["GET"]),
        Route("/readyz", bind(api.readyz), methods=["GET"]),
        Route("/metrics", bind(api.metrics), methods=["GET"]),
        Route("/openapi.json", openapi.serve, methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    if WEB_DIR.is_dir():
        routes.append(Mount("/web", app=StaticFiles(directory=WEB_DIR), name="web"))
    if settings.dev_mode:
        routes.append(Mount("/demo", app=StaticFiles(directory=DEMO_DIR), name="demo"))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gw
    app.add_middleware(AccessLog)
    return WebSocketFront(app, gw)


_WS_PATH = re.compile(r"\A/v1/apps/([A-Za-z0-9_-]{1,64})/ws\Z")
_SSE_PATH = re.compile(r"\A/v1/apps/([A-Za-z0-9_-]{1,64})/sse\Z")


class WebSocketFront:
    """Hands ``/v1/apps/{app}/ws`` straight to a ``Session`` and ``/v1/apps/{app}/sse`` to
    the event stream (``gateway.sse``), everything else to Starlette.

    Every open connection keeps its ASGI call's coroutine frames for its lifetime; skipping
    Starlette's middleware and router for the two long-lived routes keeps that stack short.
    """

    def __init__(self, app: Starlette, gw: Gateway) -> None:
        self.app = app
        self.gw = gw
        self.state = app.state  # tests and operators reach the gateway as app.state.gateway
        self.resolver = gw.edge.resolver
        self.sse = sse.Endpoint(gw.settings.apps, gw.hub)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.resolver.trusted and scope["type"] != "lifespan":
            # behind a trusted proxy the client is in X-Forwarded-For (SPEC section 3); with
            # none configured, the TCP peer it stays and forwarding headers mean nothing
            peer = scope.get("client")
            client = self.resolver.resolve(peer[0] if peer else None, scope["headers"])
            scope["client"] = (client, 0) if client is not None else None
        if scope["type"] != "websocket":
            if scope["type"] == "http" and (stream := _SSE_PATH.match(scope["path"])):
                scope["path_params"] = {"app": stream.group(1)}
                await self.sse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        match = _WS_PATH.match(scope["path"])
        app_cfg = self.gw.settings.apps.get(match.group(1)) if match else None
        if app_cfg is None:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # the handshake gets 403
            return
        await Session(receive, app_cfg, self.gw.hub).run(scope, send)
