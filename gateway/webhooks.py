"""The webhook route: read (bounded) → verify → parse → apply → ack (SPEC section 3).

Ack only what was applied: the OK reply is built only after the store returned; a store that
is down gets the provider's failure shape with 503 so providers that retry will retry.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.backends.base import PresenceStore
from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.providers.base import Provider, Reply, WebhookRejected, WebhookRequest

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024


class BodyTooLarge(Exception):
    """The request body is over ``MAX_BODY``."""


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refusing anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def to_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)


async def handle(
    request: Request,
    app_id: str,
    provider: Provider,
    store: PresenceStore,
    metrics: Metrics,
) -> Response:
    """Run one webhook through its provider and the store."""
    started = time.perf_counter()
    name = provider.name
    outcome = "ok"
    try:
        try:
            body = await read_body(request)
        except BodyTooLarge:
            outcome = "too_large"
            return to_response(provider.error(413, "body over 1 MiB"))
        rest = request.path_params.get("rest", "")
        req = WebhookRequest(
            path=tuple(s for s in rest.split("/") if s),  # Starlette already decoded it
            query=tuple(request.query_params.multi_items()),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            client_ip=request.client.host if request.client else None,
            now_ms=time.time_ns() // 1_000_000,
        )
        try:
            parsed = provider.handle(req)
        except WebhookRejected as exc:
            outcome = f"rejected_{exc.status}"
            log.info("webhook %s/%s rejected: %s %s", app_id, name, exc.status, exc.reason)
            return to_response(provider.error(exc.status, exc.reason))
        if parsed.unused:
            metrics.events_unused.labels(name).inc(parsed.unused)
        if parsed.events:
            try:
                result = await store.apply(app_id, parsed.events)
            except StoreUnavailable:
                outcome = "unavailable"
                log.warning("webhook %s/%s: store unavailable, answered 503", app_id, name)
                return to_response(provider.error(503, "store unavailable, retry later"))
            except Exception:
                outcome = "error"
                log.exception("webhook %s/%s: apply failed", app_id, name)
                return to_response(provider.error(500, "internal error, retry later"))
            metrics.events_applied.inc(result.applied)
            metrics.events_ignored.inc(result.ignored)
            metrics.states_published.inc(len(result.published))
        return to_response(provider.ok())
    finally:
        metrics.webhooks.labels(name, outcome).inc()
        metrics.webhook_seconds.labels(name).observe(time.perf_counter() - started)
