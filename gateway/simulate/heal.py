"""The simulator's reconciliation side: its model's pull APIs, and the gateway against the model.

``serve_model`` serves the fake pull APIs of Tencent IM, RongCloud and OpenIM
(``gateway.simulate.pullapi``, which check credentials as the real ones do) on one loopback
port, answering from a ``Simulation``'s model: what each provider knows right now, dropped
webhooks included. ``compare`` asks the gateway's query API about every simulated user and
says who is shown wrongly, so ``simulate --drop`` shows the damage and reconciliation
(SPEC section 8) the healing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from gateway.simulate.behaviour import Simulation
from gateway.simulate.pullapi.base import FakePullApi
from gateway.simulate.pullapi.openim import FakeOpenIM
from gateway.simulate.pullapi.rongcloud import FakeRongCloud
from gateway.simulate.pullapi.server import FakeServer
from gateway.simulate.pullapi.server import serve as serve_fakes
from gateway.simulate.pullapi.tencent import FakeTencent
from gateway.simulate.requests import Target
from gateway.simulate.sender import stopped

PULL_PROVIDERS = ("tencent", "rongcloud", "openim")  # those with a pull API (SPEC 8)
QUERY_BATCH = 500  # users per GET /presence (the API takes 1000; shorter URLs)
PING_S = 15.0  # --watch-all: an application ping this often (the heartbeat is 25 s)


def model_fakes(sim: Simulation, target: Target) -> list[FakePullApi]:
    """One fake per pull API, answering from ``sim`` and checking ``target``'s credentials."""
    common: dict[str, Any] = {"record": False}  # a long run: no request log, counts only
    return [
        FakeTencent(
            sdkappid=target.tencent_sdkappid,
            admin=target.tencent_admin,
            secret_key=target.tencent_secret_key,
            lookup=sim.truth("tencent"),
            **common,
        ),
        FakeRongCloud(
            app_key=target.rongcloud_app_key,
            app_secret=target.rongcloud_app_secret,
            lookup=sim.truth("rongcloud"),
            **common,
        ),
        FakeOpenIM(
            admin_user=target.openim_admin_user,
            secret=target.openim_secret,
            lookup=sim.truth("openim"),
            **common,
        ),
    ]


@contextlib.asynccontextmanager
async def serve_model(sim: Simulation, target: Target, port: int = 0) -> AsyncIterator[FakeServer]:
    """Serve ``sim``'s pull APIs on 127.0.0.1:``port`` (0: a free one) until exit."""
    async with serve_fakes(*model_fakes(sim, target), port=port) as server:
        yield server


def pull_calls(fakes: Sequence[FakePullApi]) -> dict[str, int]:
    """Status requests each provider's fake answered (credential requests left out)."""
    out: dict[str, int] = {}
    for fake in fakes:
        name = {FakeTencent: "tencent", FakeRongCloud: "rongcloud", FakeOpenIM: "openim"}
        out[name[type(fake)]] = fake.calls[fake.status_path]
    return out


def config_hint(url: str) -> list[str]:
    """Lines telling where to point the gateway's reconcile tables (no secrets in them)."""
    return [
        f"pull APIs of the simulated Tencent IM, RongCloud and OpenIM on {url}; in the "
        "gateway's config (docs/heal-demo.toml):",
        f'  [apps.tencent.reconcile]   api_base = "{url}"   (secret_key: --tencent-secret-key)',
        f'  [apps.rongcloud.reconcile] api_base = "{url}"   (signs with the app table)',
        f'  [apps.openim.reconcile]    api_base = "{url}"   (secret: --openim-secret)',
    ]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The gateway's query API against the model, at one moment."""

    users: int
    ghosts: tuple[str, ...]  # shown online, offline in the model
    missing: tuple[str, ...]  # shown offline (or unknown), online in the model
    platforms_off: int  # online on both sides, other platforms (e.g. ``unknown``)

    @property
    def wrong(self) -> int:
        """Users whose online/offline status is shown wrongly."""
        return len(self.ghosts) + len(self.missing)

    @property
    def share(self) -> float:
        return self.wrong / self.users if self.users else 0.0

    def line(self) -> str:
        text = (
            f"check: {self.wrong} of {self.users} users shown wrongly "
            f"({len(self.ghosts)} online that are offline, {len(self.missing)} offline that "
            f"are online); {self.platforms_off} online on other platforms"
        )
        names = [*self.ghosts, *self.missing]
        if names:
            text += ": " + ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
        return text


class CheckFailed(Exception):
    """The query API did not answer as expected (the reason is short, no secrets)."""


