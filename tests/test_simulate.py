"""``presence-gateway simulate``: realistic behaviour, signatures the gateway accepts, end state."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import cli
from gateway.backends.base import PresenceSettings
from gateway.config import AppConfig, RedisConfig, Settings, dev_settings
from gateway.model import PresenceEvent
from gateway.providers import PROVIDERS
from gateway.providers.base import WebhookRequest
from gateway.providers.easemob import EasemobConfig
from gateway.providers.netease import NetEaseConfig
from gateway.providers.openim import OpenIMConfig
from gateway.providers.rongcloud import RongCloudConfig
from gateway.providers.tencent import TencentConfig
from gateway.providers.wukongim import WuKongIMConfig
from gateway.reconcile.base import Answer, PullClient
from gateway.reconcile.config import OpenIMReconcile, RongCloudReconcile, TencentReconcile
from gateway.reconcile.http import HttpSettings
from gateway.reconcile.openim import OpenIMClient
from gateway.reconcile.rongcloud import RongCloudClient
from gateway.reconcile.tencent import TencentClient
from gateway.simulate.behaviour import Simulation
from gateway.simulate.command import command
from gateway.simulate.delivery import (
    ADMIN_KICK,
    ARRIVAL_ORDERED,
    CUSTOM_STATUS,
    CUSTOM_TEXTS,
    KICKED,
    LOGIN,
    PROVIDER_NAMES,
    Delivery,
    Dropper,
    clock_ms,
    user_ids,
)
from gateway.simulate.heal import compare, pull_calls, serve_model, watch_all
from gateway.simulate.requests import HttpRequest, Target, build
from gateway.simulate.sender import Options, Result, run
from tests.live import serve
from tests.servers import free_port

STATUS_OK = {p: 200 for p in PROVIDER_NAMES} | {"standard": 204}


def make_settings(redis_url: str | None = None) -> Settings:
    """Every provider with other secrets than dev mode's: Tencent Sign and path tokens on."""
    base = dev_settings().apps["demo"]
    app = msgspec.structs.replace(
        base,
        id=f"sim{uuid.uuid4().hex[:10]}",
        tencent=TencentConfig(sdkappid=1400012345, callback_token="tencent-cb-token"),
        rongcloud=RongCloudConfig(app_key="rc-key", app_secret="rc-secret"),
        openim=OpenIMConfig(token="openim-path-token"),
        easemob=EasemobConfig(appkey="sim-org#sim-app", secret="easemob-rule-secret"),
        netease=NetEaseConfig(app_key="netease-key", app_secret="netease-app-secret"),
        wukongim=WuKongIMConfig(token="wukongim-path-token"),
    )
    redis = RedisConfig(url=redis_url) if redis_url else None
    return Settings(apps={app.id: app}, redis=redis)


def app_of(settings: Settings) -> AppConfig:
    return next(iter(settings.apps.values()))


def generate(
    seed: int, providers: tuple[str, ...] = PROVIDER_NAMES, users: int = 12, steps: int = 600
) -> tuple[Simulation, list[Delivery]]:
    """``steps`` steps of a simulation 0.4 s apart from now, then its held deliveries."""
    sim = Simulation(user_ids(users), providers, seed)
    now = clock_ms()
    out: list[Delivery] = []
    for _ in range(steps):
        out += sim.step(now)
        now += 400
    return sim, out + sim.flush(now)


def changes_of(deliveries: list[Delivery]) -> Iterator[tuple[Delivery, Any]]:
    for d in deliveries:
        for c in d.changes:
            yield d, c


