"""What an idle WebSocket connection holds (issue 14 item 7; ``python -m bench.heapshot``).

Each test names one thing an open, idle connection no longer keeps, through a live gateway
and real clients: a per-connection instance dict, the handshake's scope, coroutine frames,
the upgraded HTTP protocol, a copy of every watched user id, a timer for its token.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.server import ServerProtocol

from gateway import tokens, watcher
from gateway.config import AppConfig
from gateway.session import Session
from gateway.transport import EdgeHTTPProtocol, PresenceWebSocketProtocol
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import app_of, make_settings
from tests.wsclient import Client


@dataclass
class Node:
    gw: LiveGateway
    app: AppConfig

    async def login(self, user: str, **claims: Any) -> Client:
        return await Client.login(
            self.gw.ws_url, self.app.id, self.app.client_secret, user, **claims
        )

    def sessions(self) -> list[Session]:
        return [s for s in self.gw.app.gw.hub.sessions if isinstance(s, Session)]


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    settings = make_settings()
    async with serve(settings) as gw:
        yield Node(gw, app_of(settings))


def protocol_of(session: Session) -> PresenceWebSocketProtocol:
    raw = session.sink.raw  # type: ignore[union-attr]
    assert isinstance(raw, PresenceWebSocketProtocol)
    return raw


async def test_open_websocket_protocol_has_no_instance_dict(node: Node) -> None:
    """Every attribute of an open connection's protocol (and its websockets state machine)
    is a slot: no instance dict."""
    client = await node.login("alice")
    await client.watch("bob")
    (session,) = node.sessions()
    protocol = protocol_of(session)
    assert vars(protocol) == {}
    assert vars(protocol.conn) == {}  # websockets' state machine too
    await client.close()


async def test_open_websocket_keeps_only_the_path_of_its_scope(node: Node) -> None:
    """Once open, the scope keeps only its path (for the access log), no addresses."""
    client = await node.login("alice")
    await client.watch("bob")
    (session,) = node.sessions()
    protocol = protocol_of(session)
    assert dict(protocol.scope) == {"path": f"/v1/apps/{node.app.id}/ws"}
    assert protocol.client is None and protocol.server is None
    assert (await client.request("ping"))["type"] == "pong"  # still served
    await client.close()


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The coroutines a task is suspended in, outermost first."""
    chain = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_await"):
        chain.append(coro.__qualname__)
        coro = coro.cr_await
    return chain


async def test_idle_session_waits_in_four_coroutine_frames(node: Node) -> None:
    """An idle connection's task waits in uvicorn's task, the app, the session, receive."""
    client = await node.login("alice")
    await client.watch("bob")
    assert (await client.request("ping"))["type"] == "pong"
    (session,) = node.sessions()
    protocol = protocol_of(session)
    (task,) = [
        t
        for t in protocol.tasks
        if t.get_coro().cr_frame.f_locals.get("self") is protocol  # type: ignore[union-attr]
    ]
    chain = _awaiting(task)
    assert chain[-2:] == ["Session.run", "PresenceWebSocketProtocol.receive"], chain
    assert len(chain) <= 4, chain
    await client.close()


async def test_upgrade_leaves_no_http_protocol_behind(node: Node) -> None:
    """The HTTP protocol that upgraded a connection is freed by reference counting alone."""
    gc.collect()
    gc.disable()  # a cycle stays visible in gc.get_objects() instead of being collected
    try:
        client = await node.login("alice")
        await client.watch("bob")
        left = [
            type(o).__qualname__
            for o in gc.get_objects()
            if type(o) in (EdgeHTTPProtocol, ServerProtocol)  # uvicorn's discarded one too
        ]
    finally:
        gc.enable()
    assert left == []
    await client.close()


async def test_watched_user_ids_are_one_string_per_user(node: Node) -> None:
    """Connections watching the same user share its id string, not one copy each."""
    a = await node.login("alice")
    b = await node.login("carol")
    await a.watch("bob", "dave")
    await b.watch("dave", "bob")
    first, second = node.sessions()
    keys = {id(k) for s in (first, second) for k in s.outbox.watching}
    assert len(keys) == 2
    await a.close()
    await b.close()


async def test_tokens_expiring_in_one_second_share_one_timer(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections whose tokens expire in the same second wait on one timer; both close."""
    monkeypatch.setattr(tokens, "LEEWAY_S", 0)
    exp = int(time.time()) + 2
    clients = [await node.login(u, ttl_s=exp - int(time.time())) for u in ("alice", "carol")]
    claims = {s.claims.exp for s in node.sessions() if s.claims is not None}
    expiries = watcher._expiries()
    due = {k: len(v) for k, v in expiries.seconds.items()}
    if len(claims) == 1:  # the clock did not turn a second between the two logins
        assert due == {exp: 2}
    for client in clients:
        code, reason = await client.closed_with(wait=6)
        assert code == 4001 and "expired" in reason
    assert time.time() >= exp - 0.05
    assert expiries.seconds == {}


async def test_closed_connection_leaves_its_token_expiry(node: Node) -> None:
    """A connection that closes before its token expires is no longer waited for, and a
    second nobody waits for any more goes with its timer (the soak's slow RSS growth)."""
    client = await node.login("alice")
    (session,) = node.sessions()
    second = session._expiry
    expiries = watcher._expiries()
    assert second is not None and session in expiries.seconds[second]
    timer = expiries.timers[second]
    await client.close()
    async with asyncio.timeout(5):
        while node.sessions():  # noqa: ASYNC110 (polling against a deadline)
            await asyncio.sleep(0.01)
    assert second not in expiries.seconds and second not in expiries.timers
    assert timer.cancelled()
