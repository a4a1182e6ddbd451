"""``Delivery``: one endpoint's worker on one node.

It takes messages from its queue (``Source``), keeps them in per-user chains so a user's next
message waits until the previous one was delivered or given up (the queue hands a user's
messages over in ``v`` order), and POSTs with at most ``concurrency`` requests in flight,
over its own connection pool: an endpoint that is down holds only its own chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import ClassVar, Protocol

import httpx

from gateway.metrics import Metrics
from gateway.outbound.config import WebhookEndpoint
from gateway.outbound.message import Message
from gateway.outbound.signing import Signer

log = logging.getLogger(__name__)


class _NotOurs(logging.Filter):
    """Drops httpx's per-request lines for webhook endpoints: one line per message is noise,
    and an endpoint URL may carry a token (the gateway logs endpoints by group name only)."""

    urls: ClassVar[set[str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(a, httpx.URL) and str(a) in self.urls for a in args)


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _NotOurs) for f in _httpx_log.filters):
    _httpx_log.addFilter(_NotOurs())

MAX_BUFFERED = 2000  # messages taken and not done yet, per endpoint and node
TAKE = 200  # messages one take asks for


class Source(Protocol):
    """One endpoint's queue as its worker sees it."""

    async def take(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages not taken yet, each user's in ``v`` order; may wait ~1 s."""
        ...

    async def done(self, message: Message) -> None:
        """The message was delivered or given up: it is not handed out again."""
        ...

    async def depth(self) -> int:
        """Messages waiting (queued, or taken and not done)."""
        ...

    def dropped(self) -> int:
        """Messages dropped so far because the queue was full (0 when it cannot tell)."""
        ...

    def owns(self, message: Message) -> bool:
        """Whether this node may still start delivering ``message`` (its lease is held)."""
        ...

    def forget(self, message: Message) -> None:
        """``message`` will not be done here: another node delivers it now."""
        ...

    async def close(self) -> None: ...


class Disabled(Exception):
    """The endpoint answered 410 Gone."""


class Moved(Exception):
    """This node lost the lease of the message's stream while retrying it."""


class Delivery:
    """Drains one endpoint's ``Source`` until stopped (or a 410)."""

    def __init__(
        self, app: str, endpoint: WebhookEndpoint, source: Source, metrics: Metrics
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.source = source
        self.metrics = metrics
        self.name = endpoint.group(app)  # in logs and metrics: never the URL's secrets
        self.disabled = False
        self._signer = Signer(endpoint.secret)
        self._events = frozenset(endpoint.events)
        self._chains: dict[str, deque[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffered = 0
        self._dropped = 0  # as last counted
        self._room = asyncio.Event()
        self._slots = asyncio.Semaphore(endpoint.concurrency)
        self._client = httpx.AsyncClient(
            timeout=endpoint.timeout_s,
            limits=httpx.Limits(max_connections=endpoint.concurrency),
            follow_redirects=False,
            trust_env=False,
        )
        self._main: asyncio.Task[None] | None = None
        _NotOurs.urls.add(str(httpx.URL(endpoint.url)))

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name=f"webhooks-out-{self.name}")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
        await self.source.close()

    async def _run(self) -> None:
        depth_at = 0.0
        while not self.disabled:
            try:
                if time.monotonic() >= depth_at:
                    depth_at = time.monotonic() + 2.0
                    self._gauge(await self.source.depth())
                room = MAX_BUFFERED - self._buffered
                if room <= 0:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 1.0)
                    continue
                for message in await self.source.take(min(room, TAKE)):
                    self._chain(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the queue is down: retry, never crash the gateway
                log.warning("webhooks out %s: queue unavailable: %s", self.name, type(exc).__name__)
                await asyncio.sleep(1.0)

    def _gauge(self, depth: int) -> None:
        self.metrics.webhooks_out_depth.labels(self.app, self.name).set(depth)
        dropped = self.source.dropped()
        if dropped > self._dropped:
            self.metrics.webhooks_out.labels(self.app, "dropped").inc(dropped - self._dropped)
            log.warning(
                "webhooks out %s (app %s): queue full, %d oldest dropped",
                self.name,
                self.app,
                dropped - self._dropped,
            )
            self._dropped = dropped

    def _chain(self, message: Message) -> None:
        self._buffered += 1
        user = message.user
        chain = self._chains.get(user)
        if chain is not None:
            chain.append(message)
            return
        self._chains[user] = deque([message])
        task = asyncio.create_task(self._drain(user))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, user: str) -> None:
        chain = self._chains[user]
        try:
            while chain:
                message = chain[0]
                if not self.source.owns(message):
                    self._drop(chain)  # the lease moved: the new holder claims them in order
                    break
                if message.kind in self._events:
                    await self._deliver(message)
                else:
                    self._count("skipped")
                await self._done(message)
                chain.popleft()
                self._buffered -= 1
                self._room.set()
        except Disabled:
            pass
        except Moved:
            self._drop(chain)
        finally:
            if self._chains.get(user) is chain and not chain:
                del self._chains[user]

    def _drop(self, chain: deque[Message]) -> None:
        for message in chain:
            self.source.forget(message)
        self._buffered -= len(chain)
        chain.clear()
        self._room.set()

    async def _done(self, message: Message) -> None:
        """Ack, retried while the queue is down (until then the chain waits)."""
        while True:
            try:
                await self.source.done(message)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhooks out %s: ack failed: %s", self.name, type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _deliver(self, message: Message) -> None:
        """POST until a 2xx, the schedule runs out (given up) or a 410 (``Disabled``)."""
        msg_id, body = message.webhook_id(), message.body()
        schedule = self.endpoint.retry_schedule_s
        for attempt in range(len(schedule) + 1):
            if self.disabled:
                raise Disabled
            if attempt and not self.source.owns(message):
                raise Moved
            async with self._slots:
                outcome = await self._post(msg_id, body)
            if outcome == "ok":
                self._count("delivered")
                lag = time.time() - message.at_ms / 1000
                self.metrics.webhooks_out_lag.observe(max(lag, 0.0))
                return
            if outcome == "gone":
                if not self.disabled:
                    self.disabled = True
                    self._count("disabled")
                    log.warning(
                        "webhooks out %s (app %s): endpoint answered 410 Gone; disabled until "
                        "restart, its messages stay queued",
                        self.name,
                        self.app,
                    )
                raise Disabled
            if attempt < len(schedule):
                self._count("retried")
                await asyncio.sleep(schedule[attempt])
        self._count("failed")
        log.warning(
            "webhooks out %s (app %s): gave up %s after %d attempts (%s)",
            self.name,
            self.app,
            msg_id,
            len(schedule) + 1,
            outcome,
        )

    async def _post(self, msg_id: str, body: bytes) -> str:
        """One attempt: "ok", "gone", or why it failed."""
        headers = self._signer.headers(msg_id, body)
        try:
            response = await self._client.post(self.endpoint.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if 200 <= response.status_code < 300:
            return "ok"
        if response.status_code == 410:
            return "gone"
        return f"status {response.status_code}"

    def _count(self, outcome: str) -> None:
        self.metrics.webhooks_out.labels(self.app, outcome).inc()
