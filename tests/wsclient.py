"""A small real WebSocket client speaking the gateway protocol, for tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway import tokens


def forge(header: dict[str, Any], payload: dict[str, Any], key: str | None = None) -> str:
    """A JWT built by hand: any header (``alg: none``, RS256…), HMAC-SHA256 signed with
    ``key`` when given, else with an empty signature."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = b""
    if key is not None:
        sig = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


class Client:
    """One connection; reads return decoded messages and fail after ``wait`` seconds."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    @classmethod
    async def open(
        cls,
        base: str,
        app: str,
        origin: str | None = None,
        max_size: int | None = 2**24,
        rcvbuf: int | None = None,
    ) -> Client:
        """Connect (no hello yet); ``rcvbuf`` shrinks the socket's receive buffer first."""
        headers = {"Origin": origin} if origin else None
        url = f"{base}/v1/apps/{app}/ws"
        sock: socket.socket | None = None
        if rcvbuf is not None:
            host, _, port = base.removeprefix("ws://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            except BaseException:
                sock.close()
                raise
        ws = await connect(
            url,
            additional_headers=headers,
            max_size=max_size,
            open_timeout=10,
            ping_interval=None,
            close_timeout=2,
            sock=sock,
        )
        return cls(ws)

    @classmethod
    async def login(
        cls, base: str, app: str, secret: str, user: str = "alice", **claims: Any
    ) -> Client:
        """Open, hello with a fresh token, and check the welcome."""
        client = await cls.open(base, app)
        try:
            token = tokens.issue(secret, app, user, **claims)
            welcome = await client.hello(token)
            assert welcome["type"] == "welcome" and welcome["user"] == user, welcome
        except BaseException:
            await client.close()
            raise
        return client

    async def hello(self, token: str) -> dict[str, Any]:
        """Send ``hello`` and return the server's first reply."""
        await self.send({"type": "hello", "token": token})
        return await self.recv()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a text (str) or binary (bytes) frame as is."""
        await self.ws.send(data)

    async def recv_text(self, wait: float = 5.0) -> str:
        """The next frame's text, undecoded; fails after ``wait`` seconds."""
        async with asyncio.timeout(wait):
            data = await self.ws.recv()
        assert isinstance(data, str), f"the server sent a binary frame: {data!r}"
        return data

    async def recv(self, wait: float = 5.0) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.recv_text(wait))
        return message

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a fresh id and return the reply carrying that id.

        Messages before the reply are skipped: this cannot show that nothing else came.
        """
        self.next_id += 1
        await self.send({"type": type_, "id": self.next_id, **fields})
        while True:
            message = await self.recv()
            if message.get("id") == self.next_id and message["type"] != "presence":
                return message

    async def watch(self, *users: str) -> dict[str, dict[str, Any]]:
        reply = await self.request("watch", users=list(users))
        assert reply["type"] == "snapshot", reply
        return {s["user"]: s for s in reply["presence"]}

    async def next_presence(self, user: str, wait: float = 5.0) -> dict[str, Any]:
        while True:
            message = await self.recv(wait)
            if message["type"] == "presence" and message["user"] == user:
                return message

    async def closed_with(self, wait: float = 15.0) -> tuple[int | None, str]:
        """Read until the server closes; the close code and reason."""
        try:
            async with asyncio.timeout(wait):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, "")
        raise AssertionError("unreachable")

    def pause_reading(self) -> None:
        """Stop reading from the socket, like a client whose tab is frozen."""
        self.ws.transport.pause_reading()

    def resume_reading(self) -> None:
        self.ws.transport.resume_reading()

    async def close(self) -> None:
        await self.ws.close()


class Watcher:
    """A client whose reader task keeps each watched user's latest state and checks the order.

    A snapshot or resync is a user's baseline; every later ``presence`` of that user must have
    a strictly higher ``v``, none may arrive before the user's snapshot or after the ``ok`` of
    its unwatch. A snapshot or resync below a ``v`` already held is flagged too (a resync
    may legitimately do that only after the store lost its data). Broken rules are
    collected in ``violations``, never raised in the reader.
    """

    def __init__(self, client: Client, name: str = "") -> None:
        self.client = client
        self.name = name
        self.view: dict[str, dict[str, Any]] = {}  # watched user -> latest state
        self.history: dict[str, list[int]] = {}  # user -> every v received, in order
        self.violations: list[str] = []
        self.close_code: int | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._unwatching: dict[int, list[str]] = {}
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def login(
        cls, base: str, app: str, secret: str, user: str = "alice", **claims: Any
    ) -> Watcher:
        return cls(await Client.login(base, app, secret, user, **claims), user)

    async def request(self, type_: str, wait: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply (read by the reader task)."""
        self.client.next_id += 1
        rid = self.client.next_id
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = reply
        if type_ == "unwatch":
            self._unwatching[rid] = list(fields["users"])
        try:
            await self.client.send({"type": type_, "id": rid, **fields})
            async with asyncio.timeout(wait):
                return await reply
        finally:
            self._replies.pop(rid, None)

    async def watch(self, *users: str) -> dict[str, Any]:
        reply = await self.request("watch", users=list(users))
        assert reply["type"] == "snapshot", reply
        return reply

    async def unwatch(self, *users: str) -> None:
        reply = await self.request("unwatch", users=list(users))
        assert reply["type"] == "ok", reply

    def _fail(self, what: str) -> None:
        self.violations.append(f"{self.name}: {what}")

    def _baseline(self, state: dict[str, Any], kind: str) -> None:
        user = state["user"]
        held = self.view.get(user)
        if held is not None and state["v"] < held["v"]:
            self._fail(f"{kind} of {user} at v {state['v']} after v {held['v']}")
        self.view[user] = state
        self.history.setdefault(user, []).append(state["v"])

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "presence":
            user = msg["user"]
            state = {k: v for k, v in msg.items() if k != "type"}
            held = self.view.get(user)
            if held is None:
                self._fail(f"presence of {user} (v {state['v']}) while not watched")
            elif state["v"] <= held["v"]:
                self._fail(f"presence of {user} at v {state['v']} after v {held['v']}")
            self.view[user] = state
            self.history.setdefault(user, []).append(state["v"])
            return
        if kind in ("snapshot", "resync"):
            for state in msg["presence"]:
                self._baseline(state, kind)
        rid = msg.get("id")
        if kind == "ok" and rid in self._unwatching:
            for user in self._unwatching.pop(rid):
                self.view.pop(user, None)
        if kind != "resync" and isinstance(rid, int) and rid in self._replies:
            reply = self._replies.pop(rid)
            if not reply.done():
                reply.set_result(msg)

    async def _read(self) -> None:
        try:
            async for data in self.client.ws:
                self._on_message(json.loads(data))
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.client.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_exception(ConnectionError("connection closed"))

    async def closed(self) -> int | None:
        """Wait for the connection to end; the server's close code."""
        await asyncio.shield(self._task)
        return self.close_code

    async def close(self) -> None:
        await self.client.close()
        await self._task
