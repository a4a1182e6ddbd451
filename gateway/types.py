"""The shared vocabulary: what an app id and a user id are, the (app, user) key, the clock.

Each rule is written here once; config, routes, the wire protocol, tokens and provider
adapters use these names rather than their own copies.
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import msgspec

APP_ID = r"[A-Za-z0-9_-]{1,64}"
"""An app id (config ``id``, the ``{app}`` of every route), as a fragment for larger patterns."""

APP_ID_PATTERN = rf"\A{APP_ID}\Z"  # \Z: "$" would pass a final "\n"
"""A whole app id, for msgspec and the OpenAPI document."""

AppId = Annotated[str, msgspec.Meta(pattern=APP_ID_PATTERN)]

MAX_USER_ID = 256
"""Longest user id (characters, not bytes); a device key has the same bound."""

USER_ID = re.compile(rf"\A.{{1,{MAX_USER_ID}}}\Z", re.DOTALL)
"""A whole user id: 1 to ``MAX_USER_ID`` characters of any kind, newlines included."""

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_USER_ID)]
"""A user id in a decoded body (WebSocket messages, API and dev-helper bodies)."""

MAX_QUERY_USERS = 1000
"""Users one store read, one presence query, one reconcile request or one SSE stream takes."""

Key = tuple[str, str]
"""(app id, user id): how one user is named across apps on one node."""


def clock_ms() -> int:
    """The gateway's clock: wall-clock milliseconds since the epoch (event and state times)."""
    return time.time_ns() // 1_000_000
