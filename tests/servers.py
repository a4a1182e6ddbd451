"""Real redis-server processes for tests: standalone, restartable, and a 3-master cluster.

Every server runs on a free loopback port in its own temp dir, with persistence off. Waiting
for a state is always a poll against a deadline, never a blind sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0
POLL_S = 0.02


def require_binary(name: str) -> str:
    """The path of ``name``; skip the test without it, or fail under CI (where it must exist)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found on PATH (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_cluster_port() -> tuple[int, int]:
    """A free client port and a free cluster-bus port."""
    return free_port(), free_port()


def raw_command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command over a fresh socket and return the raw reply (no client library)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        reply = b""
        while True:
            chunk = s.recv(65536)
            reply += chunk
            if not chunk or _complete(reply):
                return reply


def _complete(reply: bytes) -> bool:
    if reply[:1] in (b"+", b"-", b":"):
        return reply.endswith(b"\r\n")
    if reply[:1] == b"$":
        head, _, rest = reply.partition(b"\r\n")
        size = int(head[1:])
        return size < 0 or len(rest) >= size + 2
    return False


def answers_ping(port: int) -> bool:
    """Whether a redis-server on ``port`` answers PING."""
    try:
        return raw_command(port, "PING", timeout=0.5).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


async def wait_until_async(
    check: Callable[[], bool], what: str, within: float = START_TIMEOUT_S
) -> None:
    """``wait_until`` for async tests: the checks run in a thread, the loop stays free."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


class RedisServer:
    """One redis-server process on a fixed loopback port; stop and start it at will."""

    def __init__(
        self, directory: Path, port: int | None = None, *, cluster_bus_port: int | None = None
    ) -> None:
        self.binary = require_binary("redis-server")
        self.directory = directory
        self.port = port or free_port()
        self.cluster_bus_port = cluster_bus_port
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--logfile", "redis.log",
        ]  # fmt: skip
        if self.cluster_bus_port is not None:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
                "--cluster-port", str(self.cluster_bus_port),
            ]  # fmt: skip
        return argv

    def spawn(self) -> None:
        """Start the process without waiting for it to answer."""
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            self._argv(), cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
        return answers_ping(self.port)

    def start(self) -> None:
        """Start the server (same port) and return once it answers PING (blocks briefly)."""
        self.spawn()
        wait_until(self._ready, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Kill the server (like a crash) and return once it is gone (blocks briefly)."""
        proc = self.kill()
        if proc is not None:
            proc.wait(timeout=START_TIMEOUT_S)

    def kill(self, sig: int = signal.SIGKILL) -> subprocess.Popen[bytes] | None:
        """Send ``sig``; return the process to reap (None when it was not running)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
        return proc

    async def astart(self) -> None:
        """``start`` that keeps the event loop running while it polls."""
        self.spawn()
        await wait_until_async(self._ready, f"redis-server on port {self.port}")

    async def astop(self) -> None:
        """``stop`` that keeps the event loop running while it waits."""
        proc = self.kill()
        if proc is not None:
            await asyncio.to_thread(proc.wait, START_TIMEOUT_S)
        await wait_until_async(lambda: not answers_ping(self.port), "redis-server to stop")


class ClusterServers:
    """Three cluster-enabled redis-servers joined as 3 masters, no replicas."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.cli = require_binary("redis-cli")
        self.nodes: list[RedisServer] = []
        for i in range(size):
            port, bus = free_cluster_port()
            self.nodes.append(RedisServer(directory / f"node{i}", port, cluster_bus_port=bus))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _state_ok(self) -> bool:
        for node in self.nodes:
            try:
                info = raw_command(node.port, "CLUSTER", "INFO")
            except OSError:
                return False
            if (
                b"cluster_state:ok" not in info
                or b"cluster_known_nodes:%d" % len(self.nodes) not in info
            ):
                return False
        return True

    def start(self) -> None:
        """Start every node, create the cluster, return once every node says it is ok."""
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            wait_until(node._ready, f"cluster node on port {node.port}")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        wait_until(self._state_ok, "cluster_state:ok on every node", timeout=30)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def running(server: RedisServer | ClusterServers) -> Iterator[None]:
    """Start ``server`` and stop it on exit, even when starting failed half way."""
    try:
        server.start()
        yield
    finally:
        server.stop()
