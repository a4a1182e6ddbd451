"""``serve --workers N`` (SPEC 2): N real gateway processes on one port over one real Redis,
``/metrics`` summed over them, memory refused, SIGTERM draining every worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics_merge, workers
from gateway.metrics import Metrics
from tests.nodes import CLIENT_SECRET, TENCENT, config_text, free_port
from tests.sendhook import post, tencent_call
from tests.wsclient import Client

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 20.0


def sample(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in a Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


class Supervised:
    """``python -m gateway serve --workers N`` on a free port; its workers' sockets in ``wd``."""

    def __init__(self, tmp: Path, redis_url: str, count: int) -> None:
        self.app = f"w{uuid.uuid4().hex[:10]}"
        self.config = tmp / "gateway.toml"
        self.config.write_text(config_text(redis_url, app=self.app))
        self.wd = tmp / "workers"
        self.count = count
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log = tmp / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_CONFIG", "REDIS_URL")}
        env[workers.WORKERS_DIR_ENV] = str(self.wd)
        argv = ["serve", "--config", str(self.config), "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *argv, "--workers", str(self.count)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def texts(self) -> dict[int, str]:
        """Each live worker's own exposition, by pid, read from its private socket."""
        found: dict[int, str] = {}
        for path in self.wd.glob("*.sock"):
            data = b""
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(str(path))
                    while chunk := s.recv(65536):
                        data += chunk
            except OSError:
                continue
            if data.endswith(workers.END):
                found[int(path.stem)] = data[: -len(workers.END)].decode()
        return found

    async def ready(self) -> None:
        """Wait until every worker serves and ``/metrics`` sums them all."""
        assert self.proc is not None
        deadline = time.monotonic() + DEADLINE_S
        async with httpx.AsyncClient(base_url=self.url) as client:
            while True:
                assert self.proc.poll() is None, f"exited: {self.output()[-3000:]}"
                try:
                    r = await client.get("/metrics")
                    summed = r.status_code == 200 and sample(r.text, "presence_workers")
                    if summed == self.count and len(await asyncio.to_thread(self.texts)) == summed:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"not ready: {self.output()[-3000:]}"
                await asyncio.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        rc = self.proc.wait()
        for path in self.wd.glob("*.sock"):  # a worker left behind by a failed test
            with contextlib.suppress(ValueError, OSError):
                if b"multiprocessing.spawn" in Path(f"/proc/{path.stem}/cmdline").read_bytes():
                    os.kill(int(path.stem), signal.SIGKILL)
        return rc


@pytest.fixture
async def two(tmp_path: Path, redis_url: str) -> AsyncIterator[Supervised]:
    """Two workers of a fresh app on the session's redis-server."""
    gw = Supervised(tmp_path, redis_url, 2)
    gw.spawn()
    try:
        await gw.ready()
        yield gw
    finally:
        gw.stop()


async def tencent(gw: Supervised, user: str, action: str, event_ms: int) -> None:
    """POST a signed Tencent State.StateChange on a fresh connection (so any worker may get
    it) and check it was acked OK."""
    req = tencent_call(TENCENT, user, action, event_ms=event_ms)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await post(client, gw.app, "tencent", req)
    assert r.status_code == 200 and r.json()["ActionStatus"] == "OK", r.text


def per_worker(gw: Supervised, name: str, **labels: str) -> list[float]:
    return [sample(t, name, **labels) for t in gw.texts().values()]


async def spread_watchers(gw: Supervised, user: str) -> list[Client]:
    """Watchers of ``user``, opened one by one until every worker holds at least one."""
    clients: list[Client] = []
    for _ in range(60):
        client = await Client.login(gw.ws_url, gw.app, CLIENT_SECRET, f"w{len(clients)}")
        clients.append(client)
        await client.watch(user)
        counts = await asyncio.to_thread(per_worker, gw, "presence_connections")
        if len(counts) == gw.count and min(counts) >= 1:
            return clients
    raise AssertionError(f"60 connections never reached every worker: {counts}")


async def test_two_workers_answer_on_one_port_and_metrics_sum(two: Supervised) -> None:
    """Webhooks on fresh connections land on both workers (two pids, each counting part of
    them), and /metrics on any worker shows the total."""
    sent = 0
    ok = {"provider": "tencent", "outcome": "ok"}
    base = time.time_ns() // 1_000_000
    for _ in range(200):
        await tencent(two, f"u{sent}", "Login", base + sent)
        sent += 1
        counts = await asyncio.to_thread(per_worker, two, "presence_webhooks_total", **ok)
        if sent >= 10 and len(counts) == 2 and min(counts) >= 1:
            break
    assert len(counts) == 2 and min(counts) >= 1, f"one worker took every webhook: {counts}"
    assert sum(counts) == sent
    assert len(set(two.texts())) == 2  # two distinct worker pids
    for _ in range(6):  # fresh connections: whichever worker answers, the sum is the same
        async with httpx.AsyncClient(base_url=two.url) as client:
            text = (await client.get("/metrics")).text
        assert sample(text, "presence_webhooks_total", **ok) == sent
        assert sample(text, "presence_workers") == 2
        assert sample(text, "presence_webhook_seconds_count", provider="tencent") == sent
    async with httpx.AsyncClient(base_url=two.url) as client:
        head = await client.head("/metrics")
    assert head.status_code == 200 and head.content == b""


async def test_webhook_to_one_worker_reaches_watchers_on_the_other(two: Supervised) -> None:
    """With watchers on both workers and webhooks counted by both, every watcher receives
    every change: some crossed from one worker to the other through Redis."""
    user = f"bob-{uuid.uuid4().hex[:8]}"
    clients = await spread_watchers(two, user)
    try:
        base = time.time_ns() // 1_000_000
        ok = {"provider": "tencent", "outcome": "ok"}
        for i in range(60):
            action = "Login" if i % 2 == 0 else "Disconnect"
            await tencent(two, user, action, base + i)
            status = "online" if action == "Login" else "offline"
            for client in clients:
                assert (await client.next_presence(user))["status"] == status
            counts = await asyncio.to_thread(per_worker, two, "presence_webhooks_total", **ok)
            if min(counts) >= 1:
                break
        assert len(counts) == 2 and min(counts) >= 1, f"one worker took every webhook: {counts}"
        conns = await asyncio.to_thread(per_worker, two, "presence_connections")
        assert min(conns) >= 1 and sum(conns) == len(clients)
    finally:
        for client in clients:
            await client.close()


async def test_sigterm_drains_every_worker_and_the_parent_exits_0(
    tmp_path: Path, redis_url: str
) -> None:
    """SIGTERM to the parent: clients on every worker are closed with 1012, each worker shuts
    its app down, and the parent exits 0."""
    gw = Supervised(tmp_path, redis_url, 2)
    gw.spawn()
    try:
        await gw.ready()
        clients = await spread_watchers(gw, "bob")
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(c.closed_with(wait=15) for c in clients))
        assert {code for code, _ in codes} == {1012}, codes
        rc = await asyncio.to_thread(gw.proc.wait, 20)
    finally:
        gw.stop()
    output = gw.output()
    assert rc == 0, output[-3000:]
    assert output.count("Application shutdown complete") == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert list(gw.wd.glob("*.sock")) == []


