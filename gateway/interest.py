"""The hub's interest: who on this node watches whom, and the broker subscriptions it takes.

The node subscribes in the broker only to users some local session watches, refcounted
(first watcher subscribes, the last one leaving schedules an unsubscribe); one subscribe
call per watch request and one batched unsubscribe per tick (``unsubscribe_delay_s``).
``Hub`` (``gateway.hub``) is an ``Interest``: its fan-out reads ``index``, its ``start``
runs ``_unsubscriber``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from gateway.backends.base import Broker
from gateway.client import Client
from gateway.config import ConnectionsConfig
from gateway.errors import StoreUnavailable
from gateway.model import UserState
from gateway.types import Key

log = logging.getLogger(__name__)


class Interest:
    """The index user → watching clients and the subscriptions that keep it fed."""

    # set by the hub
    broker: Broker
    config: ConnectionsConfig
    latest: dict[Key, tuple[int, bytes | UserState]]  # forgotten for a user nobody watches

    def __init__(self) -> None:
        self.index: dict[Key, set[Client]] = {}
        self._subscribing: dict[Key, asyncio.Future[None]] = {}  # failed ones stay while indexed
        self._unsubscribing: dict[Key, asyncio.Future[None]] = {}
        self._unsubscribe: set[Key] = set()
        self._wake = asyncio.Event()

    async def watch(self, session: Client, app: str, users: Sequence[str]) -> None:
        """Index ``session`` as a watcher of ``users``; return once their feed is live.

        Raises StoreUnavailable (and leaves nothing indexed) when the broker cannot subscribe.
        A subscribe waits for an unsubscribe of the same user still in flight: the broker
        need not apply calls in the order they were made.
        """
        new: list[str] = []
        waits: list[asyncio.Future[None]] = []
        unsubscribing: set[asyncio.Future[None]] = set()
        for user in users:
            key = (app, user)
            watchers = self.index.get(key)
            if watchers is None:
                watchers = self.index[key] = set()
                if key in self._unsubscribe:
                    self._unsubscribe.discard(key)  # still subscribed: keep it
                else:
                    new.append(user)
                    if (busy := self._unsubscribing.get(key)) is not None:
                        unsubscribing.add(busy)
            watchers.add(session)
            pending = self._subscribing.get(key)
            if pending is not None:
                waits.append(pending)
        if new:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for user in new:
                self._subscribing[(app, user)] = done
            try:
                for busy in unsubscribing:
                    await asyncio.shield(busy)
                await self.broker.subscribe(app, new)
            except BaseException as exc:
                # the keys stay marked failed while indexed, so a session that starts
                # watching them meanwhile does not take them for subscribed
                done.set_exception(StoreUnavailable("subscribe failed"))
                done.exception()  # retrieved: waiters get their own copy below
                self.unwatch(session, app, users)
                if not isinstance(exc, Exception):
                    raise  # cancelled: not the store's failure
                raise StoreUnavailable("subscribe failed") from exc
            done.set_result(None)
            for user in new:
                if self._subscribing.get((app, user)) is done:
                    del self._subscribing[(app, user)]
        for wait in waits:
            try:
                await asyncio.shield(wait)
            except StoreUnavailable:
                self.unwatch(session, app, users)
                raise

    def unwatch(self, session: Client, app: str, users: Iterable[str]) -> None:
        """Remove ``session`` as a watcher; users nobody watches are unsubscribed soon."""
        for user in users:
            key = (app, user)
            watchers = self.index.get(key)
            if watchers is None:
                continue
            watchers.discard(session)
            if not watchers:
                del self.index[key]
                self.latest.pop(key, None)  # no longer kept up to date
                failed = self._subscribing.get(key)
                if failed is not None and failed.done():
                    del self._subscribing[key]  # the next watcher subscribes afresh
                self._unsubscribe.add(key)
                self._wake.set()

    async def _unsubscriber(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.config.unsubscribe_delay_s)
            self._wake.clear()
            keys, self._unsubscribe = self._unsubscribe, set()
            by_app: dict[str, list[str]] = {}
            for app, user in keys:
                by_app.setdefault(app, []).append(user)
            for app, candidates in by_app.items():
                # checked right before the call: a user may be watched again by now
                users = [u for u in candidates if (app, u) not in self.index]
                if not users:
                    continue
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                for user in users:
                    self._unsubscribing[(app, user)] = done
                try:
                    await self.broker.unsubscribe(app, users)
                except Exception:
                    log.warning(
                        "unsubscribe of %d users failed; the broker drops them on reset", len(users)
                    )
                finally:
                    done.set_result(None)
                    for user in users:
                        if self._unsubscribing.get((app, user)) is done:
                            del self._unsubscribing[(app, user)]
