"""Processes the bench owns: Redis servers, the servers under test, CPU pinning, /proc readings.

Everything listens on 127.0.0.1 on a free port, in a temp dir, and is stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """The bench could not set something up; the message says what."""


def raise_nofile() -> int:
    """Raise this process's open-files soft limit to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def free_low_port() -> int:
    """A free loopback port below 32768 (Redis Cluster wants a port of 55535 or less; this also
    stays out of the ephemeral range the load generator's connections use)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, 32_768)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise BenchError("no free port below 32768")


@dataclass(frozen=True)
class Cores:
    """Which cores run the servers (gateway + Redis) and which the load generator."""

    server: frozenset[int]
    generator: frozenset[int]
    pinned: bool
    nice: int = 0  # the niceness of every process the bench starts (the sender one less)

    @classmethod
    def detect(cls, pin: bool = True, nice: int = 0) -> Cores:
        """Call once per ``python -m bench``: a run pins this process to the generator cores."""
        cores = sorted(os.sched_getaffinity(0))
        if pin and len(cores) >= 2:
            return cls(frozenset(cores[:1]), frozenset(cores[1:]), True, nice)
        return cls(frozenset(cores), frozenset(cores), False, nice)

    def describe(self) -> str:
        if not self.pinned:
            where = f"not pinned (cores {sorted(self.server)} shared)"
        else:
            where = (
                f"servers on core(s) {sorted(self.server)}, generator on {sorted(self.generator)}"
            )
        return where + (f", nice {self.nice}" if self.nice else "")


def pin(pid: int, cores: frozenset[int]) -> None:
    """Pin ``pid`` (0: this process) to ``cores``; a no-op where affinity is not allowed."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, cores)


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, all its threads (0 when it is gone)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


