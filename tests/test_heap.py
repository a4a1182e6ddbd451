"""Closed connections are freed by reference counting, so freezing the heap leaks nothing."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import weakref
from typing import Any

import pytest

from gateway.heap import HeapKeeper
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


HTTP_SERVER_SIDE = ("gateway.", "uvicorn.protocols.http", "h11", "httptools")
UVICORN_LEAK = pytest.mark.xfail(
    strict=True,
    reason="uvicorn cancels its keep-alive timer only when connection_lost gets no exception: "
    "after a reset the timer and the protocol hold each other (the gateway's own protocol, "
    "gateway.transport.EdgeHTTPProtocol, cancels it)",
)
HTTP_PROTOCOLS = [
    # the gateway's own (cli.uvicorn_options)
    pytest.param({}, id="edge-httptools"),
    pytest.param({"http": "httptools"}, id="httptools", marks=UVICORN_LEAK),
    pytest.param({"http": "h11"}, id="h11", marks=UVICORN_LEAK),
]


def _http_protocols() -> list[weakref.ref[Any]]:  # uvicorn's protocols, untyped here
    """Weak references to every live HTTP protocol instance of the server."""
    return [
        weakref.ref(o)
        for o in gc.get_objects()
        if issubclass(type(o), asyncio.Protocol)  # not isinstance: gc also holds weak proxies
        and type(o).__module__.startswith(("uvicorn.protocols.http", "gateway.transport"))
        and hasattr(o, "server_state")
    ]


def _exchange(port: int, requests: int, *, reset: bool) -> socket.socket:
    """A keep-alive connection that made ``requests`` requests (and read every answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    reader = sock.makefile("rb")
    for _ in range(requests):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        while reader.readline() not in (b"\r\n", b""):
            pass
        assert reader.read(2) == b"ok"
    reader.close()
    if reset:  # a vanished client: RST, no FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sock


def _cyclic_leftovers() -> list[str]:
    """Unfreeze and collect: the server-side types that only the collector could free."""
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted(
            {
                f"{type(o).__module__}.{type(o).__qualname__}"
                for o in gc.garbage
                if type(o).__module__.startswith(HTTP_SERVER_SIDE)
            }
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


@pytest.mark.parametrize("options", HTTP_PROTOCOLS)
async def test_closed_http_connections_are_freed_behind_a_freeze(options: dict[str, str]) -> None:
    """HTTP connections frozen by the running HeapKeeper, then closed, are freed all the same.

    Default asyncio loop (no uvloop); keep-alive connections that made one to three requests,
    closed cleanly or reset. Frozen objects are out of the collector's reach, so a protocol
    is freed only if reference counting alone frees it; a timer may hold one briefly.
    """
    assert "uvloop" not in type(asyncio.get_running_loop()).__module__
    gc.collect()  # earlier tests' garbage must not be frozen and blamed on this one
    settings = make_settings()
    # idle keep-alive connections are closed by the server after 3 s: long after ours close
    async with serve(settings, timeout_keep_alive=3, **options) as gw:
        keeper = gw.app.gw.heap
        socks = [
            await asyncio.to_thread(_exchange, gw.port, 1 + i % 3, reset=bool(i % 2))
            for i in range(10)
        ]
        try:
            protocols = _http_protocols()
            assert len(protocols) >= 10
            frozen = gc.get_freeze_count()  # the gateway's own keeper freezes them while open
            async with asyncio.timeout(10):
                while gc.get_freeze_count() <= frozen:  # noqa: ASYNC110 (polling, a deadline)
                    await asyncio.sleep(keeper.interval / 4)
            alive = [ref() for ref in protocols]
            assert all(p is not None and p in p.server_state.connections for p in alive)
            del alive
        finally:
            for sock in socks:
                sock.close()
            socks.clear()
        leftovers: list[str] = []
        try:
            async with asyncio.timeout(5):  # a keep-alive timer (3 s) may hold some briefly
                while any(ref() is not None for ref in protocols):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            await keeper.stop()
            leftovers = _cyclic_leftovers() or ["(alive, not garbage)"]
        finally:
            gc.unfreeze()
    assert leftovers == [], f"kept alive by cycles only the collector could free: {leftovers}"


def test_keeper_ticks_fast_while_the_heap_grows() -> None:
    """A tick that froze a burst of new objects asks for the next one sooner; a quiet one not."""
    keeper = HeapKeeper(interval=1.0, fast=0.2, burst=1000)
    gc.collect()
    gc.freeze()
    try:
        grown: list[list[int]] = [
            [] for _ in range(5000)
        ]  # tracked containers, like new connections
        assert keeper.tick(1.0) == 0.2
        assert keeper.tick(0.2) == 1.0  # nothing new since
        grown += [[] for _ in range(100)]  # below the burst rate
        assert keeper.tick(1.0) == 1.0
        assert gc.get_freeze_count() >= 5000
    finally:
        gc.unfreeze()
        del grown