async def test_a_killed_worker_is_replaced(two: Supervised) -> None:
    """A worker killed with SIGKILL is restarted by the parent: a new pid serves, /metrics
    sums two workers again, and the dead one's socket is gone."""
    before = set(two.texts())
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        now = set(await asyncio.to_thread(two.texts))
        files = {int(p.stem) for p in two.wd.glob("*.sock")}
        if len(now) == 2 and victim not in now and victim not in files:
            break
        assert time.monotonic() < deadline, f"not replaced: {now} {files}"
        await asyncio.sleep(0.05)
    await two.ready()


async def test_workers_drain_when_the_parent_is_killed(two: Supervised) -> None:
    """SIGKILL to the parent: the orphaned workers notice, close their clients with 1012 and
    exit, so the port is free for the next supervisor."""
    clients = await spread_watchers(two, "bob")
    assert two.proc is not None
    two.proc.kill()
    codes = await asyncio.gather(*(c.closed_with(wait=15) for c in clients))
    assert {code for code, _ in codes} == {1012}, codes
    deadline = time.monotonic() + DEADLINE_S
    while list(two.wd.glob("*.sock")) or accepts(two.port):
        assert time.monotonic() < deadline, "orphan workers kept running"
        await asyncio.sleep(0.05)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("config", ["file", "dev"])
