"""Real gateway processes (``python -m gateway serve``) sharing one Redis, for multi-node tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from gateway.providers.tencent import TencentConfig

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SECRET = "node-test-client-secret-0123456789abcdef"
API_KEY = "node-test-api-key"
TENCENT_TOKEN = "node-test-tencent-token"
TENCENT = TencentConfig(sdkappid=1400000000, callback_token=TENCENT_TOKEN)  # config_text's


def config_text(
    redis_url: str, *, cluster: bool = False, grace_ms: int = 0, app: str = "nodes"
) -> str:
    return f"""
[redis]
url = "{redis_url}"
cluster = {"true" if cluster else "false"}

[presence]
offline_grace_ms = {grace_ms}

[[apps]]
id = "{app}"
client_secret = "{CLIENT_SECRET}"
api_key = "{API_KEY}"

[apps.tencent]
sdkappid = {TENCENT.sdkappid}
callback_token = "{TENCENT.callback_token}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One gateway process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start the process and wait until it answers /readyz."""
        self.spawn()
        await self.ready()

    def spawn(self) -> None:
        """Start the process."""
        env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_CONFIG", "REDIS_URL")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(self.config),
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def ready(self) -> None:
        """Wait until the process answers /readyz."""
        assert self.proc is not None
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.log.read_text()[-2000:]}")
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway not ready: {self.log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@asynccontextmanager
async def nodes(tmp: Path, count: int, text: str) -> AsyncIterator[list[Node]]:
    """``count`` gateway processes with the config ``text``; stopped on exit."""
    config = tmp / "gateway.toml"
    config.write_text(text)
    started = [Node(config, tmp / f"node{i}.log") for i in range(count)]
    try:
        await asyncio.gather(*(n.start() for n in started))
        yield started
    finally:
        for n in started:
            n.stop()
