"""The run: temp dir, Redis, servers under test, worker pools, CPU/RSS windows, cleanup."""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hist import Histogram
from bench.procs import (
    BenchError,
    Cores,
    CpuMeter,
    Redis,
    RssPeak,
    machine_busy_seconds,
    pin,
    raise_nofile,
    tree_rss_bytes,
)
from bench.target import Server, Target
from bench.workers import Pool

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored
BOTTLENECK_PCT = 90.0  # a generator process (or all of them) above this share of its cores
FOREIGN_PCT = 15.0  # CPU used by processes outside the bench above this: a disturbed run


@dataclass
class Bench:
    """Everything one scenario started; ``close()`` stops it all (by pid) and removes the dir."""

    cores: Cores
    keep: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    redis: Redis | None = None
    servers: list[Server] = field(default_factory=list)
    pools: list[Pool] = field(default_factory=list)
    rss: dict[int, RssPeak] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    nofile: int = 0
    foreign_max: float = 0.0  # the most CPU% other processes used in any measured window

    def __post_init__(self) -> None:
        self.nofile = raise_nofile()  # inherited by the servers and workers we start
        pin(0, self.cores.generator)

    def start_redis(self, masters: int = 0) -> Redis:
        self.redis = Redis.start(self.workdir, self.cores.server, masters, self.cores.nice)
        return self.redis

    def start_servers(self, target: Target, count: int = 1) -> list[Server]:
        self.servers = target.start(self.workdir, self.redis, self.cores, count)
        for server in self.servers:
            peak = RssPeak(server.pid, tree=True)
            peak.start()
            self.rss[server.pid] = peak
        return self.servers

    def pool(self, kind: str, inits: list[dict[str, Any]]) -> Pool:
        pool = Pool(kind, self.cores.generator, inits, self.cores.nice)
        self.pools.append(pool)
        return pool

    @property
    def generator_pids(self) -> list[int]:
        return [os.getpid()] + [pid for pool in self.pools for pid in pool.pids]

    def check_alive(self) -> None:
        for server in self.servers:
            if not server.child.alive():
                raise RuntimeError(f"{server.name} exited:\n{server.child.tail()}")

    def all_warnings(self) -> list[str]:
        out = list(dict.fromkeys(self.warnings))
        if self.foreign_max > FOREIGN_PCT:
            out.append(
                f"other load on the machine: up to {self.foreign_max:.0f}% of a core was used "
                "by processes outside the bench while measuring; figures are disturbed"
            )
        return out

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
        for peak in self.rss.values():
            peak.close()
        for server in self.servers:
            server.child.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.keep:
            print(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Window:
    """CPU% of servers, Redis and the generator over one measured interval.

    A server counts with its whole process tree (``--workers N``: the supervisor and its
    workers), all threads. ``stop()`` also gives the CPU seconds, the base of the µs per
    delivery / webhook / event figures (``cpu_us``).
    """

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.servers = CpuMeter([s.pid for s in bench.servers], tree=True)
        self.redis = CpuMeter(bench.redis.pids if bench.redis else [])
        self.gen = CpuMeter(bench.generator_pids)
        self._busy0 = 0.0

    def start(self) -> Window:
        for peak in self.bench.rss.values():
            peak.reset()
        for meter in (self.servers, self.redis, self.gen):
            meter.start()
        self._busy0 = machine_busy_seconds()
        return self

    def used(self) -> dict[str, float]:
        """CPU seconds the servers (summed) and Redis used since ``start()``, the window going
        on: read after a drain, so that deliveries sent after the last request count too."""
        return {
            "server_cpu_s": round(sum(self.servers.used()), 4),
            "redis_cpu_s": round(sum(self.redis.used()), 4),
        }

    def stop(self) -> dict[str, Any]:
        """Stop and return CPU/RSS figures; warn when the generator was the bottleneck."""
        busy = 100 * (machine_busy_seconds() - self._busy0)
        servers = self.servers.stop()
        redis = self.redis.stop()
        gen = self.gen.stop()
        # Whatever else ran on the machine meanwhile (other processes, interrupts).
        foreign = max(0.0, busy / self.gen.wall - sum(servers) - sum(redis) - sum(gen))
        self.bench.foreign_max = max(self.bench.foreign_max, foreign)
        cores = self.bench.cores
        capacity = 100.0 * len(cores.generator)
        total = sum(gen)
        busiest = max(gen, default=0.0)
        bottleneck = total >= BOTTLENECK_PCT / 100 * capacity or busiest >= BOTTLENECK_PCT
        if bottleneck:
            self.bench.warnings.append(
                "LOAD GENERATOR WAS THE BOTTLENECK in a window marked << BOTTLENECK: its "
                "processes used (nearly) all of their cores, so the server figures there are "
                "lower bounds"
            )
        if not cores.pinned:
            self.bench.warnings.append(
                "not pinned (fewer than 2 cores): server and generator share the CPU"
            )
        return {
            "wall_s": round(self.gen.wall, 3),
            "server_cpu_s": round(sum(self.servers.seconds), 4),
            "redis_cpu_s": round(sum(self.redis.seconds), 4),
            "server_cpu_pct": [round(p, 1) for p in servers],
            "redis_cpu_pct": round(sum(redis), 1),
            "generator_cpu_pct": round(total, 1),
            "generator_busiest_pct": round(busiest, 1),
            "generator_capacity_pct": capacity,
            "generator_bottleneck": bottleneck,
            "foreign_cpu_pct": round(foreign, 1),
            "server_rss_mb": [round(tree_rss_bytes(s.pid) / 2**20, 1) for s in self.bench.servers],
            "server_rss_peak_mb": [
                round(self.bench.rss[s.pid].peak / 2**20, 1) for s in self.bench.servers
            ],
        }


def watch_specs(
    conns: int, watch: int, users: int, seed: int, first: int = 0
) -> list[tuple[int, list[int]]]:
    """``conns`` connections, each watching ``watch`` distinct users drawn at random."""
    rng = random.Random(seed)
    population = range(users)
    return [(first + i, rng.sample(population, watch)) for i in range(conns)]


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def merge_hists(hists: list[Histogram]) -> Histogram:
    out = Histogram()
    for h in hists:
        out.merge(h)
    return out


def sleep_until_ns(t_ns: int) -> None:
    delay = t_ns - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


class Profile:
    """py-spy sampling one server process for a while (``--profile``); summarized as text.

    Samples are collected without ``--idle``, so their count over ``rate * seconds`` is the
    share of time the process was on CPU. Raw (collapsed) stacks are kept in bench/results/.
    """

    RATE = 250

    def __init__(self, pid: int, seconds: float, out: Path) -> None:
        import subprocess

        self.out = out
        self.seconds = seconds
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy (pip install py-spy into the venv)")
        out.parent.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                str(self.RATE),
                "--format",
                "raw",
                "--nolineno",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def summary(self, top: int = 12) -> dict[str, Any]:
        """Where the sampled time went: the busiest functions (self and inclusive)."""
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 30)
        except Exception:
            self.proc.kill()
            raise
        if self.proc.returncode != 0 or not self.out.exists():
            return {"error": err.decode(errors="replace")[-300:]}
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_short(f) for f in stack.split(";")]
            own[frames[-1]] += n
            for f in set(frames):
                inclusive[f] += n
        expected = self.RATE * max(1, int(self.seconds))

        def pct(n: int) -> float:
            return round(100 * n / max(total, 1), 1)

        return {
            "file": str(self.out),
            "on_cpu_pct": round(100 * total / expected, 1),
            "self": [(f, pct(n)) for f, n in own.most_common(top)],
            "inclusive": [(f, pct(n)) for f, n in inclusive.most_common(top * 3)],
        }


_ROOT = str(Path(__file__).resolve().parents[1]) + "/"
_STDLIB = re.compile(r"^.*/python3\.\d+/")


def _short(frame: str) -> str:
    """``handle (gateway/webhooks.py)`` from py-spy's ``handle (/abs/.../gateway/webhooks.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    elif where.startswith(_ROOT):
        where = where[len(_ROOT) :]
    else:
        where = _STDLIB.sub("", where)
    return f"{name} ({where})" if where else name
