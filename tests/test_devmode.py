"""Dev mode fails closed (SPEC section 2), checked on real ``python -m gateway serve`` runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
START_S = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the gateway's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_CONFIG", "REDIS_URL", "PORT")}
    env.update(extra)
    return env


def run_serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m gateway serve ARGS`` to its end (a refusal must end it at once)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_S,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_no_config_refuses_public_bind(host: str) -> None:
    """The Procfile's --host 0.0.0.0 with no config exits 2 naming PRESENCE_CONFIG."""
    port = free_port()
    done = run_serve("--host", host, "--port", str(port), env=clean_env(PORT=str(port)))
    assert done.returncode == 2, done.stderr
    assert "PRESENCE_CONFIG" in done.stderr and "loopback" in done.stderr
    assert "DEV MODE" not in done.stderr and "Uvicorn running" not in done.stderr


@pytest.mark.parametrize("value", ["", "/nonexistent/presence.toml"])
def test_bad_presence_config_is_a_startup_error(value: str) -> None:
    """PRESENCE_CONFIG empty or naming a missing file exits 2 instead of starting dev mode."""
    done = run_serve(
        "--host", "0.0.0.0", "--port", str(free_port()), env=clean_env(PRESENCE_CONFIG=value)
    )
    assert done.returncode == 2, done.stderr
    assert (value or "PRESENCE_CONFIG") in done.stderr
    assert "DEV MODE" not in done.stderr
    done = run_serve("--port", str(free_port()), env=clean_env(PRESENCE_CONFIG=value))
    assert done.returncode == 2, done.stderr  # on loopback too: a typo is never dev mode


@contextmanager
def gateway_process(port: int) -> Iterator[subprocess.Popen[str]]:
    """A dev-mode gateway process on loopback; stopped with SIGINT on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--log-level", "debug"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=START_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_dev_mode_on_loopback_serves_and_logs_nothing_private() -> None:
    """On loopback dev mode starts with its warning; its log has no token, query or port."""
    port = free_port()
    with gateway_process(port) as proc:
        deadline = time.monotonic() + START_S
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while True:
                assert proc.poll() is None, "the gateway exited"
                try:
                    if (await client.get("/healthz?probe=q-s3cret")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the gateway never answered"
                await asyncio.sleep(0.05)
            url = f"ws://127.0.0.1:{port}/v1/apps/demo/ws?token=q-s3cret"
            async with connect(url) as ws:
                ws_port = ws.local_address[1]
                await ws.send('{"type":"ping","id":1}')  # before hello: the session closes
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=START_S)
    assert "DEV MODE" in stderr
    assert "WebSocket /v1/apps/demo/ws" in stderr  # the gateway's own access line
    for private in ("q-s3cret", f":{ws_port}", "?probe", "?token"):
        assert private not in stderr, private
