"""A small real WebSocket client speaking the gateway protocol, for tests."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway import tokens


class Client:
    """One connection; ``recv`` returns decoded messages with a timeout."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    @classmethod
    async def open(
        cls, base: str, app: str, origin: str | None = None, max_size: int | None = 2**24
    ) -> Client:
        headers = {"Origin": origin} if origin else None
        ws = await connect(
            f"{base}/v1/apps/{app}/ws",
            additional_headers=headers,
            max_size=max_size,
            open_timeout=5,
            ping_interval=None,
        )
        return cls(ws)

    @classmethod
    async def login(
        cls, base: str, app: str, secret: str, user: str = "alice", **claims: Any
    ) -> Client:
        """Open, hello with a fresh token, and check the welcome."""
        client = await cls.open(base, app)
        token = tokens.issue(secret, app, user, **claims)
        await client.send({"type": "hello", "token": token})
        welcome = await client.recv()
        assert welcome["type"] == "welcome" and welcome["user"] == user, welcome
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        import asyncio

        async with asyncio.timeout(timeout):
            data = await self.ws.recv()
        message: dict[str, Any] = json.loads(data)
        return message

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a fresh id and return the reply carrying that id."""
        self.next_id += 1
        await self.send({"type": type_, "id": self.next_id, **fields})
        while True:
            message = await self.recv()
            if message.get("id") == self.next_id:
                return message

    async def watch(self, *users: str) -> dict[str, dict[str, Any]]:
        reply = await self.request("watch", users=list(users))
        assert reply["type"] == "snapshot", reply
        return {s["user"]: s for s in reply["presence"]}

    async def next_presence(self, user: str, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            message = await self.recv(timeout)
            if message["type"] == "presence" and message["user"] == user:
                return message

    async def closed_with(self, timeout: float = 15.0) -> tuple[int | None, str]:
        """Read until the server closes; the close code and reason."""
        import asyncio

        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, "")
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.ws.close()