def replay(deliveries: list[Delivery]) -> Iterator[dict[str, set[str]]]:
    """Each user's online platforms after each delivery, merged last-writer-wins per device.

    WuKongIM sends no event time: as the gateway does, its events are ordered by arrival
    (array order inside a delivery), and the simulator's own times are not used.
    """
    records: dict[tuple[str, str], tuple[int, bool, str]] = {}
    arrival = itertools.count(1)
    for d in deliveries:
        for c in d.changes:
            if c.how == CUSTOM_STATUS:
                continue
            new = (next(arrival) if d.provider in ARRIVAL_ORDERED else c.time, c.online, c.platform)
            old = records.get((c.user, c.device))
            if old is None or new[:2] > old[:2]:
                records[(c.user, c.device)] = new
        online: dict[str, set[str]] = defaultdict(set)
        for (user, _), (_, is_online, platform) in records.items():
            if is_online:
                online[user].add(platform)
        yield online


def final(deliveries: list[Delivery]) -> dict[str, set[str]]:
    states: dict[str, set[str]] = {}
    for after in replay(deliveries):
        states = after
    return states


def test_generator_makes_flaps_kicks_retries_and_multi_device() -> None:
    """A seed's stream has flaps, kicks, retries, reordering, RongCloud batches, multi-device."""
    _, deliveries = generate(seed=11)
    target = Target()
    changes = list(changes_of(deliveries))

    # Reconnect flaps: a device of a user offline, then online again within 3 s.
    flaps = [
        (c1, c2)
        for (_, c1), (_, c2) in itertools.pairwise(changes)
        if c1.user == c2.user and c1.platform == c2.platform and not c1.online and c2.online
        if 0 < c2.time - c1.time <= 3000
    ]
    assert flaps
    # Tencent: a Login with no Disconnect before it (the previous change was also a Login).
    last: dict[tuple[str, str], str] = {}
    relogins = 0
    for d, c in changes:
        if d.provider == "tencent" and d.resend_of is None:
            relogins += c.how == LOGIN and last.get((c.user, c.device)) == LOGIN
            last[(c.user, c.device)] = c.how
    assert relogins > 0
    # Kicks: Tencent KickedDevice, and the OpenIM kick-off command.
    bodies = [(d, json.loads(build(d, target, clock_ms()).body)) for d in deliveries]
    assert any(d.provider == "tencent" and "KickedDevice" in b for d, b in bodies)
    assert any(d.provider == "openim" and "KickOff" in b["callbackCommand"] for d, b in bodies)
    assert any(c.how == ADMIN_KICK for _, c in changes)
    # RongCloud: batches of several events, and a user with several sessionIds at once.
    assert any(d.provider == "rongcloud" and len(d.changes) >= 3 for d in deliveries)
    sessions: dict[str, set[str]] = defaultdict(set)
    for d, c in changes:
        if d.provider == "rongcloud" and c.online:
            sessions[c.user].add(c.device)
    assert max(len(s) for s in sessions.values()) >= 5
    # Retries: exact duplicates right after the original, and re-sends from further back.
    by_id = {d.id: d for d in deliveries}
    resent = [d for d in deliveries if d.resend_of is not None]
    origins = [(d, by_id[d.resend_of]) for d in resent if d.resend_of is not None]
    assert any(d.id == orig.id + 1 and d.changes == orig.changes for d, orig in origins)
    assert any(d.id - orig.id > 5 for d, orig in origins)
    # Out of order: deliveries carrying a change older than one already delivered for the
    # same device; and batches whose events are not in time order.
    newest: dict[tuple[str, str], int] = {}
    stale = 0
    for _, c in changes:
        key = (c.user, c.device)
        stale += c.time < newest.get(key, 0)
        newest[key] = max(c.time, newest.get(key, 0))
    assert stale > 10
    assert any([c.time for c in d.changes] != sorted(c.time for c in d.changes) for d in resent)
    # Multi-device: some user is online on three platforms at once.
    assert max(len(p) for online in replay(deliveries) for p in online.values()) >= 3
    # Realistic times: ms timestamps, never older than the gateway's default max age.
    sent_at = clock_ms()
    assert all(sent_at - 600_000 < c.time < sent_at + 600_000 for _, c in changes)