async def compare(
    client: httpx.AsyncClient, app: str, api_key: str, expected: dict[str, list[str]]
) -> Comparison:
    """Ask the gateway (``client``'s base URL) about every user of ``expected``."""
    users = list(expected)
    shown: dict[str, dict[str, Any]] = {}
    path = f"/v1/apps/{quote(app, safe='')}/presence"
    headers = {"Authorization": f"Bearer {api_key}"}
    for i in range(0, len(users), QUERY_BATCH):
        batch = users[i : i + QUERY_BATCH]
        try:
            r = await client.get(path, params=[("user", u) for u in batch], headers=headers)
        except httpx.HTTPError as exc:
            raise CheckFailed(f"query API unreachable ({type(exc).__name__})") from None
        if r.status_code != 200:
            raise CheckFailed(f"query API answered HTTP {r.status_code}")
        try:
            shown.update({state["user"]: state for state in r.json()["presence"]})
        except (ValueError, KeyError, TypeError):
            raise CheckFailed("query API answer not understood") from None
    ghosts, missing, off = [], [], 0
    for user, platforms in expected.items():
        state = shown.get(user, {})
        online = state.get("status") == "online"
        if online and not platforms:
            ghosts.append(user)
        elif platforms and not online:
            missing.append(user)
        elif online and sorted({d.get("platform") for d in state.get("devices", ())}) != platforms:
            off += 1
    return Comparison(len(users), tuple(ghosts), tuple(missing), off)


async def check_every(
    url: str,
    app: str,
    api_key: str,
    sim: Simulation,
    every_s: float,
    stop: asyncio.Event,
    warn: Callable[[str], None],
) -> None:
    """Print the gateway against the model every ``every_s`` until ``stop`` (cancelled); a
    check that fails is reported through ``warn``."""
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while True:
            try:
                print((await compare(client, app, api_key, sim.expected())).line(), flush=True)
            except CheckFailed as exc:
                warn(f"check failed: {exc}")
            if await stopped(stop, every_s):
                return


async def watch_all(
    url: str, app: str, users: list[str], stop: asyncio.Event, warn: Callable[[str], None]
) -> None:
    """Watch ``users`` over WebSocket connections (a dev token, ``max_watch`` users each) until
    ``stop``, as viewers of a page would: reconciliation re-checks the watched users shown
    offline (SPEC 8), not the others. A problem is reported through ``warn`` and ends the
    watching, never the run."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
            path = f"/v1/apps/{quote(app, safe='')}/dev-token"
            r = await client.get(path, params={"user": "simulate-watcher"})
        if r.status_code != 200:
            warn(f"--watch-all: no dev token (HTTP {r.status_code}): the app needs dev_tokens")
            return
        token = str(r.json()["token"])
    except (ValueError, KeyError, TypeError, httpx.HTTPError) as exc:
        warn(f"--watch-all: no dev token ({type(exc).__name__})")
        return
    try:
        ws_url = "ws" + url.removeprefix("http") + f"/v1/apps/{quote(app, safe='')}/ws"
        async with asyncio.TaskGroup() as group:
            first = await _watcher(ws_url, token)
            size = max(1, int(json.loads(await first.recv()).get("max_watch", 1000)))
            chunks = [users[i : i + size] for i in range(0, len(users), size)]
            for n, chunk in enumerate(chunks):
                ws = first if n == 0 else await _watcher(ws_url, token)
                group.create_task(_hold(ws, chunk, stop))
    except* (OSError, ValueError, TypeError, WebSocketException) as group:
        warn(f"--watch-all: stopped watching ({type(group.exceptions[0]).__name__})")


async def _watcher(ws_url: str, token: str) -> ClientConnection:
    ws = await connect(ws_url, ping_interval=None, max_size=2**22, open_timeout=10)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    return ws


async def _hold(ws: ClientConnection, users: list[str], stop: asyncio.Event) -> None:
    """Watch ``users`` on ``ws``, read and forget its frames, ping, until ``stop``."""

    async def drain() -> None:
        async for _ in ws:
            pass

    async with ws:
        await ws.send(json.dumps({"type": "watch", "id": 1, "users": users}))
        reader = asyncio.create_task(drain())
        pings = itertools.count(2)
        try:
            while not reader.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PING_S):
                        await stop.wait()
                if stop.is_set():
                    break
                await ws.send(json.dumps({"type": "ping", "id": next(pings)}))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketException):
                await reader
        if not stop.is_set():
            raise WebSocketException(f"closed by the gateway ({ws.close_code})")
