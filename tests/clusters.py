"""Redis Clusters that change under a test: nodes added, slots migrated, failovers, kills.

Each cluster belongs to one test: its own loopback ports and temp dir (``tests/servers.py``
starts the processes). Every change returns once the cluster says it is done, found by polling
against a deadline. The admin calls block: async tests run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from tests.servers import RedisServer, free_cluster_port, require_binary, wait_until

CHANGE_TIMEOUT_S = 20.0
NODE_TIMEOUT_MS = 1500  # how long a silent master takes to be failed over (plus the election)


class Node(RedisServer):
    """A cluster-enabled redis-server with a short node timeout and an admin client."""

    def __init__(self, directory: Path) -> None:
        port, bus = free_cluster_port()
        super().__init__(directory, port, cluster_bus_port=bus)
        self._admin: redis.Redis | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        argv = super()._argv()
        argv[argv.index("--cluster-node-timeout") + 1] = str(NODE_TIMEOUT_MS)
        return argv

    def admin(self) -> redis.Redis:
        """A blocking client of this node alone (replies decoded)."""
        if self._admin is None:
            self._admin = redis.Redis(
                host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5
            )
        return self._admin

    def run(self, *args: str | int) -> Any:
        """One command's reply."""
        return self.admin().execute_command(*args)  # type: ignore[no-untyped-call]

    def node_id(self) -> str:
        return str(self.run("CLUSTER", "MYID"))

    def info(self, section: str) -> dict[str, str]:
        text = str(self.run("CLUSTER", "INFO")) if section == "cluster" else ""
        if section != "cluster":
            raw = self.admin().info(section)
            return {k: str(v) for k, v in raw.items()}
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def role(self) -> str:
        try:
            return str(self.info("replication").get("role"))
        except (redis.RedisError, OSError):
            return "down"

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        super().stop()


class Cluster:
    """``masters`` masters with ``replicas`` replicas each, that nodes can join later."""

    def __init__(self, directory: Path, *, masters: int = 3, replicas: int = 0) -> None:
        self.cli = require_binary("redis-cli")
        self.directory = directory
        self.replicas = replicas
        self.nodes = [Node(directory / f"node{i}") for i in range(masters * (1 + replicas))]
        self.dead: list[Node] = []

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n not in self.dead]

    def start(self) -> None:
        """Start every node, create the cluster; return once it is ok with replicas in sync."""
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            wait_until(node._ready, f"cluster node on port {node.port}")
        self._cli(
            "--cluster",
            "create",
            *[n.address for n in self.nodes],
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        )
        self.wait_settled()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [self.cli, *args],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CHANGE_TIMEOUT_S,
        )
        return done.stdout

    # what the cluster looks like

    def settled(self) -> bool:
        """Every live node: state ok, knows every node, agrees on the masters; replicas synced."""
        try:
            for node in self.live:
                info = node.info("cluster")
                if info.get("cluster_state") != "ok":
                    return False
                if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                    return False
            views = {frozenset(self.masters_seen_by(node)) for node in self.live}
            if len(views) != 1:
                return False
            for node in self.live:
                repl = node.info("replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
        except (redis.RedisError, OSError):
            return False
        return True

    def wait_settled(self) -> None:
        wait_until(self.settled, "the cluster to settle", timeout=CHANGE_TIMEOUT_S)

    def masters_seen_by(self, node: Node) -> set[str]:
        """The addresses of the masters serving slots, as ``node`` sees them."""
        seen = set()
        for line in str(node.run("CLUSTER", "NODES")).splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                seen.add(fields[1].split("@")[0])
        return seen

    def by_address(self, address: str) -> Node:
        return next(n for n in self.nodes if n.address == address)

    def owner(self, slot: int) -> Node:
        """The master serving ``slot`` (as the first live node sees it)."""
        for start, end, master, *_ in self.live[0].run("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return self.by_address(f"{master[0]}:{master[1]}")
        raise LookupError(f"slot {slot} is not served")

    def replica_of(self, master: Node) -> Node:
        master_id = master.node_id()
        for node in self.live:
            repl = node.info("replication")
            if repl.get("role") == "slave" and int(repl.get("master_port", 0)) == master.port:
                return node
        raise LookupError(f"{master.address} ({master_id}) has no replica")

    def wait_replica_synced(self, master: Node) -> None:
        """Until the replica of ``master`` has every write the master took."""
        replica = self.replica_of(master)

        def synced() -> bool:
            offset = int(master.info("replication")["master_repl_offset"])
            return int(replica.info("replication").get("slave_repl_offset", -1)) >= offset

        wait_until(synced, f"{replica.address} to catch up", timeout=CHANGE_TIMEOUT_S)

    # changes

    def add_master(self) -> Node:
        """Start a node and join it as a master serving no slots yet."""
        node = Node(self.directory / f"node{len(self.nodes)}")
        node.start()
        self.nodes.append(node)
        self._cli("--cluster", "add-node", node.address, self.live[0].address)
        self.wait_settled()
        return node

    def migrate(self, slots: Iterable[int], target: Node) -> None:
        """Move ``slots`` with their keys to ``target``, the way ``--cluster reshard`` does."""
        target_id = target.node_id()
        for slot in sorted(set(slots)):
            source = self.owner(slot)
            if source is target:
                continue
            target.run("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id())
            source.run("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while True:
                keys = source.run("CLUSTER", "GETKEYSINSLOT", slot, 10)
                if not keys:
                    break
                source.run("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            target.run("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            source.run("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            for node in self.live:
                if node not in (source, target) and node.role() == "master":
                    node.run("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_settled()

    def failover(self, master: Node) -> Node:
        """A graceful ``CLUSTER FAILOVER`` on the replica of ``master``: the promoted node."""
        replica = self.replica_of(master)
        replica.run("CLUSTER", "FAILOVER")
        wait_until(
            lambda: replica.role() == "master" and master.role() == "slave",
            f"{replica.address} to take over",
            timeout=CHANGE_TIMEOUT_S,
        )
        self.wait_settled()
        return replica

    def kill(self, master: Node) -> None:
        """``kill -9`` of ``master``; return once the process is gone."""
        proc = master.kill(signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=CHANGE_TIMEOUT_S)
        self.dead.append(master)

    def wait_promoted(self, replica: Node) -> None:
        """Until ``replica`` took over its dead master and every live node is ok."""
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        wait_until(lambda: replica.role() == "master", f"{replica.address} to be promoted")
        wait_until(
            self._ok_without_dead, "the cluster to be ok", max(deadline - time.monotonic(), 1)
        )

    def readdress(self, node: Node) -> Node:
        """``node`` killed and back at a new port with its identity (a pod with a new IP).

        Without persistence its keys are gone; its slots stay its own.
        """
        node.stop()
        again = Node(node.directory)  # the same nodes.conf: the same node id and slots
        self.nodes[self.nodes.index(node)] = again
        again.start()
        self.wait_settled()
        return again

    def _ok_without_dead(self) -> bool:
        try:
            return all(n.info("cluster").get("cluster_state") == "ok" for n in self.live)
        except (redis.RedisError, OSError):
            return False
