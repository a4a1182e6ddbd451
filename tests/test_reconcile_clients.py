"""Pull-API clients (SPEC section 8) against real loopback fakes of the three providers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
import pytest

from gateway.reconcile import usersig
from gateway.reconcile.base import (
    Answer,
    CredentialsExpired,
    ProviderError,
    PullClient,
    PullError,
    RateLimited,
    backoff_s,
)
from gateway.reconcile.config import OpenIMReconcile, RongCloudReconcile, TencentReconcile
from gateway.reconcile.http import HttpSettings, TokenBucket
from gateway.reconcile.openim import OpenIMClient
from gateway.reconcile.rongcloud import RongCloudClient
from gateway.reconcile.tencent import TencentClient, parse_answer
from tests.pullapi import FakeOpenIM, FakePullApi, FakeRongCloud, FakeServer, FakeTencent, serve

FAST = HttpSettings(timeout_s=0.5, attempts=3, backoff_base_s=0.05, backoff_cap_s=0.2)
F = TypeVar("F", bound=FakePullApi)
VECTOR_KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """One loopback server with a fake of each provider."""
    async with serve(FakeTencent(), FakeRongCloud(), FakeOpenIM()) as running:
        yield running


def fake_of(server: FakeServer, kind: type[F]) -> F:
    return next(f for f in server.fakes if isinstance(f, kind))


def tencent_client(
    server: FakeServer, settings: HttpSettings = FAST, **options: Any
) -> TencentClient:
    fake = fake_of(server, FakeTencent)
    key = options.pop("secret_key", fake.secret_key)
    rate = options.pop("rate", 1000.0)
    config = TencentReconcile(api_base=server.url, admin=fake.admin, secret_key=key, rate=rate)
    return TencentClient(config, fake.sdkappid, settings, **options)


def rongcloud_client(
    server: FakeServer,
    settings: HttpSettings = FAST,
    *,
    secret: str | None = None,
    rate: float = 1000.0,
) -> RongCloudClient:
    fake = fake_of(server, FakeRongCloud)
    config = RongCloudReconcile(api_base=server.url, rate=rate)
    return RongCloudClient(config, fake.app_key, secret or fake.app_secret, settings)


def openim_client(
    server: FakeServer, settings: HttpSettings = FAST, *, secret: str | None = None, **options: Any
) -> OpenIMClient:
    fake = fake_of(server, FakeOpenIM)
    config = OpenIMReconcile(
        api_base=server.url + "/",
        admin_user=fake.admin_user,
        secret=secret or fake.secret,
        rate=1000,
    )
    return OpenIMClient(config, settings, **options)


# -- Tencent admin UserSig ----------------------------------------------------------------


def test_usersig_matches_the_vector() -> None:
    """The generated UserSig decodes to the document of the PROVIDERS.md vector."""
    sig = usersig.generate(VECTOR_KEY, 1400000000, "xiaojun", 15552000, 1700000000)
    assert set(sig) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-_")
    assert usersig.decode(sig) == {
        "TLS.ver": "2.0",
        "TLS.identifier": "xiaojun",
        "TLS.sdkappid": 1400000000,
        "TLS.expire": 15552000,
        "TLS.time": 1700000000,
        "TLS.sig": "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4=",
    }


@pytest.mark.parametrize("bad", ["", "not base64 !", "eJyrVgrx", "AAAA", "eJwDAAAAAAE_"])
def test_usersig_decode_refuses_garbage(bad: str) -> None:
    """decode raises ValueError (never another exception) for what is not a UserSig."""
    with pytest.raises(ValueError):
        usersig.decode(bad)


def test_admin_usersig_cached_then_renewed_before_expiry() -> None:
    """The admin UserSig is reused while fresh and remade once 90 % of its life has passed."""
    now = [1_700_000_000.0]
    sigs = usersig.AdminUserSig(
        VECTOR_KEY, 1400000000, "admin", expire_s=1000, clock=lambda: now[0]
    )
    first = sigs.get()
    now[0] += 899
    assert sigs.get() == first
    now[0] += 2
    second = sigs.get()
    assert second != first and sigs.renewals == 2
    assert usersig.decode(second)["TLS.time"] == 1_700_000_901
    assert VECTOR_KEY not in repr(sigs) and second not in repr(sigs)


# -- Tencent ------------------------------------------------------------------------------


async def test_tencent_answers_online_offline_unknown_pushonline(server: FakeServer) -> None:
    """Online users come with their platforms; offline, PushOnline and 70107 are offline."""
    fake = fake_of(server, FakeTencent)
    fake.online("alice", "ios", "web")
    fake.online("bare")  # online, no Detail
    fake.offline("bob")
    fake.online("pusher", "android")
    fake.push_online.add("pusher")
    client = tencent_client(server)
    try:
        answers = await client.query_online_status(["alice", "bare", "bob", "pusher", "ghost"])
    finally:
        await client.aclose()
    assert answers == {
        "alice": Answer(True, ("ios", "web")),
        "bare": Answer(True, ()),
        "bob": Answer(False),
        "pusher": Answer(False),
        "ghost": Answer(False, known=False),
    }


async def test_tencent_legacy_state_field_upper_case(server: FakeServer) -> None:
    """The legacy ``State`` field and upper-case values are read like ``Status``."""
    fake = fake_of(server, FakeTencent)
    fake.legacy = True
    fake.online("alice", "mac")
    fake.offline("bob")
    client = tencent_client(server)
    try:
        answers = await client.query_online_status(["alice", "bob"])
    finally:
        await client.aclose()
    assert answers == {"alice": Answer(True, ("mac",)), "bob": Answer(False)}


def test_tencent_parse_platform_names_and_field_case() -> None:
    """iPhone/IPhone → ios and other Detail names normalize; key and value case is ignored."""
    body = {
        "actionstatus": "OK",
        "errorcode": 0,
        "queryresult": [
            {
                "to_account": "a",
                "STATUS": "online",
                "detail": [
                    {"Platform": "IPhone", "Status": "Online"},
                    {"Platform": "iPhone", "Status": "Online"},
                    {"Platform": "Android", "Status": "PushOnline"},
                    {"Platform": "Windows"},
                    {"Platform": "Martian", "Status": "Online"},
                ],
            },
            {"To_Account": "b", "State": "PushOnline"},
            {"To_Account": "c", "Status": "Sleeping"},  # unknown value: no answer, not offline
            {"To_Account": "stranger", "Status": "Online"},  # not asked about
        ],
        "ErrorList": [{"To_Account": "d", "ErrorCode": 70107}, {"To_Account": "e", "ErrorCode": 1}],
    }
    answers = parse_answer(body, ["a", "b", "c", "d", "e"])
    assert answers == {
        "a": Answer(True, ("ios", "unknown", "windows")),
        "b": Answer(False),
        "d": Answer(False, known=False),
    }


@pytest.mark.parametrize(
    ("code", "kind"),
    [(70001, CredentialsExpired), (60007, RateLimited), (60011, RateLimited),
     (60018, RateLimited), (60019, RateLimited), (70009, ProviderError)],
)  # fmt: skip
def test_tencent_error_codes(code: int, kind: type[PullError]) -> None:
    """Each documented ErrorCode raises its kind (never answers offline)."""
    with pytest.raises(kind) as caught:
        parse_answer({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": "x"}, ["a"])
    assert caught.value.retryable is (code != 70009)


async def test_tencent_batches_of_500(server: FakeServer) -> None:
    """501 users take two calls (500 + 1), and every user is answered."""
    fake = fake_of(server, FakeTencent)
    users = [f"u{i}" for i in range(501)]
    for user in users[::2]:
        fake.online(user, "android")
    client = tencent_client(server)
    try:
        checked = await client.check([*users, "u0"])  # a repeat is asked once
    finally:
        await client.aclose()
    assert sorted(len(seen.users) for seen in fake.queries) == [1, 500]
    assert not checked.failed and len(checked.answers) == 501
    assert checked.answers["u0"] == Answer(True, ("android",))
    assert checked.answers["u1"] == Answer(False, known=False)


async def test_tencent_expired_usersig_renewed_and_retried_once(server: FakeServer) -> None:
    """70001 → a new UserSig and one more call; a second 70001 surfaces CredentialsExpired."""
    fake = fake_of(server, FakeTencent)
    fake.online("alice", "web")
    client = tencent_client(server)
    try:
        fake.faults = ["expired"]
        assert await client.query_online_status(["alice"]) == {"alice": Answer(True, ("web",))}
        assert len(fake.queries) == 2 and client.usersig.renewals == 2
        fake.faults = ["expired", "expired"]
        with pytest.raises(CredentialsExpired):
            await client.query_online_status(["alice"])
        assert len(fake.queries) == 4
    finally:
        await client.aclose()


async def test_tencent_fake_checks_the_usersig(server: FakeServer) -> None:
    """A UserSig past its expiry is refused (70001, renewed once) and a wrong key is 70009."""
    stale = tencent_client(server, usersig_expire_s=3600, clock=lambda: time.time() - 7200)
    wrong = tencent_client(server, secret_key="0" * 64)
    fake = fake_of(server, FakeTencent)
    try:
        with pytest.raises(CredentialsExpired):
            await stale.query_online_status(["alice"])
        assert len(fake.queries) == 2
        with pytest.raises(ProviderError, match="70009") as caught:
            await wrong.query_online_status(["alice"])
        assert not caught.value.retryable and len(fake.queries) == 3  # not retried
    finally:
        await stale.aclose()
        await wrong.aclose()


@pytest.mark.parametrize("fault", ["ratelimit", "http429"])
async def test_tencent_rate_limited_retried_then_surfaced(server: FakeServer, fault: str) -> None:
    """A rate-limit answer is retried with backoff; when it persists, RateLimited surfaces."""
    fake = fake_of(server, FakeTencent)
    fake.offline("bob")
    client = tencent_client(server)
    try:
        fake.faults = [fault]
        assert await client.query_online_status(["bob"]) == {"bob": Answer(False)}
        fake.faults = [fault] * 3
        with pytest.raises(RateLimited) as caught:
            await client.query_online_status(["bob"])
    finally:
        await client.aclose()
    assert len(fake.queries) == 2 + 3
    assert caught.value.retry_after_s is not None and 0 < caught.value.retry_after_s <= 0.2


# -- every provider: failures ------------------------------------------------------------

Make = Callable[[FakeServer, HttpSettings], PullClient]
CLIENTS: dict[str, tuple[type[FakePullApi], Make]] = {
    "tencent": (FakeTencent, tencent_client),
    "rongcloud": (FakeRongCloud, rongcloud_client),
    "openim": (FakeOpenIM, openim_client),
}


@pytest.mark.parametrize("provider", sorted(CLIENTS))
async def test_errors_retried_with_backoff_then_surfaced(server: FakeServer, provider: str) -> None:
    """HTTP 500s are retried after growing delays; when they persist the call raises."""
    kind, make = CLIENTS[provider]
    fake = fake_of(server, kind)
    fake.online("alice", "web")
    client = make(server, FAST)
    try:
        fake.faults = ["http500", "http500"]
        checked = await client.check(["alice"])
        assert checked.answers["alice"].online and not checked.failed
        gaps = [b.at - a.at for a, b in zip(fake.queries, fake.queries[1:], strict=False)]
        assert gaps[0] >= 0.025 and gaps[1] >= 0.05  # FAST: base 0.05, equal jitter
        fake.faults = ["http500"] * 3
        checked = await client.check(["alice"])
    finally:
        await client.aclose()
    assert len(fake.queries) == 3 + 3
    assert checked.answers == {} and checked.failed == ["alice"]  # not "offline"
    assert [type(e) for e in checked.errors] == [ProviderError]
    assert "HTTP 500" in str(checked.errors[0])


@pytest.mark.parametrize("provider", sorted(CLIENTS))
async def test_timeouts_retried_then_surfaced(provider: str) -> None:
    """A provider that never answers times out, is retried, and surfaces a ProviderError."""
    kind, make = CLIENTS[provider]
    fake = kind()
    settings = HttpSettings(timeout_s=0.2, attempts=2, backoff_base_s=0.01, backoff_cap_s=0.02)
    async with serve(fake) as running:
        client = make(running, settings)
        fake.online("alice", "ios")
        try:
            fake.faults = ["stall"]
            assert (await client.check(["alice"])).answers["alice"].online
            fake.faults = ["stall", "stall"]
            checked = await client.check(["alice"])
        finally:
            await client.aclose()
    assert checked.failed == ["alice"] and "timed out" in str(checked.errors[0])
    assert len(fake.queries) == 2 + 2


# -- RongCloud ----------------------------------------------------------------------------


async def test_rongcloud_answers(server: FakeServer) -> None:
    """checkOnline: online and offline users; a user RongCloud does not know is offline."""
    fake = fake_of(server, FakeRongCloud)
    fake.online("alice", "ios")
    fake.offline("bob")
    client = rongcloud_client(server)
    try:
        checked = await client.check(["alice", "bob", "ghost"])
    finally:
        await client.aclose()
    assert checked.answers == {"alice": Answer(True), "bob": Answer(False), "ghost": Answer(False)}
    assert sorted(seen.users for seen in fake.queries) == [("alice",), ("bob",), ("ghost",)]


async def test_rongcloud_wrong_secret_refused_not_retried(server: FakeServer) -> None:
    """A wrong app secret gets RongCloud's 1004 (HTTP 401): an error at once, not offline."""
    fake = fake_of(server, FakeRongCloud)
    client = rongcloud_client(server, secret="wrong-secret")
    try:
        with pytest.raises(ProviderError, match="code 1004") as caught:
            await client.check_online("alice")
    finally:
        await client.aclose()
    assert not caught.value.retryable and len(fake.queries) == 1


