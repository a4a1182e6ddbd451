"""Servers under test. A target is "a server command + a client dialect".

The gateway, and the peers of ``--vs`` (``bench/peers/``): a bare ``websockets`` ceiling,
python-socketio and Node's socket.io. Each is a ``Target`` subclass: it starts its process on
the run's Redis, accepts the same webhooks on ``webhook_path`` (``Server.webhook_port``) and
names the client dialect (``bench.dialects``) the watchers speak to it. ``prepare()`` installs
what a peer needs (pip into this interpreter's environment, ``npm ci``) before the run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import (
    LOOPBACK,
    BenchError,
    Child,
    Cores,
    Redis,
    free_port,
    http_get,
    spawn,
    wait_until,
)

APP_ID = "bench"
CLIENT_SECRET = "bench-client-secret-0123456789abcdef"
API_KEY = "bench-api-key-0123456789abcdef0123456789"
SDKAPPID = 1400000000
CALLBACK_TOKEN = "bench-callback-token-0123456789abcdef"
RC_APP_KEY = "bench-app-key"
RC_APP_SECRET = "bench-app-secret-0123456789abcdef"
# Event times are base + event number (see bench.plan): allow a wide window both ways.
MAX_EVENT_AGE_S = 86400


@dataclass
class Server:
    """One running server process of a target."""

    name: str
    port: int
    child: Child
    http_port: int = 0  # where webhooks, /readyz and /metrics are, when not on ``port``

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def webhook_port(self) -> int:
        return self.http_port or self.port


class Target:
    """The gateway: ``python -m gateway serve --config <generated> --port <free>``."""

    name = "gateway"
    dialect = "gateway"
    webhook_path = f"/v1/apps/{APP_ID}/webhooks"
    ws_path = f"/v1/apps/{APP_ID}/ws"
    python = True  # py-spy can profile it
    needs_redis = False
    separate_http = False  # webhooks on a second port of the same process

    def __init__(self, log_level: str = "warning", max_watch: int = 1000, workers: int = 1) -> None:
        self.log_level = log_level
        self.max_watch = max_watch
        self.workers = workers  # gateway processes on the one port (serve --workers)

    def config(self, redis: Redis | None) -> str:
        lines = [
            "[presence]",
            "offline_grace_ms = 0",
            f"session_retention_s = {MAX_EVENT_AGE_S}",
            f"max_event_age_s = {MAX_EVENT_AGE_S}",
            # event times run ahead of the clock (base + event number): not "from the future"
            f"future_skew_s = {MAX_EVENT_AGE_S}",
            "",
            "[server]",  # every bench connection comes from 127.0.0.1
            "max_connections_per_ip = 1000000",
            # the senders open their keep-alive connections up front and some wait longer than
            # the 10 s header deadline for their first request: that is not what is measured
            "request_timeout_s = 300",
            "",
        ]
        if redis is not None:
            lines += [
                "[redis]",
                f'url = "{redis.url}"',
                f"cluster = {'true' if redis.cluster else 'false'}",
                "",
            ]
        lines += [
            "[[apps]]",
            f'id = "{APP_ID}"',
            f'client_secret = "{CLIENT_SECRET}"',
            f'api_key = "{API_KEY}"',
            'watch_policy = "open"',
            f"max_watch = {self.max_watch}",
            'allowed_origins = ["*"]',
            "",
            "[apps.tencent]",
            f"sdkappid = {SDKAPPID}",
            f'callback_token = "{CALLBACK_TOKEN}"',
            "",
            "[apps.rongcloud]",
            f'app_key = "{RC_APP_KEY}"',
            f'app_secret = "{RC_APP_SECRET}"',
            "",
        ]
        return "\n".join(lines)

    def prepare(self) -> None:
        """Install what this target needs (nothing for the gateway: it is the project)."""

    def argv(self, workdir: Path, redis: Redis | None, port: int, http_port: int) -> list[str]:
        path = workdir / "gateway.toml"
        if not path.exists():
            path.write_text(self.config(redis))
        return [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(path),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--log-level",
            self.log_level,
            *(["--workers", str(self.workers)] if self.workers != 1 else []),
        ]

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PRESENCE_CONFIG")}

    def start(
        self, workdir: Path, redis: Redis | None, cores: Cores, count: int = 1
    ) -> list[Server]:
        """Start ``count`` server processes (sharing ``redis``) and wait until each is ready."""
        if self.needs_redis and redis is None:
            raise BenchError(f"{self.name} needs Redis (not --backend memory)")
        servers: list[Server] = []
        try:
            for i in range(count):
                port = free_port()
                http_port = free_port() if self.separate_http else 0
                name = f"{self.name}-{'ABCDEFGH'[i]}"
                argv = self.argv(workdir, redis, port, http_port)
                child = spawn(name, argv, workdir, cores.server, self.env(), cores.nice)
                servers.append(Server(name, port, child, http_port))
            for server in servers:
                wait_until(
                    lambda s=server: http_get(s.webhook_port, "/readyz")[0] == 200,
                    30,
                    f"{server.name} /readyz",
                    server.child,
                )
        except BaseException:
            for server in servers:
                server.child.stop()
            raise
        return servers


ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
# What the Python peers need beyond the project's own dependencies (pinned: the README's
# figures come from these versions).
PEER_PIP = {"socketio": "python-socketio==5.18.1"}


def _pip_install(module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        return
    spec = PEER_PIP[module]
    print(f"bench: installing {spec} into {sys.prefix}", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=False)
    if done.returncode != 0:
        raise BenchError(f"pip install {spec} failed")
    importlib.invalidate_caches()


class PeerTarget(Target):
    """A peer: its own server command on the run's Redis; the same webhooks and scenarios."""

    needs_redis = True

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env


