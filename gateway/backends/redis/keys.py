"""Where the Redis backend keeps what: the keys, channels and hash tags, and the slot tags.

Layout (``<prefix>`` is ``pg`` unless configured; ``<tag>`` is ``<app>/<user>`` with ``%``, ``{``
and ``}`` of the user id percent-escaped, so the whole tag is the Cluster hash tag and a user's
key and channel always share a slot)::

    <prefix>:u:{<tag>}   hash  d:<device> -> "<time>,<+|->,<base>,<ons>,<offs>,<platform>"
                                  a device record (``DeviceRecord``; platform last)
                               a, a:<platform> -> the user's and each platform's anchor
                                  of the compacted history, "<start>,<end>" (``model.compact``)
                               s -> the last published state (JSON)   v -> its version
                               g -> while an offline waits out the grace: when it ends (ms)
                               c -> the custom status, "<time>,<text as JSON>" (the winner
                                  by time, then text; ``model.merge_custom``; "" cleared)
    <prefix>:c:{<tag>}   shard channel: every state published for the user (SPUBLISH)

    <prefix>:grace       sorted set  <tag> -> when the user's offline grace ends (ms)
                         (standalone Redis: the one grace index)
    <prefix>:grace:{<s>} the same, on Cluster: one index per hash slot, holding the users of
                         that slot; ``<s>`` is a short tag hashing to the slot (``slot_tag``)
    <prefix>:gh:{<s>}    sorted set  <slot> -> the earliest grace end in that slot's index: a
                         Cluster primary's hint of its non-empty indexes (``<s>`` the tag of
                         the lowest slot it serves)

Webhooks out (SPEC 9) have keys of their own, in the user's slot too: ``gateway/outbound/keys.py``.
"""

from __future__ import annotations

import functools
import itertools
import string

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def user_tag(app: str, user: str) -> str:
    """The hash tag of a user's key and channel: ``app/user`` with no ``{`` or ``}`` left."""
    return f"{app}/{user.translate(_ESCAPES)}"


def user_key(prefix: str, app: str, user: str) -> str:
    """The hash holding a user's device records and last published state."""
    return f"{prefix}:u:{{{user_tag(app, user)}}}"


def user_channel(prefix: str, app: str, user: str) -> str:
    """The shard channel a user's states are published on."""
    return f"{prefix}:c:{{{user_tag(app, user)}}}"


def grace_index(prefix: str) -> str:
    """The sorted set of users whose offline waits out the grace, by when it ends.

    The one index on standalone Redis; on Cluster, where older versions used it, it is only
    drained (see ``slot_index``).
    """
    return f"{prefix}:grace"


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For each Cluster hash slot, a short tag (at most 4 characters) that hashes to it."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    left = REDIS_CLUSTER_HASH_SLOTS
    alphabet = string.digits + string.ascii_lowercase
    for size in itertools.count(1):
        for chars in itertools.product(alphabet, repeat=size):
            tag = "".join(chars)
            slot = key_slot(tag.encode())
            if tags[slot] is None:
                tags[slot] = tag
                left -= 1
                if not left:
                    return tuple(t for t in tags if t is not None)
    raise AssertionError("unreachable")


def slot_tag(slot: int) -> str:
    """A short tag that hashes to ``slot``."""
    return slot_tags()[slot]


def slot_index(prefix: str, slot: int) -> str:
    """On Cluster, the grace index of the users of hash slot ``slot`` (in that slot)."""
    return f"{prefix}:grace:{{{slot_tag(slot)}}}"


def hint_key(prefix: str, slot: int) -> str:
    """On Cluster, the hint set of the primary whose lowest slot is ``slot`` (in that slot)."""
    return f"{prefix}:gh:{{{slot_tag(slot)}}}"


def parse_tag(tag: str | bytes) -> tuple[str, str] | None:
    """``(app, user)`` of a tag made by ``user_tag``; None when it is not one."""
    if isinstance(tag, bytes):
        tag = tag.decode()
    app, sep, escaped = tag.partition("/")
    if not sep or not app:
        return None
    parts = escaped.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        out.append(chr(int(part[:2], 16)) + part[2:])
    return app, "".join(out)


def parse_member(tag: bytes) -> tuple[str, str] | None:
    """``parse_tag`` of a grace index member; None for one this store did not write."""
    try:
        return parse_tag(tag)
    except (ValueError, IndexError):  # UnicodeDecodeError included
        return None


def parse_channel(prefix: str, channel: str | bytes) -> tuple[str, str] | None:
    """``(app, user)`` of a channel made by ``user_channel``; None when it is not one."""
    if isinstance(channel, bytes):
        channel = channel.decode()
    head = f"{prefix}:c:{{"
    if not channel.startswith(head) or not channel.endswith("}"):
        return None
    return parse_tag(channel[len(head) : -1])