async def test_rongcloud_rate_limit_code_retried(server: FakeServer) -> None:
    """RongCloud's 1008 (HTTP 429) is retried, then surfaces as RateLimited."""
    fake = fake_of(server, FakeRongCloud)
    fake.online("alice", "web")
    client = rongcloud_client(server)
    try:
        fake.faults = ["ratelimit"]
        assert await client.check_online("alice") == Answer(True)
        fake.faults = ["ratelimit"] * 3
        with pytest.raises(RateLimited):
            await client.check_online("alice")
    finally:
        await client.aclose()
    assert len(fake.queries) == 5


async def test_rate_limit_shared_by_all_calls(server: FakeServer) -> None:
    """At rate=10 the fake never sees more than rate + burst (+1 for jitter) in any 1 s window,
    even from two concurrent checks."""
    fake = fake_of(server, FakeRongCloud)
    rate = 10.0
    settings = HttpSettings(timeout_s=2, concurrency=8)
    client = rongcloud_client(server, settings, rate=rate)
    try:
        first, second = await asyncio.gather(
            client.check([f"a{i}" for i in range(8)]), client.check([f"b{i}" for i in range(8)])
        )
    finally:
        await client.aclose()
    assert not first.failed and not second.failed
    times = sorted(seen.at for seen in fake.queries)
    assert len(times) == 16
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= rate + settings.burst + 1