class CeilingTarget(PeerTarget):
    """A bare ``websockets`` server forwarding Redis pub/sub: ``bench/peers/ceiling.py``."""

    name = "ceiling"
    dialect = "ceiling"
    ws_path = "/"
    separate_http = True

    def argv(self, workdir: Path, redis: Redis | None, port: int, http_port: int) -> list[str]:
        assert redis is not None
        return [
            sys.executable,
            "-m",
            "bench.peers.ceiling",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--redis",
            redis.url,
        ]


class PySioTarget(PeerTarget):
    """python-socketio + AsyncRedisManager under uvicorn: ``bench/peers/pysio.py``."""

    name = "python-socketio"
    dialect = "socketio"
    ws_path = "/socket.io/?EIO=4&transport=websocket"

    def prepare(self) -> None:
        _pip_install("socketio")

    def argv(self, workdir: Path, redis: Redis | None, port: int, http_port: int) -> list[str]:
        assert redis is not None
        return [
            sys.executable,
            "-m",
            "bench.peers.pysio",
            "--port",
            str(port),
            "--redis",
            redis.url,
        ]


class NodeSioTarget(PeerTarget):
    """Node socket.io + @socket.io/redis-adapter: ``bench/peers/node/server.js``."""

    name = "socketio-node"
    dialect = "socketio"
    ws_path = "/socket.io/?EIO=4&transport=websocket"
    python = False

    def prepare(self) -> None:
        node_dir = PEERS / "node"
        if shutil.which("node") is None or shutil.which("npm") is None:
            raise BenchError("socketio-node needs node (>= 18) and npm on PATH")
        lock = node_dir / "package-lock.json"
        installed = node_dir / "node_modules" / ".package-lock.json"
        if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
            return
        print(f"bench: npm ci in {node_dir}", file=sys.stderr)
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=node_dir, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"npm ci in {node_dir} failed")

    def argv(self, workdir: Path, redis: Redis | None, port: int, http_port: int) -> list[str]:
        assert redis is not None
        node = shutil.which("node") or "node"
        return [node, str(PEERS / "node" / "server.js"), "--port", str(port), "--redis", redis.url]


def metrics(port: int) -> dict[str, float]:
    """The gateway's Prometheus counters and gauges, summed over labels ({} if unavailable)."""
    try:
        status, body = http_get(port, "/metrics", timeout=5)
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


class SseTarget(Target):
    """The gateway, watched through SSE streams (SPEC section 10) instead of WebSockets."""

    name = "gateway-sse"
    dialect = "sse"
    ws_path = f"/v1/apps/{APP_ID}/sse"


TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (Target, SseTarget, CeilingTarget, PySioTarget, NodeSioTarget)
}
PEER_NAMES = ["ceiling", "python-socketio", "socketio-node"]
