"""The webhook route: read (bounded) → verify → parse → apply → ack (SPEC section 3).

Ack only what was applied: the OK reply is built only after the store returned; a store that
is down gets the provider's failure shape with 503 so providers that retry will retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.backends.base import PresenceStore
from gateway.errors import BodyTooLarge as BodyTooLarge
from gateway.errors import StoreUnavailable, WebhookRejected
from gateway.metrics import Metrics
from gateway.model import PresenceEvent
from gateway.providers.base import (
    Provider,
    Reply,
    WebhookRequest,
    parse_query,
)
from gateway.reconcile import rules
from gateway.types import clock_ms

if TYPE_CHECKING:
    from gateway.reconcile.scheduler import Reconciler

# ``Hub.deliver``: an apply's published states to this node's own watchers, at once
Deliver = Callable[[str, Iterable[tuple[str, bytes]]], None]

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refusing anything over ``limit`` bytes without reading it all.

    Reads the ASGI messages as ``Request.stream()`` does, without its async generator.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_CLOSE = {"connection": "close"}  # the rest of an unread body is not worth reading


def to_response(reply: Reply, *, close: bool = False) -> Response:
    return Response(
        reply.body,
        status_code=reply.status,
        media_type=reply.content_type,
        headers=_CLOSE if close else None,
    )


class _ProviderMetrics:
    """One provider's labelled metrics, looked up once rather than on every webhook."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        # The metrics, not ``metrics``: a value of the WeakKeyDictionary below must not hold
        # its key, or the entry never goes.
        self._webhooks, self._events_unused = metrics.webhooks, metrics.events_unused
        self._name = name
        self.outcomes: dict[str, Counter] = {}
        self.seconds: Histogram = metrics.webhook_seconds.labels(name)
        self._unused: Counter | None = None  # made on first use: no zero series before

    @property
    def unused(self) -> Counter:
        if self._unused is None:
            self._unused = self._events_unused.labels(self._name)
        return self._unused

    def outcome(self, outcome: str) -> Counter:
        child = self.outcomes.get(outcome)
        if child is None:
            child = self._webhooks.labels(self._name, outcome)
            self.outcomes[outcome] = child
        return child


_children: weakref.WeakKeyDictionary[Metrics, dict[str, _ProviderMetrics]] = (
    weakref.WeakKeyDictionary()
)


def _provider_metrics(metrics: Metrics, name: str) -> _ProviderMetrics:
    per_provider = _children.get(metrics)
    if per_provider is None:
        per_provider = _children[metrics] = {}
    found = per_provider.get(name)
    if found is None:
        found = per_provider[name] = _ProviderMetrics(metrics, name)
    return found


async def clear_checked(
    store: PresenceStore,
    app_id: str,
    provider: str,
    events: list[PresenceEvent],
    deliver: Deliver | None = None,
) -> None:
    """A real offline clears the devices the provider's checks put online (``rules.cleared``)."""
    offline: dict[str, list[PresenceEvent]] = {}
    for ev in events:
        if not ev.online:
            offline.setdefault(ev.user, []).append(ev)
    clears: list[PresenceEvent] = []
    for user, evs in offline.items():
        clears += rules.cleared(await store.records(app_id, user), evs, provider)
    if clears:
        result = await store.apply(app_id, clears)
        if deliver is not None:
            deliver(app_id, result.payloads)


async def handle(
    request: Request,
    app_id: str,
    provider: Provider,
    store: PresenceStore,
    metrics: Metrics,
    *,
    timeout_s: float = 10.0,
    max_body: int = MAX_BODY,
    reconciler: Reconciler | None = None,
    deliver: Deliver | None = None,
) -> Response:
    """Run one webhook through its provider and the store.

    The source address is checked before the body is read; a body that does not arrive
    within ``timeout_s`` gets a 408. Answers given with the body unread close the connection.
    The states the apply published go to this node's watchers (``deliver``) before the ack.
    """
    started = time.perf_counter()
    name = provider.name
    counted = _provider_metrics(metrics, name)
    outcome = "error"  # every path that ends well names its outcome; an escape stays "error"
    try:
        client = request.scope.get("client")
        try:
            provider.check_source(client[0] if client else None)
        except WebhookRejected as exc:
            outcome = f"rejected_{exc.status}"
            return to_response(provider.error(exc.status, exc.reason), close=True)
        try:
            async with asyncio.timeout(timeout_s):
                body = await read_body(request, max_body)
        except BodyTooLarge:
            outcome = "too_large"
            limit = "1 MiB" if max_body == MAX_BODY else f"{max_body} bytes"
            return to_response(provider.error(413, f"body over {limit}"), close=True)
        except TimeoutError:
            outcome = "timeout"
            return to_response(provider.error(408, "body not received in time"), close=True)
        except ClientDisconnect:
            outcome = "disconnected"
            return Response(status_code=400)  # nobody is left to read it
        scope = request.scope
        rest = scope.get("path_params", {}).get("rest", "")
        client = scope.get("client")
        req = WebhookRequest(
            path=tuple(s for s in rest.split("/") if s) if rest else (),  # already decoded
            query=parse_query(scope["query_string"]),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
            client_ip=client[0] if client else None,
            now_ms=clock_ms(),
        )
        try:
            parsed = provider.handle(req)
        except WebhookRejected as exc:
            outcome = f"rejected_{exc.status}"
            log.info("webhook %s/%s rejected: %s %s", app_id, name, exc.status, exc.reason)
            return to_response(provider.error(exc.status, exc.reason))
        if parsed.replay_key is not None:  # a signature that does not cover the body
            try:
                fresh = await store.claim_request(
                    app_id, parsed.replay_key, parsed.digest, parsed.replay_ttl_ms
                )
            except StoreUnavailable:
                outcome = "unavailable"
                log.warning("webhook %s/%s: store unavailable, answered 503", app_id, name)
                if reconciler is not None:  # webhooks may be lost: check everyone (SPEC 8)
                    reconciler.request_full(app_id)
                return to_response(provider.error(503, "store unavailable, retry later"))
            if not fresh:
                outcome = "rejected_401"
                log.info("webhook %s/%s rejected: replayed signature", app_id, name)
                return to_response(provider.error(401, "signature already used for another body"))
        if parsed.unused:
            counted.unused.inc(parsed.unused)
        if parsed.events:
            try:
                result = await store.apply(app_id, parsed.events)
                if deliver is not None:
                    deliver(app_id, result.payloads)  # never raises (Hub.deliver)
                if getattr(provider.config, "reconcile", None) is not None:
                    await clear_checked(store, app_id, name, parsed.events, deliver)
            except StoreUnavailable:
                outcome = "unavailable"
                log.warning("webhook %s/%s: store unavailable, answered 503", app_id, name)
                if reconciler is not None:  # webhooks may be lost: check everyone (SPEC 8)
                    reconciler.request_full(app_id)
                return to_response(provider.error(503, "store unavailable, retry later"))
            if result.applied:
                metrics.events_applied.inc(result.applied)
            if result.ignored:
                metrics.events_ignored.inc(result.ignored)
            if result.count:
                metrics.states_published.inc(result.count)
        outcome = "ok"
        return to_response(provider.ok())
    except Exception:
        # A bug, not the caller's fault: nothing (more) was applied, so the provider's failure
        # shape with 503 asks it to retry; SPEC allows no other 5xx. The traceback stays here.
        outcome = "error"
        log.exception("webhook %s/%s failed, answered 503", app_id, name)
        return to_response(provider.error(503, "internal error, retry later"))
    finally:
        counted.outcome(outcome).inc()
        counted.seconds.observe(time.perf_counter() - started)