async def test_token_bucket_spaces_takes() -> None:
    """A bucket of rate 50 and burst 1 hands out no more than 1 + 50 t tokens in t seconds."""
    bucket = TokenBucket(50.0, 1.0)
    start = time.monotonic()
    for _ in range(11):
        await bucket.take()
    assert time.monotonic() - start >= 10 / 50 * 0.95


def test_backoff_is_capped_and_jittered() -> None:
    """Delays grow from base, stay within [ceiling/2, ceiling], and never pass the cap."""
    for attempt in range(40):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delay = backoff_s(attempt, 0.1, 2.0)
        assert ceiling / 2 <= delay <= ceiling


# -- OpenIM -------------------------------------------------------------------------------


async def test_openim_answers_trust_status(server: FakeServer) -> None:
    """status is trusted (a ghost detail on status 0 is offline); the detail names platforms."""
    fake = fake_of(server, FakeOpenIM)
    fake.online("alice", "ios", "web")
    fake.online("bare")  # online, no detail (its connection is on another node)
    fake.offline("bob")
    fake.ghost_detail["carol"] = [2]
    client = openim_client(server)
    try:
        answers = await client.get_users_online_status(["alice", "bare", "bob", "carol", "ghost"])
    finally:
        await client.aclose()
    assert answers == {
        "alice": Answer(True, ("ios", "web")),
        "bare": Answer(True, ()),
        "bob": Answer(False),
        "carol": Answer(False),
        "ghost": Answer(False),
    }


