"""The offline grace on Redis: the sweep, the grace indexes, and the Cluster slot hints.

Offline grace: apply.lua marks a user whose last device went offline (field ``g`` of its hash)
instead of publishing, and writes its grace index entry in the same atomic step (the index of
the call: one key on standalone, the slot's on Cluster), so no failure can leave a marked user
that no sweep finds. ``sweep`` (every node runs it) takes the due entries and runs apply.lua in
"sweep" mode per user: the hash, not the index, decides, atomically, and the same step removes
the entry (or moves it to the hash's ``g``), so each grace ends with exactly one publish however
many nodes sweep. On Cluster the sweep finds the non-empty slot indexes through the primaries'
hints, written best-effort after the apply, plus a slow pass over every slot's index
(``FULL_PASS_S``): a lost hint delays an offline by at most that, never loses it. Each slot's
index lives on its own primary, so the sweep's work spreads with the users. The single index
of older versions (``<prefix>:grace`` on Cluster) is still drained, for rolling upgrades.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from time import monotonic

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from gateway.backends.base import PresenceSettings
from gateway.backends.redis.calls import Calls, _User, unavailable
from gateway.backends.redis.keys import hint_key, parse_member, slot_index
from gateway.backends.redis.lane import command
from gateway.backends.redis.scripts import GRACE_DONE
from gateway.errors import StoreUnavailable
from gateway.types import clock_ms

log = logging.getLogger(__name__)

SWEEP_BATCH = 500  # grace entries per sweep round trip
FULL_PASS_S = 5.0  # Cluster: every slot's grace index is looked at once in this long


class GraceSweep(Calls):
    """``RedisStore.sweep`` and what it reads: the grace indexes and the primaries' hints."""

    settings: PresenceSettings
    full_pass_s: float
    _pass_slot: int
    _pass_at: float
    _hint_cache: tuple[list[str], dict[str, bytes]] | None

    async def sweep(self, now_ms: int | None = None) -> int:
        """Publish the offlines whose grace ended (see the module doc).

        Standalone: the due entries of the one index. Cluster: those of the old single index
        (rolling upgrades), of the slots the primaries' hints name, and of the slots of this
        call's share of the full pass (with the grace on), whose indexes are hinted again.
        """
        now = clock_ms() if now_ms is None else now_ms
        with unavailable("sweep"):
            if not self._cluster:
                return await self._sweep_indexes(now, [("", self._index)])
            slots = await self._wire.topology()
            assert slots
            published = await self._sweep_indexes(
                now, [(slots[key_slot(self._index)], self._index)], legacy=True
            )
            due = await self._hinted(now)
            if self.settings.offline_grace_ms > 0:  # else no new entries: hints cover the old
                due |= await self._full_pass(slots)
            if not due:
                return published
            indexes = [(slots[slot], slot_index(self.prefix, slot).encode()) for slot in due]
            published += await self._sweep_indexes(now, indexes)
            firsts = await self._run_calls(
                [
                    (node, command(b"ZRANGE", key, b"0", b"0", b"WITHSCORES"))
                    for node, key in indexes
                ]
            )
        ends = {slot: int(float(f[1])) for slot, f in zip(due, firsts, strict=True) if f}
        if ends:
            await self._hint(ends)  # the slots still waiting, for the next sweeps
        return published

    async def _sweep_indexes(
        self, now: int, indexes: Sequence[tuple[str, bytes]], *, legacy: bool = False
    ) -> int:
        """Sweep the due entries of grace ``indexes`` (node, key); return the states published.

        apply.lua removes each entry it sweeps from the user's own index (or moves it to the
        hash's ``g``); entries of the ``legacy`` index, which is nobody's own on Cluster, are
        then dropped if unchanged since read (``grace_done.lua``).
        """
        published = 0
        todo = list(indexes)
        while todo:
            reads = await self._run_calls(
                [
                    (
                        node,
                        command(
                            b"ZRANGEBYSCORE",
                            index,
                            b"-inf",
                            b"%d" % now,
                            b"LIMIT",
                            b"0",
                            b"%d" % SWEEP_BATCH,
                            b"WITHSCORES",
                        ),
                    )
                    for node, index in todo
                ]
            )
            users: list[_User] = []
            cleanup: list[tuple[str, bytes]] = []
            more = []
            for (node, index), flat in zip(todo, reads, strict=True):
                entries = list(zip(flat[::2], flat[1::2], strict=True))
                strays = []
                for tag, _ in entries:
                    parsed = parse_member(tag)
                    if parsed is None:
                        strays.append(tag)  # not a tag this store wrote: sweeps nothing
                    else:
                        users.append((now, tag.decode(), parsed[1], ()))
                if legacy and entries:
                    done = [part for entry in entries for part in entry]
                    cleanup.append((node, GRACE_DONE.call([index], done)))
                elif strays:
                    cleanup.append((node, command(b"ZREM", index, *strays)))
                if len(entries) == SWEEP_BATCH:
                    more.append((node, index))
            if users:
                replies = await self._run_users(b"sweep", users)
                published += sum(state is not None for _, _, state, _ in replies)
                if self.webhooks and self._cluster:
                    await self._hint_webhooks(users, replies)
            if cleanup:
                await self._run_calls(cleanup)
            todo = more
        return published

    async def _hinted(self, now: int) -> set[int]:
        """Cluster: the slots the primaries' hints say are due, their hints taken down.

        A hint is dropped only if unchanged since read (``grace_done.lua``), and before its
        index is read: a grace begun meanwhile is either seen in the index or hinted anew.
        """
        keys = await self._hint_keys()
        reads = await self._run_calls(
            [
                (
                    node,
                    command(
                        b"ZRANGEBYSCORE",
                        key,
                        b"-inf",
                        b"%d" % now,
                        b"LIMIT",
                        b"0",
                        b"%d" % SWEEP_BATCH,
                        b"WITHSCORES",
                    ),
                )
                for node, key in keys.items()
            ]
        )
        due: set[int] = set()
        drops = []
        for (node, key), flat in zip(keys.items(), reads, strict=True):
            if flat:
                drops.append((node, GRACE_DONE.call([key], flat)))
                due.update(int(slot) for slot in flat[::2] if slot.isdigit())
        if drops:
            await self._run_calls(drops)
        return {slot for slot in due if slot < REDIS_CLUSTER_HASH_SLOTS}

    async def _full_pass(self, slots: Sequence[str]) -> set[int]:
        """Cluster: of this call's share of the full pass, the slots whose index has entries.

        The pass goes round every slot once per ``full_pass_s`` whatever the sweep interval:
        each call looks at as many slots as the time since the last call is worth.
        """
        at = monotonic()
        count = min(
            REDIS_CLUSTER_HASH_SLOTS,
            int((at - self._pass_at) / self.full_pass_s * REDIS_CLUSTER_HASH_SLOTS),
        )
        if count <= 0:
            return set()
        self._pass_at = at
        first, self._pass_slot = (
            self._pass_slot,
            (self._pass_slot + count) % REDIS_CLUSTER_HASH_SLOTS,
        )
        share = [(first + i) % REDIS_CLUSTER_HASH_SLOTS for i in range(count)]
        found = await self._run_calls(
            [(slots[s], command(b"EXISTS", slot_index(self.prefix, s).encode())) for s in share]
        )
        return {slot for slot, exists in zip(share, found, strict=True) if exists}

    async def _hint(self, ends: dict[int, int]) -> None:
        """Cluster, best-effort: hint slot -> earliest grace end to the slot's primary.

        A hint only speeds the sweep up; one lost (this write failing, the process dying
        first) is found by the full pass. So a failure here is logged, never raised.
        """
        try:
            with unavailable("grace hint"):
                slots = await self._wire.topology()
                assert slots
                keys = await self._hint_keys()
                by_node: dict[str, list[bytes]] = {}
                for slot, end in ends.items():
                    by_node.setdefault(slots[slot], []).extend((b"%d" % end, b"%d" % slot))
                await self._run_calls(
                    [
                        (node, command(b"ZADD", keys[node], b"LT", *args))
                        for node, args in by_node.items()
                        if node in keys
                    ]
                )
        except StoreUnavailable as exc:
            log.warning("grace hint not written; the full pass will find it: %s", exc)

    async def _hint_keys(self) -> dict[str, bytes]:
        """Cluster: each primary's hint key, in the lowest slot it serves."""
        slots = await self._wire.topology()
        assert slots
        cached = self._hint_cache
        if cached is None or cached[0] is not slots:
            lowest: dict[str, int] = {}
            for slot, node in enumerate(slots):
                lowest.setdefault(node, slot)
            keys = {node: hint_key(self.prefix, slot).encode() for node, slot in lowest.items()}
            cached = self._hint_cache = (slots, keys)
        return cached[1]
