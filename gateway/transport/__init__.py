"""The gateway's uvicorn protocols: the only code touching uvicorn/websockets internals.

One module per protocol, so ``ls`` shows the flow:

- ``http``: ``EdgeHTTPProtocol``, uvicorn's httptools protocol with the edge of SPEC
  section 3 (connection limits, header and body deadlines, over-long headers) and the
  ``presence.stream`` extension for responses that stay open (``gateway.sse``).
- ``websocket``: ``PresenceWebSocketProtocol``, uvicorn's sans-I/O WebSocket protocol with
  the ``presence.raw`` extension (the fan-out's raw write path) and close code 4009 for an
  over-size message.
- ``quiet``: ``QuietH11Protocol``, uvicorn's h11 protocol without access log lines.
- ``common``: what both protocols share: the app's ``Edge``, the access log, the small send
  buffer, and slim stand-ins for uvicorn's per-connection ``asyncio.Queue`` and ``Event``.

Under any other ASGI server the extensions are absent and sessions fall back to plain ASGI
sends: same behaviour, more overhead. All of them log through ``gateway.edge`` rules: never
the client address, never a query string.
"""

from __future__ import annotations

from gateway.transport.http import STREAM, EdgeHTTPProtocol
from gateway.transport.quiet import QuietH11Protocol
from gateway.transport.websocket import EXTENSION, PresenceWebSocketProtocol

__all__ = [
    "EXTENSION",
    "STREAM",
    "EdgeHTTPProtocol",
    "PresenceWebSocketProtocol",
    "QuietH11Protocol",
]