async def test_openim_batches_of_100_one_token(server: FakeServer) -> None:
    """101 users take two calls (100 + 1) with one admin token, reused on the next check."""
    fake = fake_of(server, FakeOpenIM)
    users = [f"u{i}" for i in range(101)]
    fake.online("u100", "android")
    client = openim_client(server)
    try:
        checked = await client.check(users)
        await client.check(["u1"])
    finally:
        await client.aclose()
    assert sorted(len(seen.users) for seen in fake.queries) == [1, 1, 100]
    assert len({seen.peer for seen in fake.requests}) <= 2  # connections reused
    assert len(checked.answers) == 101 and not checked.failed
    assert checked.answers["u100"] == Answer(True, ("android",))
    assert len(fake.token_requests) == 1


async def test_openim_expired_token_renewed_and_retried_once(server: FakeServer) -> None:
    """errCode 1501 → a new admin token and one more call; twice in a row surfaces."""
    fake = fake_of(server, FakeOpenIM)
    fake.online("alice", "web")
    client = openim_client(server)
    try:
        await client.check(["alice"])
        fake.expire_credentials()
        answers = await client.get_users_online_status(["alice"])
        assert answers == {"alice": Answer(True, ("web",))}
        assert len(fake.token_requests) == 2 and len(fake.queries) == 3
        fake.faults = ["expired", "expired"]
        with pytest.raises(CredentialsExpired):
            await client.get_users_online_status(["alice"])
        assert len(fake.token_requests) == 3 and len(fake.queries) == 5
    finally:
        await client.aclose()


