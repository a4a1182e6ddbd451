"""Serving fakes: one uvicorn server on a loopback port, its URL every fake's api_base."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

import uvicorn
from starlette.applications import Starlette

from gateway.simulate.pullapi.base import FakePullApi
from gateway.transport import QuietH11Protocol


class FakeServer:
    """A running uvicorn serving some fakes; ``url`` is every fake's api_base."""

    def __init__(self, port: int, fakes: Sequence[FakePullApi], host: str = "127.0.0.1") -> None:
        self.port = port
        self.url = f"http://{host}:{port}"
        self.fakes = list(fakes)


@contextlib.asynccontextmanager
async def serve(*fakes: FakePullApi, port: int = 0) -> AsyncIterator[FakeServer]:
    """Serve ``fakes`` on 127.0.0.1:``port`` (0: a free one; their paths differ); stop on exit.

    A port already in use raises ``OSError``.
    """
    app = Starlette(routes=[route for fake in fakes for route in fake.routes()])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="off",
        access_log=False,
        http=QuietH11Protocol,  # access lines would hold Tencent's usersig query
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("fake pull API stopped during startup")
                await asyncio.sleep(0.01)
        yield FakeServer(port, fakes)
    finally:
        for fake in fakes:
            fake.release()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()
