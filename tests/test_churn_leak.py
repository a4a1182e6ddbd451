"""Closed WebSocket connections are freed by reference counting alone, behind a freeze.

``gateway.heap`` freezes the heap every second, so an object that becomes part of a garbage
cycle after it was frozen is never collected. The soak bench's churn (new connection, old one
closed) grew the server's RSS by ~1.4 KB per replacement: two cycles per connection that only
the collector frees:

- websockets' sans-I/O protocol (``PresenceWebSocketProtocol.conn``) and its parser
  generator, which holds the protocol and never finishes (it waits for an EOF nobody feeds,
  or sits at its last ``yield``);
- asyncio's ``_SelectorSocketTransport`` and the bound method of itself it keeps as
  ``_read_ready_cb`` (CPython 3.11; gh-100348 clears it on close from 3.12).

``tests/test_heap.py`` does not see them: its module filter leaves out asyncio, and a cycle
through a suspended generator is broken by the generator's finalizer during the collection,
so it never reaches ``gc.garbage``. Weak references see both.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import weakref
from typing import Any

import pytest

from gateway.errors import CloseCode
from gateway.transport import EdgeHTTPProtocol, PresenceWebSocketProtocol
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import app_of, make_settings
from tests.wsclient import Client

CONNECTIONS = 50
FREED_WITHIN_S = 5.0  # the close handshake and connection_lost, not a timer


def _server_side() -> list[tuple[str, weakref.ref[Any]]]:
    """Weak references to every open WebSocket's protocol state machine and transport."""
    refs: list[tuple[str, weakref.ref[Any]]] = []
    for o in gc.get_objects():
        if issubclass(type(o), PresenceWebSocketProtocol):  # not isinstance: weak proxies
            refs.append((type(o.conn).__qualname__, weakref.ref(o.conn)))
            refs.append((type(o.transport).__qualname__, weakref.ref(o.transport)))
    return refs


def _http_transports() -> list[tuple[str, weakref.ref[Any]]]:
    """Weak references to the transport of every open plain HTTP connection."""
    return [
        (type(o.transport).__qualname__, weakref.ref(o.transport))
        for o in gc.get_objects()
        if issubclass(type(o), EdgeHTTPProtocol) and o.transport is not None
    ]


async def _alive_after(refs: list[tuple[str, weakref.ref[Any]]]) -> tuple[list[str], int]:
    """The types (and how many objects) of ``refs`` still alive after FREED_WITHIN_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FREED_WITHIN_S
    pending = any(ref() is not None for _, ref in refs)
    while pending and loop.time() < deadline:
        await asyncio.sleep(0.05)  # polling against a deadline
        pending = any(ref() is not None for _, ref in refs)
    alive = sorted({name for name, ref in refs if ref() is not None})
    return alive, sum(ref() is not None for _, ref in refs)


def _keep_alive(port: int) -> socket.socket:
    """A keep-alive HTTP connection that made one request and read its answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while not got.endswith(b"ok"):
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    return sock


async def _close(gw: LiveGateway, clients: list[Client], how: str) -> None:
    if how == "client":  # a clean closing handshake started by the client (the soak's churn)
        await asyncio.gather(*(c.close() for c in clients))
    elif how == "reset":  # a vanished client: no close frame
        for c in clients:
            c.ws.transport.abort()
    else:  # the server closes (as the idle sweep or a token expiry does)
        for session in list(gw.app.gw.hub.sessions):
            session.close(CloseCode.GOING_AWAY, "bye")
        await asyncio.gather(*(c.closed_with(5) for c in clients))


@pytest.mark.parametrize("how", ["client", "reset", "server"])
async def test_closed_websockets_leave_no_cycle_behind_a_freeze(how: str) -> None:
    """WebSockets frozen while open, then closed, free their protocol state and transport."""
    assert "uvloop" not in type(asyncio.get_running_loop()).__module__
    settings = make_settings()
    app = app_of(settings)
    async with serve(settings) as gw:
        clients = [
            await Client.login(gw.ws_url, app.id, app.client_secret, f"c{i}")
            for i in range(CONNECTIONS)
        ]
        for client in clients:
            await client.watch("bob", "carol")
        gc.collect()  # earlier garbage must not be frozen and blamed on this test
        refs = _server_side()
        assert len(refs) == 2 * CONNECTIONS
        gc.freeze()  # what the gateway's HeapKeeper does every second
        try:
            await _close(gw, clients, how)
            clients.clear()
            alive, count = await _alive_after(refs)
        finally:
            gc.unfreeze()
    assert alive == [], f"{count} objects kept alive by cycles only the collector frees: {alive}"


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
async def test_closed_http_connections_free_their_transport_behind_a_freeze(reset: bool) -> None:
    """Keep-alive HTTP connections frozen while open, then closed, free their transport."""
    async with serve(make_settings()) as gw:
        socks = [await asyncio.to_thread(_keep_alive, gw.port) for _ in range(CONNECTIONS)]
        gc.collect()
        refs = _http_transports()
        assert len(refs) >= CONNECTIONS
        gc.freeze()
        try:
            for sock in socks:
                if reset:  # RST, no FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            socks.clear()
            alive, count = await _alive_after(refs)
        finally:
            gc.unfreeze()
    assert alive == [], f"{count} objects kept alive by cycles only the collector frees: {alive}"