def test_generator_speaks_easemob_netease_and_wukongim_as_they_do() -> None:
    """Easemob kicks are `replaced`; NetEase copies; WuKongIM arrays in order, retried at once."""
    _, deliveries = generate(seed=5, providers=("easemob", "netease", "wukongim"), steps=800)
    target = Target()
    bodies = [(d, json.loads(build(d, target, clock_ms()).body)) for d in deliveries]
    easemob = [(d, b) for d, b in bodies if d.provider == "easemob"]
    assert {b["reason"] for _, b in easemob} == {"login", "logout", "replaced"}
    assert all(b["reason"] == "replaced" for d, b in easemob if d.changes[0].how == KICKED)
    assert {"@easemob.com/" in b["user"] for _, b in easemob} == {True, False}
    assert {b["eventType"] for d, b in bodies if d.provider == "netease"} == {"2", "3"}
    # WuKongIM: batches as arrays, one with a connection that opened and closed in it.
    wukong = [d for d in deliveries if d.provider == "wukongim"]
    batches = [b for d, b in bodies if d.provider == "wukongim"]
    assert all(isinstance(b, list) and all(isinstance(e, str) for e in b) for b in batches)
    assert max(len(b) for b in batches) >= 3
    assert any(len({c.device for c in d.changes}) < len(d.changes) for d in wukong)
    # Never reordered: each connection comes online once, before it goes offline, in the order
    # of the deliveries and of the arrays (re-sends repeat the batch just sent).
    by_id = {d.id: d for d in deliveries}
    seen: dict[str, list[bool]] = defaultdict(list)
    last_new: Delivery | None = None
    for d in wukong:
        if d.resend_of is not None:
            assert last_new is not None and d.resend_of == last_new.id
            assert d.changes == by_id[d.resend_of].changes
            continue
        last_new = d
        for c in d.changes:
            seen[f"{c.user}/{c.device}"].append(c.online)
    assert any(d.resend_of is not None for d in wukong)
    assert all(states in ([True], [True, False]) for states in seen.values())
    assert sum(states == [True, False] for states in seen.values()) > 10


