"""Redis keys of webhooks out (the rest of the layout: ``gateway/backends/redis.py``).

    <prefix>:wh:<app>[:{<s>}]          stream  one entry per queued change: t (type), s (the
                                               state JSON as published), at (ms); one consumer
                                               group per endpoint (``WebhookEndpoint.group``)
    <prefix>:wg:<app>[:{<s>}]          set     the groups apply.lua made on that stream
    <prefix>:wl:<app>:<group>[:<b>]    string  the lease: the node that delivers that stream
                                               (bucket ``b`` of slots, on Cluster) to that
                                               endpoint, so a user's messages stay in order
    <prefix>:wn:<app>:<group>          zset    the nodes delivering to that endpoint, by when
                                               their registration runs out (the fair share)
    <prefix>:wsh:<app>:<b>             set     Cluster: slots of bucket ``b`` whose streams got
                                               entries (hints, written after the apply)

On Cluster a stream is per hash slot (``<s>`` the slot's tag, ``slot_tag``): apply.lua's XADD
is in the user's slot, so in the same atomic step as the publish. Slots are grouped in
``BUCKETS`` contiguous buckets, the unit of a lease.
"""

from __future__ import annotations

SLOTS = 16384
BUCKETS = 16  # Cluster: leases per endpoint; the most nodes that share one endpoint's work


def bucket_of(slot: int) -> int:
    return slot * BUCKETS // SLOTS


def slots_of(bucket: int) -> range:
    return range(bucket * SLOTS // BUCKETS, (bucket + 1) * SLOTS // BUCKETS)


def stream_key(prefix: str, app: str, tag: str | None) -> bytes:
    """The app's stream (``tag``: the slot tag on Cluster, None on standalone)."""
    return f"{prefix}:wh:{app}{_slot(tag)}".encode()


def groups_key(prefix: str, app: str, tag: str | None) -> bytes:
    return f"{prefix}:wg:{app}{_slot(tag)}".encode()


def lease_key(prefix: str, app: str, group: str, bucket: int | None) -> bytes:
    tail = "" if bucket is None else f":{bucket}"
    return f"{prefix}:wl:{app}:{group}{tail}".encode()


def registry_key(prefix: str, app: str, group: str) -> bytes:
    return f"{prefix}:wn:{app}:{group}".encode()


def hint_key(prefix: str, app: str, bucket: int) -> bytes:
    return f"{prefix}:wsh:{app}:{bucket}".encode()


def _slot(tag: str | None) -> str:
    return "" if tag is None else f":{{{tag}}}"
