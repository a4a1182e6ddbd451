"""Closed connections are freed by reference counting, so freezing the heap leaks nothing."""

from __future__ import annotations

import asyncio
import gc

from tests.live import serve
from tests.test_e2e_webhooks import app_of, make_settings
from tests.wsclient import Client

SERVER_SIDE = ("gateway.", "uvicorn.protocols.websockets", "websockets.server")


async def test_closed_connection_leaves_no_cycles_behind_a_freeze() -> None:
    """Connections frozen while open, then closed or dropped, leave nothing to the collector."""
    settings = make_settings()
    app = app_of(settings)
    async with serve(settings) as gw:
        clients = [
            await Client.login(gw.ws_url, app.id, app.client_secret, f"c{i}") for i in range(10)
        ]
        for client in clients:
            await client.watch("bob", "carol")
        gc.collect()
        gc.freeze()
        try:
            for i, client in enumerate(clients):
                if i % 2:
                    await client.close()  # a clean closing handshake
                else:
                    client.ws.transport.abort()  # a vanished client: no close frame
            clients.clear()
            hub = gw.app.gw.hub
            async with asyncio.timeout(5):
                while hub.sessions:  # noqa: ASYNC110 (polling against a deadline)
                    await asyncio.sleep(0.01)
        finally:
            gc.unfreeze()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            leaked = sorted(
                {
                    f"{type(o).__module__}.{type(o).__qualname__}"
                    for o in gc.garbage
                    if type(o).__module__.startswith(SERVER_SIDE)
                }
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.collect()
    assert leaked == [], f"only the cyclic collector could free: {leaked}"
