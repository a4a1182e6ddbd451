"""A loopback receiver of webhooks out for ``python -m bench webhooks-out``: verifies each
request's Standard Webhooks signature with the ``standardwebhooks`` package (as a real
backend would) and answers as the scenario tells it: a status, or hold until released."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.procs import LOOPBACK

SECRET = "whsec_" + "YmVuY2gtd2ViaG9va3Mtb3V0LXNlY3JldC0wMTIzNDU="  # 32 bytes
STALL = -1  # an answer: hold the request until ``released`` (the gateway's time-out is long)


@dataclass
class Hit:
    """One request as received."""

    headers: dict[str, str]
    body: dict[str, Any]
    verified: bool
    status: int  # what it was answered

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def user(self) -> str:
        return str(self.body["data"]["user"])


class Receiver:
    """An ASGI app served by uvicorn on a free loopback port."""

    def __init__(self, secret: str = SECRET) -> None:
        self.hook = Webhook(secret)
        self.hits: list[Hit] = []
        self.answers: list[int] = []  # next answers, in order; then ``default``
        self.default = 200
        self.answer: Callable[[dict[str, Any]], int] | None = None  # by body, before answers
        self.released = asyncio.Event()
        self._changed = asyncio.Condition()
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}/hook"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            self.hook.verify(raw, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        body = json.loads(raw)
        status = self.answer(body) if self.answer else 0
        if not status:
            status = self.answers.pop(0) if self.answers else self.default
        async with self._changed:
            self.hits.append(Hit(headers, body, verified, status))
            self._changed.notify_all()
        if status == STALL:
            await self.released.wait()
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait(self, check: Callable[[list[Hit]], bool], within: float = 10.0) -> list[Hit]:
        """Wait until ``check(hits)`` holds; return the hits."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: check(self.hits))
        return list(self.hits)

    def delivered(self, user: str | None = None) -> list[Hit]:
        """The hits answered 2xx (of ``user``), in arrival order."""
        return [h for h in self.hits if 200 <= h.status < 300 and (user is None or h.user == user)]


@contextlib.asynccontextmanager
async def receiving(secret: str = SECRET) -> AsyncIterator[Receiver]:
    """A running receiver until exit (held requests are released first)."""
    receiver = Receiver(secret)
    config = uvicorn.Config(
        receiver, host=LOOPBACK, port=receiver.port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("receiver did not start")
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        receiver.released.set()
        server.should_exit = True
        await task