async def test_openim_token_renewed_before_it_expires(server: FakeServer) -> None:
    """A token is replaced once 90 % of expireTimeSeconds has passed, before any refusal."""
    fake = fake_of(server, FakeOpenIM)
    fake.token_ttl_s = 1000
    now = [0.0]
    client = openim_client(server, clock=lambda: now[0])
    try:
        await client.check(["a"])
        now[0] = 899.0
        await client.check(["a"])
        assert len(fake.token_requests) == 1
        now[0] = 901.0
        await client.check(["a"])
    finally:
        await client.aclose()
    assert len(fake.token_requests) == 2 and len(fake.queries) == 3  # no refused call


async def test_openim_wrong_secret_refused(server: FakeServer) -> None:
    """A wrong secret gets errCode 1002 on get_admin_token: an error at once, not offline."""
    fake = fake_of(server, FakeOpenIM)
    client = openim_client(server, secret="wrong")
    try:
        checked = await client.check(["alice"])
    finally:
        await client.aclose()
    assert checked.failed == ["alice"] and "errCode 1002" in str(checked.errors[0])
    assert len(fake.token_requests) == 1 and not fake.queries


# -- credentials never logged -------------------------------------------------------------


async def test_credentials_never_logged(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No log record (httpx's and httpcore's included) and no error holds a credential."""
    caplog.set_level(logging.DEBUG)
    tencent, rong, openim = (
        fake_of(server, FakeTencent),
        fake_of(server, FakeRongCloud),
        fake_of(server, FakeOpenIM),
    )
    clients: list[PullClient] = [
        tencent_client(server),
        rongcloud_client(server),
        openim_client(server),
    ]
    errors: list[str] = []
    try:
        for fake in (tencent, rong, openim):
            fake.faults = ["http500", "expired", "ratelimit"]
        for client in clients:
            for _ in range(3):
                checked = await client.check(["alice", "bob"])
                errors += [str(e) for e in checked.errors]
        bad = rongcloud_client(server, secret="wrong-secret-value")
        errors += [str(e) for e in (await bad.check(["alice"])).errors]
        await bad.aclose()
    finally:
        for client in clients:
            await client.aclose()
    secrets = {
        tencent.secret_key, rong.app_secret, openim.secret, "wrong-secret-value",
        *tencent.credentials, *rong.credentials, *openim.credentials,
    }  # fmt: skip
    secrets.discard("")
    assert len(tencent.credentials) >= 1 and len(openim.tokens) >= 2
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # httpx did log
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
    ) + "\n".join(errors)
    for secret in secrets:
        assert secret not in logged and quote(secret, safe="") not in logged
    assert "usersig=" not in logged.lower()  # no URL with its query


# -- config tables ------------------------------------------------------------------------


def test_reconcile_config_tables() -> None:
    """Defaults, validation of interval_s / rate / api_base, unknown keys and hidden secrets."""
    t = msgspec.convert({"secret_key": "k3y"}, TencentReconcile)
    assert (t.api_base, t.admin, t.interval_s, t.rate) == (
        "https://console.tim.qq.com", "administrator", 300.0, 100.0
    )  # fmt: skip
    o = msgspec.convert({"api_base": "http://openim:10002/", "secret": "s3cret"}, OpenIMReconcile)
    assert o.admin_user == "imAdmin" and o.base_url == "http://openim:10002"
    assert "s3cret" not in repr(o) and "k3y" not in repr(t)
    r = msgspec.convert({}, RongCloudReconcile)
    assert r.api_base == "https://api.rong-api.com" and r.rate == 50
    for bad in ({"interval_s": 0}, {"rate": 0}, {"extra": 1}, {"interval_s": "5"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"api_base": "http://x", "secret": "s", **bad}, OpenIMReconcile)
    with pytest.raises(msgspec.ValidationError, match="secret"):
        msgspec.convert({"api_base": "http://x"}, OpenIMReconcile)
    for url in ("ftp://x", "http://", "http://x/?a=1", "https://u:p@x"):
        with pytest.raises(ValueError, match="api_base"):
            msgspec.convert({"api_base": url}, RongCloudReconcile).validate()
    msgspec.convert({"api_base": "https://x:8443/prefix"}, RongCloudReconcile).validate()