# Kernels built without CONFIG_PROC_CHILDREN (and gVisor) have no task/*/children files.
_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _children(pid: int) -> list[int]:
    """The live children of ``pid``, from ``/proc/<pid>/task/*/children``."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), from /proc."""
    kids: dict[int, list[int]] = {}
    if not _CHILDREN_FILES:  # one pass over every /proc/<pid>/stat for the parent links
        for name in os.listdir("/proc"):
            if name.isdigit():
                fields = _stat_fields(int(name))
                if fields is not None:
                    kids.setdefault(int(fields[1]), []).append(int(name))

    def children(p: int) -> list[int]:
        return _children(p) if _CHILDREN_FILES else kids.get(p, [])

    out: list[int] = []
    todo = list(children(pid))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children(child)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every process below it (``serve --workers N``: the supervisor
    and its workers), all threads; children already reaped count through their parent's
    cutime + cstime, so a worker that exits mid-window keeps its share."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        fields = _stat_fields(p)
        if fields is not None:
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` plus every process below it (``serve --workers N``: the supervisor and
    its workers; pages they share are counted once per process, as RSS does)."""
    return rss_bytes(pid) + sum(rss_bytes(p) for p in descendants(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle, iowait)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / CLK_TCK


class CpuMeter:
    """CPU% of a set of pids between ``start()`` and ``stop()`` (100 = one core).

    ``tree``: each pid counts with every process below it (the servers under test; not the
    generator, whose parent is the bench process that also started the servers).
    """

    def __init__(self, pids: Sequence[int], tree: bool = False) -> None:
        self.pids = list(pids)
        self._read = tree_cpu_seconds if tree else cpu_seconds
        self._t0 = 0.0
        self._c0: list[float] = []
        self.percent: list[float] = [0.0] * len(self.pids)
        self.seconds: list[float] = [0.0] * len(self.pids)  # CPU seconds used, per pid
        self.wall = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = [self._read(p) for p in self.pids]

    def used(self) -> list[float]:
        """CPU seconds each pid used since ``start()`` (the meter goes on)."""
        return [self._read(p) - c0 for p, c0 in zip(self.pids, self._c0, strict=True)]

    def stop(self) -> list[float]:
        self.wall = max(time.monotonic() - self._t0, 1e-9)
        self.seconds = self.used()
        self.percent = [100.0 * s / self.wall for s in self.seconds]
        return self.percent


class RssPeak(threading.Thread):
    """Samples a pid's RSS (``tree``: with its descendants') every ``interval`` seconds and
    keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25, tree: bool = False) -> None:
        super().__init__(daemon=True, name=f"rss-{pid}")
        self.pid = pid
        self.interval = interval
        self._read = tree_rss_bytes if tree else rss_bytes
        self.peak = self._read(pid)
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._read(self.pid))

    def reset(self) -> None:
        self.peak = self._read(self.pid)

    def close(self) -> None:
        self._stop.set()


@dataclass
class Child:
    """A child process the bench started; stopped by its own pid only."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 8.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def spawn(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    cores: frozenset[int] | None,
    env: dict[str, str] | None = None,
    nice: int = 0,
) -> Child:
    """Start ``argv`` with output to ``workdir/name.log``, pinned to ``cores``, at ``nice``
    (through nice(1), so that every thread of the process has it from the start)."""
    log = workdir / f"{name}.log"
    prefix = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*prefix, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
        )
    if cores is not None:
        pin(proc.pid, cores)
    return Child(name, proc, log)


def wait_until(check: object, timeout: float, what: str, child: Child | None = None) -> None:
    """Poll ``check()`` every 20 ms until true; raise BenchError naming ``what`` otherwise."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise BenchError(f"{child.name} exited early:\n{child.tail()}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.02)
    tail = f"\n{child.tail()}" if child is not None else ""
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One RESP command over a fresh socket; the first reply chunk (enough for short replies)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        return s.recv(65536)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A bare HTTP/1.0 GET on loopback: (status, body)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head[9:12]), body


@dataclass
class Redis:
    """Standalone redis-server or a 3-master cluster, persistence off, in ``workdir``."""

    ports: list[int]
    children: list[Child] = field(default_factory=list)
    cluster: bool = False

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.ports[0]}/0"

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    @classmethod
    def start(
        cls, workdir: Path, cores: frozenset[int] | None, masters: int = 0, nice: int = 0
    ) -> Redis:
        """One standalone server (``masters`` 0) or a cluster of ``masters`` nodes."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server not found on PATH (apt-get install redis-server)")
        redis = cls(ports=[], cluster=masters > 0)
        try:
            for i in range(max(masters, 1)):
                port = free_low_port() if masters else free_port()
                node_dir = workdir / f"redis-{i}"
                node_dir.mkdir()
                argv = [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    LOOPBACK,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(node_dir),
                    "--protected-mode",
                    "no",
                    "--maxclients",
                    "10000",
                ]
                if masters:
                    argv += [
                        "--cluster-port",
                        str(free_low_port()),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "5000",
                    ]
                child = spawn(f"redis-{i}", argv, workdir, cores, nice=nice)
                redis.ports.append(port)
                redis.children.append(child)
            for port, child in zip(redis.ports, redis.children, strict=True):
                wait_until(
                    lambda p=port: redis_command(p, "PING").startswith(b"+PONG"),
                    10,
                    f"redis on port {port}",
                    child,
                )
            if masters:
                redis._create_cluster(workdir)
        except BaseException:
            redis.stop()
            raise
        return redis

    def _create_cluster(self, workdir: Path) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise BenchError("redis-cli not found on PATH")
        nodes = [f"{LOOPBACK}:{p}" for p in self.ports]
        done = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=30,
            check=False,
            cwd=workdir,
        )
        if done.returncode != 0:
            raise BenchError(f"redis-cli --cluster create failed: {done.stdout[-500:]!r}")

        def ready() -> bool:
            return all(
                b"cluster_state:ok" in redis_command(p, "CLUSTER", "INFO") for p in self.ports
            )

        wait_until(ready, 20, "cluster_state:ok")

    def stop(self) -> None:
        for child in self.children:
            child.stop()
