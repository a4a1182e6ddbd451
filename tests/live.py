"""A real gateway served by uvicorn on a free loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn

from gateway import cli
from gateway.app import WebSocketFront, create_app
from gateway.config import Settings


class LiveGateway:
    """A running gateway: its base URLs and the app (for its parts)."""

    def __init__(self, app: WebSocketFront, port: int) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    @property
    def gateway(self) -> object:
        return self.app.state.gateway


@contextlib.asynccontextmanager
async def serve(settings: Settings, **uvicorn_options: object) -> AsyncIterator[LiveGateway]:
    """Serve ``settings`` through uvicorn on a socket bound to a free port; stop on exit."""
    app = create_app(settings)
    # IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted connections as uvicorn's own does
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = {**cli.uvicorn_options(), "timeout_graceful_shutdown": 2, **uvicorn_options}
    config = uvicorn.Config(app, log_config=None, lifespan="on", **options)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("gateway stopped during startup")
                await asyncio.sleep(0.01)
        yield LiveGateway(app, port)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()
