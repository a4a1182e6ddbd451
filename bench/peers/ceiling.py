"""The ceiling: a bare ``websockets`` server forwarding Redis pub/sub messages, no presence logic.

``python -m bench.peers.ceiling --port WS --http-port HTTP --redis URL``

- WebSocket (any path): the client sends ``{"watch": ["u1", ...]}``; the server subscribes to
  ``p:<user>`` for each user not yet subscribed in this process (refcounted over connections),
  waits for Redis to confirm, and answers ``{"ok": <count>}``. From then on every message
  published on a watched user's channel is sent to the connection as is: one ``ws.send`` per
  message per socket, no coalescing, no versions, no snapshot.
- HTTP (``--http-port``, same process): ``POST .../webhooks/{tencent,rongcloud}`` turns each
  event into ``{"user","status","since","v"}`` and PUBLISHes it on ``p:<user>`` (a batch in one
  pipeline), then acks; ``GET /readyz``; ``GET /metrics`` (GC pauses). Keep-alive HTTP/1.1 with
  ``Content-Length`` bodies only: enough for the bench's client, not a general HTTP server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import cast

import msgspec
import redis.asyncio as aioredis
import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bench.peers.providers import GcPauses, ack, encode, parse

log = logging.getLogger("ceiling")
BOOT = "ceiling:boot"  # always subscribed, so the listener never runs out of channels


class _Watch(msgspec.Struct):
    watch: list[str]


_decode_watch = msgspec.json.Decoder(_Watch).decode


class Hub:
    """Per-user channel subscriptions shared by every connection of the process."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url)
        self.pubsub = self.redis.pubsub()
        self.subs: dict[bytes, set[ServerConnection]] = {}
        self.confirm: dict[bytes, asyncio.Future[None]] = {}
        self.listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe(BOOT)
        self.listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listener
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.redis.aclose()

    async def add(self, ws: ServerConnection, users: list[str]) -> None:
        """Subscribe ``ws`` to ``users``; returns once Redis confirmed every new channel."""
        fresh: list[bytes] = []
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for user in users:
            ch = b"p:" + user.encode()
            conns = self.subs.get(ch)
            if conns is None:
                self.subs[ch] = {ws}
                fut = self.confirm[ch] = loop.create_future()
                fresh.append(ch)
                waits.append(fut)
            else:
                conns.add(ws)
                if ch in self.confirm:
                    waits.append(self.confirm[ch])
        if fresh:
            await self.pubsub.subscribe(*fresh)
        if waits:
            await asyncio.gather(*waits)

    async def remove(self, ws: ServerConnection, users: set[str]) -> None:
        gone: list[bytes] = []
        for user in users:
            ch = b"p:" + user.encode()
            conns = self.subs.get(ch)
            if conns is None:
                continue
            conns.discard(ws)
            if not conns:
                del self.subs[ch]
                gone.append(ch)
        if gone:
            with contextlib.suppress(Exception):
                await self.pubsub.unsubscribe(*gone)

    async def _listen(self) -> None:
        async for msg in self.pubsub.listen():
            kind = msg["type"]
            channel = cast(bytes, msg["channel"])
            if kind == "message":
                conns = self.subs.get(channel)
                if not conns:
                    continue
                data = cast(bytes, msg["data"])
                for ws in list(conns):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(data, text=True)
            elif kind == "subscribe":
                fut = self.confirm.pop(channel, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def publish(self, provider: str, body: bytes) -> None:
        states = parse(provider, body)
        if len(states) == 1:
            st = states[0]
            await self.redis.publish(f"p:{st.user}", encode(st))
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for st in states:
                pipe.publish(f"p:{st.user}", encode(st))
            await pipe.execute()


async def session(hub: Hub, ws: ServerConnection) -> None:
    mine: set[str] = set()
    try:
        async for raw in ws:
            try:
                users = _decode_watch(raw).watch
            except msgspec.DecodeError:
                await ws.close(1003, "expected {watch: [...]}")
                return
            new = [u for u in dict.fromkeys(users) if u not in mine]
            mine.update(new)
            await hub.add(ws, new)
            await ws.send(b'{"ok":%d}' % len(new), text=True)
    except ConnectionClosed:
        pass
    finally:
        await hub.remove(ws, mine)


class Webhooks(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, ``Content-Length`` bodies."""

    def __init__(self, hub: Hub, gc_pauses: GcPauses) -> None:
        self.hub = hub
        self.gc_pauses = gc_pauses
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()

    def _next(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(buf) < end + 4 + length:
            return
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        method, target, version = head.split(b"\r\n", 1)[0].split(b" ", 2)
        path = target.split(b"?", 1)[0]
        self.task = asyncio.create_task(self._handle(method, path, body, version == b"HTTP/1.0"))

    async def _handle(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        status, reply = 200, b"ok"
        try:
            if method == b"POST" and b"/webhooks/" in path:
                provider = path.rsplit(b"/", 1)[1].decode()
                await self.hub.publish(provider, body)
                reply = ack(provider)
            elif path == b"/metrics":
                reply = self.gc_pauses.metrics()
            elif path != b"/readyz":
                status, reply = 404, b"not found"
        except (msgspec.DecodeError, KeyError, ValueError):
            status, reply = 400, b"bad request"
        except Exception:
            log.exception("webhook failed")
            status, reply = 503, b"unavailable"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (status, len(reply), reply)
            )
            if close:
                self.transport.close()
        self.task = None
        if self.buf:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def main(port: int, http_port: int, url: str) -> None:
    gc_pauses = GcPauses()
    hub = Hub(url)
    await hub.start()
    loop = asyncio.get_running_loop()
    http = await loop.create_server(lambda: Webhooks(hub, gc_pauses), "127.0.0.1", http_port)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.cancel)
    async with serve(lambda ws: session(hub, ws), "127.0.0.1", port, compression=None):
        with contextlib.suppress(asyncio.CancelledError):
            await stop
    http.close()
    await hub.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.peers.ceiling")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--redis", required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(main(a.port, a.http_port, a.redis))