def test_more_than_one_worker_on_memory_is_refused(tmp_path: Path, config: str) -> None:
    """--workers 2 on the in-memory backend (a config without [redis], or dev mode) exits 2
    saying why, and never listens."""
    port = free_port()
    argv = ["serve", "--port", str(port), "--workers", "2"]
    if config == "file":
        path = tmp_path / "gateway.toml"
        path.write_text("[[apps]]" + config_text("redis://unused").split("[[apps]]", 1)[1])
        argv += ["--config", str(path)]
    env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_CONFIG", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=30,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "needs Redis" in err and "in-memory presence store is per process" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("count", [0, -1, workers.MAX_WORKERS + 1])
def test_worker_count_out_of_range_is_refused(count: int, redis_url: str) -> None:
    """--workers below 1 or above the cap: a clear refusal (the CLI exits 2 with it)."""
    from gateway.config import dev_settings

    reason = workers.refusal(dev_settings(redis_url), count)
    assert reason is not None and "--workers must be from 1" in reason


# -- the sum, without processes ---------------------------------------------------------


def test_merge_sums_counters_histograms_and_gauges() -> None:
    """Counters, histogram buckets/sums/counts and per-worker gauges add up per labels; a
    series present in one worker only is kept; presence_workers counts the texts."""
    a, b = Metrics(), Metrics()
    a.webhooks.labels("tencent", "ok").inc(3)
    b.webhooks.labels("tencent", "ok").inc(2)
    b.webhooks.labels("rongcloud", "bad_signature").inc()
    a.webhook_seconds.labels("tencent").observe(0.003)
    b.webhook_seconds.labels("tencent").observe(0.3)
    text = metrics_merge.merge([a.render().decode(), b.render().decode()]).decode()
    assert sample(text, "presence_webhooks_total", provider="tencent", outcome="ok") == 5
    assert (
        sample(text, "presence_webhooks_total", provider="rongcloud", outcome="bad_signature") == 1
    )
    hist = "presence_webhook_seconds"
    assert sample(text, f"{hist}_count", provider="tencent") == 2
    assert sample(text, f"{hist}_bucket", provider="tencent", le="0.005") == 1
    assert sample(text, f"{hist}_bucket", provider="tencent", le="+Inf") == 2
    assert abs(sample(text, f"{hist}_sum", provider="tencent") - 0.303) < 1e-9
    rss = sample(a.render().decode(), "process_resident_memory_bytes")
    assert sample(text, "process_resident_memory_bytes") > rss  # two processes' memory
    assert sample(text, "presence_workers") == 2


def test_merge_does_not_sum_what_is_not_a_share() -> None:
    """Creation times take the earliest, the longest GC pause and a Redis-read queue depth
    the largest, instead of a meaningless sum."""
    a, b = Metrics(), Metrics()
    a.gc_pause_max.set(0.5)
    b.gc_pause_max.set(0.2)
    a.webhooks_out_depth.labels("app", "e1").set(7)
    b.webhooks_out_depth.labels("app", "e1").set(7)
    a.states_published.inc()
    texts = [a.render().decode(), b.render().decode()]
    text = metrics_merge.merge(texts).decode()
    assert sample(text, "presence_gc_pause_max_seconds") == 0.5
    assert sample(text, "presence_webhooks_out_queue", app="app", endpoint="e1") == 7
    created = [sample(t, "presence_states_published_created") for t in texts]
    assert sample(text, "presence_states_published_created") == min(created)


def test_merge_leaves_out_a_text_that_does_not_parse() -> None:
    """An unparsable worker text is left out of the sum (and of presence_workers), never a
    500 for the scrape."""
    a = Metrics()
    a.states_published.inc(4)
    text = metrics_merge.merge([a.render().decode(), 'x{a="1" 2\n']).decode()
    assert sample(text, "presence_states_published_total") == 4
    assert sample(text, "presence_workers") == 1