@pytest.mark.parametrize("providers", [PROVIDER_NAMES, *((p,) for p in PROVIDER_NAMES)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_model_is_the_end_state_whatever_the_delivery_order(
    providers: tuple[str, ...], seed: int
) -> None:
    """Replaying every delivery last-writer-wins ends exactly in the simulator's model."""
    sim, deliveries = generate(seed, providers, steps=400)
    expected = sim.expected()
    got = final(deliveries)
    assert {u: sorted(got.get(u, ())) for u in expected} == expected
    assert any(expected.values()) and not all(expected.values())


def to_webhook_request(req: HttpRequest, provider: str, now_ms: int) -> WebhookRequest:
    prefix = f"/webhooks/{provider}"
    rest = req.path.split(prefix, 1)[1]
    return WebhookRequest(
        path=tuple(unquote(s) for s in rest.split("/") if s),
        query=req.query,
        headers={k.lower(): v for k, v in req.headers.items()},
        body=req.body,
        client_ip="127.0.0.1",
        now_ms=now_ms,
    )


def test_every_request_passes_the_providers_own_checks_and_means_what_was_simulated() -> None:
    """Every wire form verifies in its provider's adapter and parses to the simulated changes."""
    app = app_of(make_settings())
    target = Target.for_app(app)
    adapters = {
        name: PROVIDERS[name](table, PresenceSettings()) for name, table in app.providers().items()
    }
    _, deliveries = generate(seed=2)
    kinds: Counter[str] = Counter()
    start = clock_ms()  # a WuKongIM resend keeps the times its first delivery was given
    for d in deliveries:
        now = clock_ms()
        for style in range(4):  # every wire form of the provider
            req = build(replace(d, style=style), target, now)
            parsed = adapters[d.provider].handle(to_webhook_request(req, d.provider, now))
            if d.provider in ARRIVAL_ORDERED:
                assert_stamped_in_array_order(parsed.events, d, start)
                continue
            got = {
                (e.user, e.device, e.platform, e.online, e.time)
                for e in parsed.events
                if e.custom is None
            }
            meant = {
                (c.user, c.device, c.platform, c.online, c.time)
                for c in d.changes
                if c.how != CUSTOM_STATUS
            }
            if d.changes[0].how == ADMIN_KICK:  # Tencent takes every platform offline
                assert meant <= got and not any(e.online for e in parsed.events)
            else:
                assert got == meant, (d, style)
            if d.changes[0].how == CUSTOM_STATUS:  # the custom status set, at the event time
                c = d.changes[0]
                text = CUSTOM_TEXTS[c.time % len(CUSTOM_TEXTS)]
                got_custom = [(e.user, e.custom, e.time) for e in parsed.events]
                assert got_custom == [(c.user, text, c.time)]
        kinds.update(c.how for c in d.changes)
    assert kinds[KICKED] and kinds[CUSTOM_STATUS] and kinds[ADMIN_KICK]
    assert {d.provider for d in deliveries} == set(PROVIDER_NAMES)


def assert_stamped_in_array_order(events: list[PresenceEvent], d: Delivery, now: int) -> None:
    """A WuKongIM batch parses to its changes in order, stamped by the gateway's clock."""
    assert [(e.user, e.device, e.platform, e.online) for e in events] == [
        (c.user, c.device, c.platform, c.online) for c in d.changes
    ], d
    assert all(e.time >= now for e in events)  # not the simulator's times
    last: dict[str, int] = {}
    for e in events:  # one device's events strictly in array order
        assert e.time > last.get(e.device, 0), d
        last[e.device] = e.time


async def query(client: httpx.AsyncClient, app: AppConfig, users: list[str]) -> dict[str, Any]:
    r = await client.get(
        f"/v1/apps/{app.id}/presence",
        params=[("user", u) for u in users],
        headers={"Authorization": f"Bearer {app.api_key}"},
    )
    assert r.status_code == 200, r.text
    return {s["user"]: s for s in r.json()["presence"]}


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def assert_gateway_shows(states: dict[str, Any], expected: dict[str, list[str]]) -> None:
    for user, platforms in expected.items():
        state = states[user]
        shown = sorted(dev["platform"] for dev in state["devices"])
        assert (state["status"], shown) == ("online" if platforms else "offline", platforms), user


@pytest.mark.parametrize(
    ("providers", "backend"),
    [
        *(((p,), "memory") for p in PROVIDER_NAMES),
        (PROVIDER_NAMES, "memory"),
        pytest.param(PROVIDER_NAMES, "redis", marks=pytest.mark.redis),
    ],
    ids=[*PROVIDER_NAMES, "mixed", "mixed-redis"],
)
async def test_gateway_accepts_every_webhook_and_ends_in_the_simulated_state(
    providers: tuple[str, ...], backend: str, request: pytest.FixtureRequest
) -> None:
    """Every webhook gets its 2xx from a real gateway; the query API then matches the model."""
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    settings = make_settings(redis_url)
    app = app_of(settings)
    sim = Simulation(user_ids(10), providers, seed=7)
    results: list[Result] = []
    async with serve(settings) as gw:
        summary = await run(
            sim,
            Target.for_app(app),
            gw.url,
            Options(rate=5000, count=160, concurrency=4),
            on_result=results.append,
        )
        async with httpx.AsyncClient(base_url=gw.url) as client:
            states = await query(client, app, user_ids(10))
            metrics = (await client.get("/metrics")).text
    assert [r.status for r in results] == [STATUS_OK[r.delivery.provider] for r in results]
    assert summary.sent == len(results) >= 160 and summary.non_2xx == 0
    assert summary.undelivered == 0 and summary.network_errors == 0
    assert_gateway_shows(states, sim.expected())
    assert any(sim.expected().values())
    sent = Counter(r.delivery.provider for r in results)
    for provider in providers:
        ok = metric(metrics, "presence_webhooks_total", provider=provider, outcome="ok")
        assert ok == sent[provider] > 0
    # Re-sends and reordered events reached the store and were beaten by newer records.
    assert metric(metrics, "presence_events_ignored_total") > 0


class FlakyTransport(httpx.AsyncHTTPTransport):
    """Refuses the first ``failures`` connections, like a gateway that is still starting."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures > 0:
            self.failures -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return await super().handle_async_request(request)


class WatchingTransport(httpx.AsyncHTTPTransport):
    """Records the WuKongIM bodies in the order they went out and how many were in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        self.in_flight = self.most_in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/webhooks/wukongim" not in request.url.path:
            return await super().handle_async_request(request)
        self.bodies.append(request.content)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().handle_async_request(request)
        finally:
            self.in_flight -= 1


async def test_wukongim_batches_go_one_at_a_time_in_order_whatever_the_concurrency() -> None:
    """With 8 requests in flight, WuKongIM's batches still go one by one, in the model's order."""
    settings = make_settings()
    app = app_of(settings)
    target = Target.for_app(app)
    sim = Simulation(user_ids(8), ("wukongim", "easemob"), seed=4)
    results: list[Result] = []
    transport = WatchingTransport()
    async with serve(settings) as gw:
        await run(
            sim,
            target,
            gw.url,
            Options(rate=5000, count=200, concurrency=8),
            on_result=results.append,
            transport=transport,
        )
        async with httpx.AsyncClient(base_url=gw.url) as client:
            states = await query(client, app, user_ids(8))
    made = [r.delivery for r in results if r.delivery.provider == "wukongim"]
    assert len(made) > 50 and transport.most_in_flight == 1
    assert transport.bodies == [build(d, target, 0).body for d in sorted(made, key=lambda d: d.id)]
    assert_gateway_shows(states, sim.expected())


async def test_outage_is_reported_and_ridden_out_with_backoff() -> None:
    """Refused connections are reported, retried with backoff and lose nothing."""
    settings = make_settings()
    app = app_of(settings)
    sim = Simulation(user_ids(6), seed=3)
    warnings: list[str] = []
    results: list[Result] = []
    async with serve(settings) as gw:
        summary = await run(
            sim,
            Target.for_app(app),
            gw.url,
            Options(rate=5000, count=40, backoff_s=0.01, backoff_max_s=0.05),
            on_result=results.append,
            warn=warnings.append,
            transport=FlakyTransport(failures=4),
        )
        async with httpx.AsyncClient(base_url=gw.url) as client:
            states = await query(client, app, user_ids(6))
    assert summary.network_errors == 4 and summary.undelivered == 0 and summary.non_2xx == 0
    assert "gateway unreachable" in warnings[0] and "ConnectError" in warnings[0]
    assert sum("still unreachable" in w for w in warnings) == 3
    assert "reachable again" in warnings[-1]
    assert results[0].delivery.id == 1  # the first webhook was retried, not skipped
    assert_gateway_shows(states, sim.expected())


async def test_a_gateway_that_stays_down_ends_cleanly_when_stopped() -> None:
    """With no gateway the run reports it, retries until stopped, then returns a summary."""
    stop = asyncio.Event()
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        if len(warnings) == 3:
            stop.set()

    summary = await run(
        Simulation(user_ids(3), seed=1),
        Target(),
        f"http://127.0.0.1:{free_port()}",
        Options(rate=100, backoff_s=0.01),
        stop=stop,
        warn=warn,
    )
    assert summary.sent == 0 and summary.undelivered >= 1 and not summary.ok
    assert "gateway unreachable" in warnings[0]
    assert "not delivered" in summary.line()


async def test_cli_needs_no_flags_against_dev_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """Without secret flags the command's webhooks (all seven providers) get 2xx in dev mode."""
    async with serve(dev_settings()) as gw:
        argv = ["simulate", "--url", gw.url, "--users", "7", "--count", "60", "--rate", "1000"]
        code = await asyncio.to_thread(cli.main, [*argv, "--seed", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    lines = [line for line in out if line.startswith("#")]
    assert len(lines) >= 60
    assert all(line.rsplit(maxsplit=1)[-1] in ("200", "204") for line in lines)
    assert {p for p in PROVIDER_NAMES if any(f" {p} " in line for line in lines)} == set(
        PROVIDER_NAMES
    )
    assert out[-1].startswith("sent ") and "non-2xx: 0" in out[-1]


def test_cli_rejects_a_bad_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """A rate of zero is a usage error (exit 2) with a message, not a hang or a traceback."""
    assert cli.main(["simulate", "--rate", "0"]) == 2
    assert "--rate must be > 0" in capsys.readouterr().err


async def test_a_count_limited_run_still_sends_the_rest_of_its_last_step() -> None:
    """Stopping at --count still sends what the model already counts, so the end state matches."""
    seed = next(s for s in range(100) if len(Simulation(["alice"], ("tencent",), s).step(0)) > 1)
    first_step = Simulation(["alice"], ("tencent",), seed).step(clock_ms())
    settings = make_settings()
    app = app_of(settings)
    sim = Simulation(["alice"], ("tencent",), seed)
    results: list[Result] = []
    async with serve(settings) as gw:
        await run(sim, Target.for_app(app), gw.url, Options(count=1), on_result=results.append)
        async with httpx.AsyncClient(base_url=gw.url) as client:
            states = await query(client, app, ["alice"])
    assert [r.delivery.note for r in results] == [d.note for d in first_step]
    assert len(sim.expected()["alice"]) == 2
    assert_gateway_shows(states, sim.expected())


# -- reconciliation demo: --drop, the model's pull APIs, the gateway against the model --------

PULLED = ("tencent", "rongcloud", "openim")


def test_dropper_drops_about_its_fraction_the_same_for_a_seed() -> None:
    """A seeded Dropper drops close to its fraction, the same deliveries each time, none at 0."""
    _, deliveries = generate(seed=4, providers=PULLED, steps=1000)
    droppers = [Dropper(0.05, seed=9), Dropper(0.05, seed=9)]
    picks = [[dropper.drops(d) for d in deliveries] for dropper in droppers]
    assert picks[0] == picks[1]
    assert 0.03 < sum(picks[0]) / len(deliveries) < 0.07
    none = Dropper(0.0, seed=9)
    assert not any(none.drops(d) for d in deliveries) and none.offered == len(deliveries)


async def test_drop_leaves_the_gateway_wrong_while_the_model_keeps_the_truth() -> None:
    """--drop never sends about that share; the gateway shows the sent ones, the model all."""
    settings = make_settings()
    app = app_of(settings)
    sim = Simulation(user_ids(12), PULLED, seed=21)
    results: list[Result] = []
    dropped: list[Delivery] = []
    options = Options(rate=5000, count=400, concurrency=4, drop=0.25, drop_seed=5)
    async with serve(settings) as gw:
        summary = await run(
            sim,
            Target.for_app(app),
            gw.url,
            options,
            on_result=results.append,
            on_drop=dropped.append,
        )
        async with httpx.AsyncClient(base_url=gw.url) as client:
            states = await query(client, app, user_ids(12))
            comparison = await compare(client, app.id, app.api_key, sim.expected())
    offered = len(results) + len(dropped)
    assert summary.dropped == len(dropped) and 0.18 < len(dropped) / offered < 0.32
    assert summary.dropped_events == sum(len(d.changes) for d in dropped)
    assert "dropped on purpose (never sent): " in summary.line() and summary.ok
    sent = [r.delivery for r in results]
    shown = {u: sorted(final(sent).get(u, ())) for u in user_ids(12)}
    assert_gateway_shows(states, shown)  # exactly what was sent
    truth = {u: sorted(final(sent + dropped).get(u, ())) for u in user_ids(12)}
    assert truth == sim.expected() != shown  # the model has the dropped changes too
    wrong = {u for u in shown if bool(shown[u]) != bool(truth[u])}
    assert wrong and set(comparison.ghosts) | set(comparison.missing) == wrong
    assert comparison.wrong == len(wrong) and comparison.users == 12


def pull_clients(url: str, target: Target, **wrong: str) -> list[PullClient]:
    """The gateway's own pull-API clients for ``url``, with ``target``'s credentials."""
    fast = HttpSettings(timeout_s=2.0, attempts=1)
    tencent = TencentReconcile(
        api_base=url,
        admin=target.tencent_admin,
        secret_key=wrong.get("tencent", target.tencent_secret_key),
        rate=1000,
    )
    rong = RongCloudReconcile(api_base=url, rate=1000)
    rong_secret = wrong.get("rongcloud", target.rongcloud_app_secret)
    openim = OpenIMReconcile(
        api_base=url,
        admin_user=target.openim_admin_user,
        secret=wrong.get("openim", target.openim_secret),
        rate=1000,
    )
    return [
        TencentClient(tencent, target.tencent_sdkappid, fast),
        RongCloudClient(rong, target.rongcloud_app_key, rong_secret, fast),
        OpenIMClient(openim, fast),
    ]


def model_answer(sim: Simulation, provider: str, user: str) -> Answer:
    """What ``provider``'s client should make of the model's answer about ``user``."""
    platforms = sim.truth(provider)(user)
    if platforms is None:  # another provider's user: Tencent does not know it
        return Answer(False, known=False) if provider == "tencent" else Answer(False)
    named = () if provider == "rongcloud" else tuple(sorted(platforms))  # checkOnline: none
    return Answer(bool(platforms), named if platforms else ())


async def test_served_pull_apis_answer_from_the_live_model_through_the_real_clients() -> None:
    """Tencent, RongCloud and OpenIM answers, via gateway/reconcile clients, follow the model."""
    users = user_ids(30)
    sim = Simulation(users, PULLED, seed=8)
    now = clock_ms()
    for _ in range(300):
        sim.step(now)
        now += 50
    target = Target()
    async with serve_model(sim, target) as server:
        clients = pull_clients(server.url, target)
        try:
            for round_ in range(2):  # the second after the model moved on
                for client in clients:
                    checked = await client.check(users)
                    assert not checked.failed and not checked.errors, client.provider
                    expected = {u: model_answer(sim, client.provider, u) for u in users}
                    assert checked.answers == expected, (client.provider, round_)
                    assert any(a.online for a in checked.answers.values())
                    assert not all(a.online for a in checked.answers.values())
                for _ in range(300):
                    sim.step(now)
                    now += 50
        finally:
            for client in clients:
                await client.aclose()
        calls = pull_calls(server.fakes)
    assert calls == {"tencent": 2, "rongcloud": 60, "openim": 2}
    assert all(not fake.requests and not fake.credentials for fake in server.fakes)  # record off


@pytest.mark.parametrize("provider", PULLED)
async def test_served_pull_apis_refuse_wrong_credentials(provider: str) -> None:
    """A wrong Tencent key, RongCloud secret or OpenIM secret gets no answer, never 'offline'."""
    sim = Simulation(user_ids(9), PULLED, seed=2)
    sim.step(clock_ms())
    target = Target()
    async with serve_model(sim, target) as server:
        clients = pull_clients(server.url, target, **{provider: "not-the-secret"})
        try:
            (client,) = [c for c in clients if c.provider == provider]
            checked = await client.check(user_ids(9))
        finally:
            for c in clients:
                await c.aclose()
    assert not checked.answers and sorted(checked.failed) == sorted(user_ids(9))
    assert checked.errors and not any(e.retryable for e in checked.errors)


def sim_args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["simulate", *argv])


async def test_cli_serves_the_pull_apis_checks_and_reports_the_drops(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """simulate --drop --serve-pull-api --check-every: the URLs, checks, drops and calls said."""
    port = free_port()
    async with serve(dev_settings()) as gw:
        args = sim_args(
            *("--url", gw.url, "--provider", "tencent", "--users", "10", "--count", "60"),
            *("--rate", "1000", "--seed", "4", "--drop", "0.2", "--quiet"),
            *("--serve-pull-api", str(port), "--check-every", "0.05", "--linger", "2"),
        )
        task = asyncio.create_task(command(args, asyncio.Event()))
        (client, *others) = pull_clients(f"http://127.0.0.1:{port}", Target())
        try:
            async with asyncio.timeout(20):
                while not (checked := await client.check(user_ids(10))).answers:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # still starting (polling against a deadline)
        finally:
            for c in (client, *others):
                await c.aclose()
        assert set(checked.answers) == set(user_ids(10))
        assert all(a.known for a in checked.answers.values())  # all of them Tencent's users
        async with asyncio.timeout(20):
            assert await task == 0  # it stops by itself, --linger after the last webhook
    captured = capsys.readouterr()
    assert f'api_base = "http://127.0.0.1:{port}"' in captured.err
    assert "all webhooks sent; still serving the pull APIs for 2 s" in captured.err
    out = captured.out.splitlines()
    checks = [line for line in out if line.startswith("check: ")]
    assert checks and all(" of 10 users shown wrongly " in line for line in checks)
    summary = next(line for line in out if line.startswith("sent "))
    assert "dropped on purpose (never sent): " in summary
    assert out[-1].startswith("pull APIs answered: tencent ") and "tencent 0 " not in out[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--drop", "1.5"], "--drop must be a fraction within [0, 1]"),
        (["--serve-pull-api", "70000"], "--serve-pull-api must be a port"),
        (["--linger", "3"], "--linger needs --serve-pull-api or --check-every"),
        (["--check-every", "0"], "--check-every must be > 0"),
    ],
)
def test_cli_rejects_bad_reconciliation_demo_flags(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Out-of-range demo flags are usage errors (exit 2) with a message naming the flag."""
    assert cli.main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err


async def test_cli_says_when_the_pull_api_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    """A pull-API port already in use is exit 2 with a message, not a traceback."""
    sim = Simulation(["alice"], ("tencent",), seed=1)
    async with serve_model(sim, Target()) as server:
        args = sim_args("--serve-pull-api", str(server.port), "--count", "1")
        assert await command(args, asyncio.Event()) == 2
    assert f"cannot serve the pull APIs on 127.0.0.1:{server.port}" in capsys.readouterr().err


async def test_watch_all_watches_every_user_in_connections_of_max_watch() -> None:
    """--watch-all: 25 users, max_watch 10 → 3 connections watching all 25, closed on stop."""
    base = dev_settings()
    app = msgspec.structs.replace(base.apps["demo"], max_watch=10)
    settings = msgspec.structs.replace(base, apps={"demo": app})
    warnings: list[str] = []
    stop = asyncio.Event()
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        task = asyncio.create_task(watch_all(gw.url, "demo", user_ids(25), stop, warnings.append))

        async def gauges() -> tuple[float, float]:
            text = (await client.get("/metrics")).text
            return metric(text, "presence_connections"), metric(text, "presence_watched_users")

        async with asyncio.timeout(10):
            while await gauges() != (3, 25):  # noqa: ASYNC110 (polling against a deadline)
                await asyncio.sleep(0.02)
        stop.set()
        async with asyncio.timeout(10):
            await task
            while (await gauges())[0] != 0:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    assert warnings == []


async def test_watch_all_says_when_the_app_gives_no_dev_tokens() -> None:
    """Without dev_tokens on the app, --watch-all warns once and ends; the run goes on."""
    settings = make_settings()
    app = app_of(settings)
    app = msgspec.structs.replace(app, dev_tokens=False)
    settings = msgspec.structs.replace(settings, apps={app.id: app})
    warnings: list[str] = []
    async with serve(settings) as gw:
        await watch_all(gw.url, app.id, ["alice"], asyncio.Event(), warnings.append)
    assert warnings == ["--watch-all: no dev token (HTTP 404): the app needs dev_tokens"]
