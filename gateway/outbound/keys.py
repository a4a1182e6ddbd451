"""Redis keys of webhooks out (the rest of the layout: ``gateway/backends/redis.py``).

    <prefix>:wh:<app>            stream   one entry per queued change: t (type), s (the state
                                          JSON as published), at (ms); a consumer group per
                                          endpoint (``WebhookEndpoint.group``)
    <prefix>:wg:<app>            set      the groups apply.lua made on that stream
    <prefix>:wl:<app>:<group>    string   the lease: the node that delivers that stream to that
                                          endpoint (a user's messages stay in order)
On Cluster each is per hash slot, ``...:{<slot tag>}`` in the slot of the users it holds, so
apply.lua's XADD is in the same atomic step as the publish.
"""

from __future__ import annotations


def stream_key(prefix: str, app: str, tag: str | None) -> bytes:
    """The app's stream (``tag``: the slot tag on Cluster, None on standalone)."""
    return f"{prefix}:wh:{app}{_slot(tag)}".encode()


def groups_key(prefix: str, app: str, tag: str | None) -> bytes:
    return f"{prefix}:wg:{app}{_slot(tag)}".encode()


def lease_key(prefix: str, app: str, group: str, tag: str | None) -> bytes:
    return f"{prefix}:wl:{app}:{group}{_slot(tag)}".encode()


def _slot(tag: str | None) -> str:
    return "" if tag is None else f":{{{tag}}}"
