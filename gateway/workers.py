"""``serve --workers N``: N gateway processes on one listening socket (SPEC section 2).

The parent binds the port once (so port 0, "address in use" and the bind address are handled
in one place, and a worker that dies loses no queued connection: the accept queue belongs to
the shared socket) and hands it to uvicorn's ``Multiprocess`` supervisor, which spawns the
workers, health-checks them over a pipe, restarts one that dies (SIGHUP: a rolling restart)
and, on SIGTERM/SIGINT, sends SIGTERM to every worker and waits: each one drains as a single
process does (WebSockets closed with 1012). Every worker is a full node on Redis; the memory
store is per process, so N > 1 without Redis is refused before anything starts.

``/metrics`` on any worker is the sum over all of them (``gateway.metrics_merge``): each
worker also serves its own exposition on a private unix socket, ``<dir>/<pid>.sock`` (the
directory is mode 0700, made by the parent), and the worker answering ``/metrics`` gathers
its siblings' texts there and sums them. A worker that does not answer within
``PEER_TIMEOUT_S`` is left out, which ``presence_workers`` (how many were summed) shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import Settings
from gateway.metrics_merge import merge

log = logging.getLogger(__name__)

MAX_WORKERS = 256
PEER_TIMEOUT_S = 1.0
PARENT_POLL_S = 0.5
MAX_PEER_TEXT = 16 * 1024 * 1024
END = b"# EOF\n"  # a text cut short by a dying worker must not be summed as if whole
WORKERS_DIR_ENV = "PRESENCE_WORKERS_DIR"
"""Where the workers' metrics sockets go (default: a fresh temp dir); set it to scrape one
worker alone, e.g. ``curl --unix-socket $PRESENCE_WORKERS_DIR/<pid>.sock http://x/``."""


def refusal(settings: Settings, workers: int) -> str | None:
    """Why ``workers`` processes cannot serve ``settings`` (None: they can)."""
    if not 1 <= workers <= MAX_WORKERS:
        return f"--workers must be from 1 to {MAX_WORKERS}"
    if workers > 1 and settings.redis is None:
        return (
            f"--workers {workers} needs Redis: the in-memory presence store is per process, "
            "so each worker would see only the webhooks it received and fan out only to its "
            "own clients; set [redis] url (or REDIS_URL), or run --workers 1"
        )
    return None


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host`` (as uvicorn's own bind does), made
    inheritable for the workers; IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted ones."""
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
        for family, type_, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            if port == 0:  # every address on the same (first chosen) port
                port = sock.getsockname()[1]
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def run(settings: Settings, *, host: str, port: int, workers: int, log_level: str) -> int:
    """Supervise ``workers`` gateway processes on ``host:port``; the exit status."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from gateway.cli import uvicorn_options

    reason = refusal(settings, workers)
    if reason is not None:
        print(f"presence-gateway serve: {reason}", file=sys.stderr)
        return 2
    try:
        sockets = bind(host, port)
    except OSError as exc:
        print(f"presence-gateway serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    given = os.environ.get(WORKERS_DIR_ENV)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="presence-workers-"))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    factory = functools.partial(worker_app, settings, str(directory), log_level, os.getpid())
    config = uvicorn.Config(
        factory, factory=True, workers=workers, log_config=None, **uvicorn_options()
    )
    for sock in sockets:
        log.info("listening on %s with %d workers", sock.getsockname()[:2], workers)
    supervisor = Multiprocess(config, sockets=sockets)
    try:
        supervisor.run()
    finally:
        for sock in sockets:
            sock.close()
        if given:
            for path in directory.glob("*.sock"):
                path.unlink(missing_ok=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        print("presence-gateway serve: a worker failed to start (see its log)", file=sys.stderr)
        return 1
    return 0


def worker_app(settings: Settings, directory: str, log_level: str, parent: int) -> WorkerFront:
    """The app of one worker process (uvicorn calls it in the child, after the spawn)."""
    from gateway.app import create_app
    from gateway.cli import LOG_FORMAT

    threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()

    logging.basicConfig(
        level=log_level.upper(), format=LOG_FORMAT.replace(" %(name)s", " [%(process)d] %(name)s")
    )
    return WorkerFront(create_app(settings), Path(directory))


class WorkerFront:
    """A worker's app: the gateway, plus its metrics socket and the summed ``/metrics``."""

    def __init__(self, app: Any, directory: Path) -> None:
        self.app: ASGIApp = app
        self.state = app.state
        self.directory = directory
        self.path = directory / f"{os.getpid()}.sock"
        self._server: asyncio.Server | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/metrics":
            await self._metrics(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _own_text(self) -> bytes:
        rendered: bytes = self.state.gateway.metrics.render()
        return rendered

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def on_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._stop()
            return message

        async def on_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self._start()
            await send(message)

        try:
            await self.app(scope, on_receive, on_send)
        finally:
            await self._stop()

    async def _start(self) -> None:
        _forget_dead(self.directory)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve_own, path=str(self.path))

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self.path.unlink(missing_ok=True)

    async def _serve_own(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(self._own_text() + END)
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The gateway's own ``/metrics`` response, its body replaced by the sum over all
        workers when it is a 200 (anything else, e.g. a 405, passes through)."""
        start: Message | None = None
        body = bytearray()

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        assert start is not None, "the app sent no response"
        if start["status"] == 200 and scope["method"] == "GET":  # HEAD: no body to sum
            siblings = await self._gather()
            body = bytearray(merge([body.decode(), *siblings]))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": bytes(body)})

    async def _gather(self) -> list[str]:
        """The other live workers' texts (a worker that does not answer is left out)."""
        paths = [p for p in self.directory.glob("*.sock") if p != self.path]
        texts = await asyncio.gather(*(_fetch(p) for p in paths))
        return [t for t in texts if t is not None]


async def _fetch(path: Path) -> str | None:
    """One sibling's text, or None when it is gone, stuck, cut short or oversized."""
    data = bytearray()
    try:
        async with asyncio.timeout(PEER_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                while len(data) <= MAX_PEER_TEXT and (chunk := await reader.read(65536)):
                    data += chunk
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None  # gone (restarting) or stuck: left out, presence_workers says so
    if len(data) > MAX_PEER_TEXT or not data.endswith(END):
        log.warning("a worker's metrics were cut short or over %d bytes: left out", MAX_PEER_TEXT)
        return None
    return data[: -len(END)].decode()


def _exit_with(parent: int) -> None:
    """Drain (SIGTERM to itself) once the parent is gone, e.g. SIGKILLed: an orphan worker
    would keep the port, and a restarted parent could not bind it."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    log.warning("the supervisor (pid %d) is gone: shutting down", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _forget_dead(directory: Path) -> None:
    """Remove the sockets of workers that are gone (killed before they could)."""
    for path in directory.glob("*.sock"):
        try:
            os.kill(int(path.stem), 0)
        except ValueError:
            continue
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            continue
