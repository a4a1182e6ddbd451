"""Servers under test. A target is "a server command + a client dialect".

Today there is one, the gateway. A peer (``--vs``: python-socketio, Node socket.io, a bare
``websockets`` ceiling) is another ``Target`` subclass: it starts its own processes on the
same Redis, accepts the same signed webhooks on ``webhook_path`` and names the client dialect
(``bench.dialects``) the watchers speak to it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import LOOPBACK, Child, Cores, Redis, free_port, http_get, spawn, wait_until

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

    @property
    def pid(self) -> int:
        return self.child.pid


class Target:
    """The gateway: ``python -m gateway serve --config <generated> --port <free>``."""

    name = "gateway"
    dialect = "gateway"
    webhook_path = f"/v1/apps/{APP_ID}/webhooks"
    ws_path = f"/v1/apps/{APP_ID}/ws"

    def __init__(self, log_level: str = "warning", max_watch: int = 1000) -> None:
        self.log_level = log_level
        self.max_watch = max_watch

    def config(self, redis: Redis | None) -> str:
        lines = [
            "[presence]",
            "offline_grace_ms = 0",
            f"session_retention_s = {MAX_EVENT_AGE_S}",
            f"max_event_age_s = {MAX_EVENT_AGE_S}",
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

    def start(
        self, workdir: Path, redis: Redis | None, cores: Cores, count: int = 1
    ) -> list[Server]:
        """Start ``count`` server processes (sharing ``redis``) and wait until each is ready."""
        path = workdir / "gateway.toml"
        path.write_text(self.config(redis))
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PRESENCE_CONFIG")}
        servers: list[Server] = []
        try:
            for i in range(count):
                port = free_port()
                argv = [
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
                ]
                name = f"gateway-{'ABCDEFGH'[i]}"
                child = spawn(name, argv, workdir, cores.server, env)
                servers.append(Server(name, port, child))
            for server in servers:
                wait_until(
                    lambda s=server: http_get(s.port, "/readyz")[0] == 200,
                    30,
                    f"{server.name} /readyz",
                    server.child,
                )
        except BaseException:
            for server in servers:
                server.child.stop()
            raise
        return servers


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


TARGETS: dict[str, type[Target]] = {"gateway": Target}
