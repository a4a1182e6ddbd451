"""The Lua scripts of ``lua/``: each one's source, SHA1, SCRIPT LOAD and EVALSHA commands.

``apply.lua`` merges, stores and publishes users' events (and ends offline graces), ``get.lua``
reads several users' states in one call, ``grace_done.lua`` drops sorted-set entries unchanged
since read; each file's header lists its KEYS and ARGV. (``lease.lua``, of webhooks out, is
loaded by ``gateway/outbound/redis.py``.) A node that lost its script cache answers NOSCRIPT:
``SCRIPTS`` are what the store loads there before running the calls again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources

from gateway.backends.redis.lane import bulk, command


def _lua(name: str) -> str:
    return resources.files("gateway.backends.redis").joinpath(f"lua/{name}").read_text()


class _Script:
    """A Lua script of ``lua/``: its source, its SHA1, and the start of an EVALSHA of it."""

    def __init__(self, name: str) -> None:
        self.source = _lua(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.load = command(b"SCRIPT", b"LOAD", self.source.encode())
        self.head = bulk(b"EVALSHA") + bulk(self.sha.encode())

    def call(self, keys: Sequence[bytes], args: Sequence[bytes] = ()) -> bytes:
        """The EVALSHA command of ``keys`` and ``args``."""
        parts = [bulk(b"%d" % len(keys)), *map(bulk, keys), *map(bulk, args)]
        return b"*%d\r\n%b%b" % (len(parts) + 2, self.head, b"".join(parts))


APPLY = _Script("apply.lua")
GET = _Script("get.lua")
GRACE_DONE = _Script("grace_done.lua")
SCRIPTS = (APPLY, GET, GRACE_DONE)
