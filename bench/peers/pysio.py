"""python-socketio the way a team would build the gateway with it: rooms per user, Redis manager.

``python -m bench.peers.pysio --port PORT --redis URL`` runs under uvicorn (its defaults:
uvloop, httptools, websockets), one process:

- Socket.IO on ``/socket.io/`` (``AsyncServer``, ASGI, ``AsyncRedisManager`` so several
  processes could share the rooms): ``watch`` (a list of user ids) joins one room per user and
  acks the count; each change is emitted as ``presence`` to the user's room.
- A Starlette route ``POST /v1/apps/{app}/webhooks/{provider}`` (Tencent single events,
  RongCloud batches; signatures not checked) writes each state to Redis (``HSET
  presence:<user>``, one pipeline per request) and emits it; ``GET /readyz``, ``GET /metrics``
  (GC pauses).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as aioredis
import socketio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.peers.providers import GcPauses, ack, parse


def create_app(url: str) -> Any:
    gc_pauses = GcPauses()
    store = aioredis.Redis.from_url(url)
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(url),
        cors_allowed_origins="*",
    )

    @sio.on("watch")  # type: ignore[untyped-decorator]
    async def watch(sid: str, users: list[str]) -> int:
        for user in users:
            await sio.enter_room(sid, user)
        return len(users)

    async def webhook(request: Request) -> Response:
        provider = request.path_params["provider"]
        try:
            states = parse(provider, await request.body())
        except (msgspec.DecodeError, KeyError, ValueError):
            return Response(b"bad request", 400)
        async with store.pipeline(transaction=False) as pipe:
            for st in states:
                pipe.hset(f"presence:{st.user}", mapping={"status": st.status, "since": st.since})
            await pipe.execute()
        for st in states:
            state = {"user": st.user, "status": st.status, "since": st.since, "v": st.v}
            await sio.emit("presence", state, room=st.user)
        return Response(ack(provider), media_type="application/json")

    async def readyz(request: Request) -> Response:
        return Response(b"ok")

    async def metrics(request: Request) -> Response:
        return Response(gc_pauses.metrics(), media_type="text/plain")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await store.aclose()

    web = Starlette(
        routes=[
            Route("/v1/apps/{app}/webhooks/{provider}", webhook, methods=["POST"]),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    return socketio.ASGIApp(sio, other_asgi_app=web)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.peers.pysio")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis", required=True)
    a = p.parse_args()
    uvicorn.run(
        create_app(a.redis),
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
    )
