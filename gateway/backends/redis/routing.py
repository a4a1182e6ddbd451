"""Where a channel lives, for ``RedisBroker``: the node of each hash slot, as last read.

Standalone: the one server. Cluster: the slot map, re-read from the topology when channels
have to go elsewhere (a MOVED reply updates one slot; see ``feeds``).
"""

from __future__ import annotations

from redis.asyncio import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


class SlotRouting:
    """``RedisBroker``'s routing: the hash slot and the node of a channel."""

    url: str
    cluster: bool
    connect_timeout: float
    _slots: list[str]  # Cluster: the node of each hash slot, as last read
    _topology: RedisCluster | None
    _standalone: str  # standalone: the server's address, its feed's name

    def _slot_of(self, channel: bytes) -> int:
        return key_slot(channel) if self.cluster else 0

    def _route(self, channel: bytes) -> str:
        """The node ``channel`` lives on, as last read (standalone: the one server)."""
        return self._slots[key_slot(channel)] if self.cluster else self._standalone

    async def _read_topology(self) -> None:
        """Cluster: re-read which node serves each slot."""
        if not self.cluster:
            return
        if self._topology is None:
            self._topology = RedisCluster.from_url(
                self.url, socket_connect_timeout=self.connect_timeout, socket_timeout=2.0
            )
            await self._topology.initialize()
        else:
            await self._topology.nodes_manager.initialize()
        manager = self._topology.nodes_manager
        self._slots = [
            manager.get_node_from_slot(slot).name for slot in range(REDIS_CLUSTER_HASH_SLOTS)
        ]
