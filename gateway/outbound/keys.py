"""Redis keys of webhooks out (the rest of the layout: ``gateway/backends/redis/keys.py``).

    <prefix>:wh:<app>:{<s>}            stream  one entry per queued change: t (type), s (the
                                               state JSON as published), at (ms); one consumer
                                               group per endpoint (``WebhookEndpoint.group``)
    <prefix>:wg:<app>:{<s>}            set     the groups apply.lua made on that stream
    <prefix>:wl:<app>:<group>:<b>      string  the lease: the node that delivers bucket ``b``'s
                                               streams to that endpoint, so a user's messages
                                               stay in order
    <prefix>:wn:<app>:<group>          zset    the nodes delivering to that endpoint, by when
                                               their registration runs out (the fair share)
    <prefix>:wsh:<app>:<b>             set     Cluster: slots of bucket ``b`` whose streams got
                                               entries (hints, written after the apply)

A user's stream is that of its hash slot on Cluster (``<s>`` the slot's tag, ``slot_tag``), so
apply.lua's XADD is in the same atomic step as the publish; on standalone Redis, that of its
slot's bucket (``<s>`` = ``b<bucket>``). Slots are grouped in ``BUCKETS`` contiguous buckets,
the unit of a lease: the most nodes that share one endpoint's work.
"""

from __future__ import annotations

SLOTS = 16384
BUCKETS = 16  # Cluster: leases per endpoint; the most nodes that share one endpoint's work


def stream_bound(max_queue: int, cluster: bool) -> int:
    """MAXLEN of one stream: an endpoint's ``max_queue`` over the streams it spreads on
    (users spread evenly over slots; ``MAXLEN ~`` trims whole nodes of ~100 entries, so a
    stream keeps a little more than this)."""
    return max(1, -(-max_queue // (SLOTS if cluster else BUCKETS)))


def bucket_of(slot: int) -> int:
    return slot * BUCKETS // SLOTS


def slots_of(bucket: int) -> range:
    return range(bucket * SLOTS // BUCKETS, (bucket + 1) * SLOTS // BUCKETS)


def standalone_tag(bucket: int) -> str:
    """Standalone Redis: the tag of bucket ``bucket``'s one stream (any key is reachable)."""
    return f"b{bucket}"


def stream_key(prefix: str, app: str, tag: str | None) -> bytes:
    """The app's stream ``tag``: the slot's tag on Cluster, ``standalone_tag`` else."""
    return f"{prefix}:wh:{app}{_slot(tag)}".encode()


def groups_key(prefix: str, app: str, tag: str | None) -> bytes:
    return f"{prefix}:wg:{app}{_slot(tag)}".encode()


def lease_key(prefix: str, app: str, group: str, bucket: int) -> bytes:
    return f"{prefix}:wl:{app}:{group}:{bucket}".encode()


def registry_key(prefix: str, app: str, group: str) -> bytes:
    return f"{prefix}:wn:{app}:{group}".encode()


def hint_key(prefix: str, app: str, bucket: int) -> bytes:
    return f"{prefix}:wsh:{app}:{bucket}".encode()


def _slot(tag: str | None) -> str:
    return "" if tag is None else f":{{{tag}}}"
