"""RedisStore beyond the shared contract: key layout, expiry, script cache, outages."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.backends.base import PresenceSettings
from gateway.backends.redis.calls import MAX_USERS_PER_CALL
from gateway.backends.redis.codec import decode_record, encode_record
from gateway.backends.redis.keys import parse_channel, user_channel, user_key
from gateway.backends.redis.lane import command
from gateway.backends.redis.store import RedisStore
from gateway.errors import StoreUnavailable
from gateway.model import DeviceRecord, DeviceView, PresenceEvent, UserState, state_encoder
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.redis

NOW = 1_763_700_000_000
APP_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
USER_IDS = st.text(min_size=1, max_size=256)


def on(user: str, device: str, time: int, platform: str = "ios") -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform=platform, online=True, time=time)


def off(user: str, device: str, time: int, platform: str = "ios") -> PresenceEvent:
    return PresenceEvent(user=user, device=device, platform=platform, online=False, time=time)


@given(app=APP_IDS, user=USER_IDS)
def test_key_and_channel_share_slot_and_parse_back(app: str, user: str) -> None:
    """Any user id (braces, slashes, percent signs) keeps key and channel on one slot."""
    key, channel = user_key("pg", app, user), user_channel("pg", app, user)
    assert key_slot(key.encode()) == key_slot(channel.encode())
    assert key.count("{") == 1 and key.count("}") == 1  # the whole tag is the hash tag
    assert parse_channel("pg", channel) == (app, user)
    assert parse_channel("pg", channel.encode()) == (app, user)


def test_parse_channel_rejects_foreign_channels() -> None:
    """Channels of another prefix or shape are not mistaken for user channels."""
    assert parse_channel("pg", user_channel("other", "a", "b")) is None
    assert parse_channel("pg", "pg:c:{noslash}") is None
    assert parse_channel("pg", "pg:u:{a/b}") is None


TIMES = st.lists(st.integers(0, 2**53), max_size=40, unique=True).map(lambda t: tuple(sorted(t)))
RECORDS = st.builds(
    DeviceRecord,
    time=st.integers(0, 2**53),
    online=st.booleans(),
    platform=st.text(),
    ons=TIMES,
    offs=TIMES,
    base=st.none() | st.integers(0, 2**53),
)


@given(record=RECORDS)
def test_record_encoding_round_trips(record: DeviceRecord) -> None:
    """Any record, whatever its platform holds (commas, semicolons), decodes to itself."""
    assert decode_record(encode_record(record).encode()) == record


def test_prefix_with_braces_refused() -> None:
    """A key prefix holding a brace would break the hash tag, so it is refused."""
    with pytest.raises(ValueError, match="prefix"):
        RedisStore(Redis(), settings=PresenceSettings(), prefix="p{x}")


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    settings = PresenceSettings(session_retention_s=100, max_event_age_s=50)
    made = RedisStore.from_url(
        redis_url, cluster=False, settings=settings, prefix=f"t{uuid.uuid4().hex[:12]}"
    )
    yield made
    await made.close()


async def test_key_expires_only_when_all_offline(store: RedisStore, raw: Redis) -> None:
    """The user's key has no TTL while a device is online, last-seen retention once offline."""
    key = store.key("app", "bob")
    await store.apply("app", [on("bob", "d1", NOW)], NOW)
    assert await raw.pttl(key) == -1
    await store.apply("app", [off("bob", "d1", NOW + 1)], NOW + 1)
    retention = store.settings.last_seen_retention_s * 1000  # counted from the last-seen time
    assert retention - 10_000 < await raw.pttl(key) <= retention
    await store.apply("app", [on("bob", "d2", NOW + 2)], NOW + 2)
    assert await raw.pttl(key) == -1


async def test_record_layout(store: RedisStore, raw: Redis) -> None:
    """Device records and the published state live in one hash, compactly encoded."""
    batch = [on("bob", "d1", NOW - 5), off("bob", "d1", NOW - 4), on("bob", "d1", NOW)]
    batch += [on("bob", "d1", NOW + 3), off("bob", "d2", NOW, "web")]
    result = await store.apply("app", batch, NOW)
    fields = await raw.hgetall(store.key("app", "bob"))
    assert fields[b"d:d1"] == b"%d,+,,%d;%d;%d,%d,ios" % (NOW + 3, NOW - 5, NOW, NOW + 3, NOW - 4)
    assert fields[b"d:d2"] == b"%d,-,,,%d,web" % (NOW, NOW)
    assert fields[b"v"] == b"%d" % NOW
    assert fields[b"s"] == (
        b'{"user":"bob","status":"online","since":%d,' % NOW
        + b'"devices":[{"platform":"ios","since":%d}],"v":%d,"custom":null}' % (NOW, NOW)
    )
    assert result.published[0].v == NOW


async def test_platform_with_separators_survives_the_script(store: RedisStore) -> None:
    """The platform is the record's last field: commas and semicolons in it parse back."""
    odd = "we,ird;pl,at"
    batch = [on("bob", "d1", NOW - 2, odd), on("bob", "d1", NOW, odd), off("bob", "d2", NOW, odd)]
    await store.apply("app", batch, NOW)
    again = await store.apply("app", [on("bob", "d1", NOW + 1, odd)], NOW + 1)
    assert (again.applied, again.published) == (1, [])
    assert await store.records("app", "bob") == {
        "d1": DeviceRecord(NOW + 1, True, odd, (NOW - 2, NOW, NOW + 1)),
        "d2": DeviceRecord(NOW, False, odd, (), (NOW,)),
    }
    assert (await store.get("app", ["bob"]))[0].devices == [DeviceView(odd, NOW - 2)]


async def test_reads_records_of_the_older_form(store: RedisStore, raw: Redis) -> None:
    """Records of the older forms ("time,online,platform", "time,online,off,ons,platform")
    are read and merged."""
    key = store.key("app", "bob")
    d3 = b"%d,1,%d,%d;%d,mac" % (NOW, NOW - 8, NOW - 7, NOW)
    await raw.hset(
        key, mapping={"d:d1": b"%d,1,ios" % NOW, "d:d2": b"%d,0,web" % (NOW - 9), "d:d3": d3}
    )
    assert await store.records("app", "bob") == {
        "d1": DeviceRecord(NOW, True, "ios", (NOW,)),
        "d2": DeviceRecord(NOW - 9, False, "web", (), (NOW - 9,)),
        "d3": DeviceRecord(NOW, True, "mac", (NOW - 7, NOW), (NOW - 8,)),
    }
    duplicate = await store.apply("app", [on("bob", "d1", NOW), off("bob", "d2", NOW - 9)], NOW)
    assert (duplicate.applied, duplicate.ignored) == (0, 2)
    result = await store.apply("app", [on("bob", "d1", NOW + 5)], NOW + 5)
    devices = [DeviceView("ios", NOW), DeviceView("mac", NOW - 7)]
    assert result.published == [
        UserState("bob", "online", NOW - 7, devices, NOW + 5)
    ]  # d1's since: the online of the old record, not the repeat
    assert (await raw.hget(key, "d:d1")) == b"%d,+,,%d;%d,,ios" % (NOW + 5, NOW, NOW + 5)


async def test_reloads_flushed_script(store: RedisStore, raw: Redis) -> None:
    """After the server lost its script cache (NOSCRIPT), apply loads it and succeeds."""
    await store.apply("app", [on("bob", "d1", NOW)], NOW)
    await raw.script_flush()
    result = await store.apply("app", [off("bob", "d1", NOW + 1), on("amy", "d", NOW)], NOW + 1)
    assert result.applied == 2 and len(result.published) == 2


async def test_unreachable_url_raises_store_unavailable() -> None:
    """A store pointed at a closed port raises StoreUnavailable from every method."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore.from_url(url, cluster=False, settings=PresenceSettings())
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.apply("app", [on("bob", "d1", NOW)], NOW)
    with pytest.raises(StoreUnavailable):
        await store.get("app", ["bob"])
    with pytest.raises(StoreUnavailable):
        await store.records("app", "bob")
    await store.close()


async def test_apply_fails_then_recovers_across_restart(redis_proc: RedisServer) -> None:
    """While Redis is down apply and ping raise StoreUnavailable; after restart apply works."""
    store = RedisStore.from_url(redis_proc.url, cluster=False, settings=PresenceSettings())
    try:
        assert (await store.apply("app", [on("bob", "d1", NOW)], NOW)).applied == 1
        await redis_proc.astop()
        with pytest.raises(StoreUnavailable):
            await store.apply("app", [off("bob", "d1", NOW + 1)], NOW + 1)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.get("app", ["bob"])
        await redis_proc.astart()  # the data is gone: no persistence in tests
        await store.ping()
        result = await store.apply("app", [off("bob", "d1", NOW + 1)], NOW + 1)
        assert result.published == [UserState("bob", "offline", NOW + 1, [], NOW + 1)]
    finally:
        await store.close()


async def test_hung_server_times_out(redis_proc: RedisServer) -> None:
    """A server that stops answering (SIGSTOP) fails a call within the socket timeout."""
    store = RedisStore.from_url(
        redis_proc.url, cluster=False, settings=PresenceSettings(), socket_timeout=0.3
    )
    try:
        await store.ping()
        assert redis_proc.proc is not None
        redis_proc.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await store.apply("app", [on("bob", "d1", NOW)], NOW)
            assert time.monotonic() - started < 1.5
        finally:
            redis_proc.proc.send_signal(signal.SIGCONT)
        assert (await store.apply("app", [on("bob", "d1", NOW)], NOW)).applied == 1
    finally:
        await store.close()


async def evalsha_calls(raw: Redis) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_batch_of_users_is_one_script_call(store: RedisStore, raw: Redis) -> None:
    """On standalone Redis a webhook's users go in one EVALSHA (up to MAX_USERS_PER_CALL)."""
    before = await evalsha_calls(raw)
    users = [f"u{i}" for i in range(MAX_USERS_PER_CALL)]
    result = await store.apply("app", [on(u, "d", NOW - i) for i, u in enumerate(users)], NOW)
    assert result.applied == len(users) and len(result.published) == len(users)
    assert await evalsha_calls(raw) == before + 1
    more = [on(f"v{i}", "d", NOW) for i in range(MAX_USERS_PER_CALL + 1)]
    await store.apply("app", more, NOW)
    assert await evalsha_calls(raw) == before + 3  # split, one write still


async def test_cancelled_call_leaves_later_replies_in_step(store: RedisStore) -> None:
    """A caller cancelled while its reply is due does not shift the replies of later calls."""
    await store.apply("app", [on("amy", "d", NOW), on("bob", "d", NOW - 1)], NOW)
    for _ in range(20):
        task = asyncio.create_task(store.get("app", ["amy"]))
        await asyncio.sleep(0)  # sent, not answered yet
        task.cancel()
        [bob] = await store.get("app", ["bob"])
        assert bob.since == NOW - 1


async def test_unexpected_client_error_is_store_unavailable(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-Redis exception from below the store (a redis-py bug) surfaces as StoreUnavailable."""

    async def broken(*args: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    monkeypatch.setattr(store._wire, "run", broken)
    with pytest.raises(StoreUnavailable, match="AttributeError"):
        await store.get("app", ["bob"])
    with pytest.raises(StoreUnavailable, match="AttributeError"):
        await store.apply("app", [on("bob", "d1", NOW)], NOW)


@pytest.mark.cluster
async def test_cluster_takes_many_concurrent_calls(redis_cluster_url: str) -> None:
    """Hundreds of concurrent gets on Cluster all succeed (redis-py's pool failed past 100)."""
    store = RedisStore.from_url(
        redis_cluster_url,
        cluster=True,
        settings=PresenceSettings(),
        prefix=f"t{uuid.uuid4().hex[:12]}",
    )
    try:
        await store.apply("app", [on(f"u{i}", "d", NOW - i) for i in range(50)], NOW)
        asked = [f"u{i}" for i in range(50)]
        results = await asyncio.gather(*(store.get("app", asked) for _ in range(300)))
        assert all([s.since for s in states] == [NOW - i for i in range(50)] for states in results)
    finally:
        await store.close()


@pytest.mark.cluster
async def test_cluster_follows_moved(redis_cluster_url: str) -> None:
    """A command sent to a node that does not serve its slot is followed to the one that does."""
    store = RedisStore.from_url(
        redis_cluster_url,
        cluster=True,
        settings=PresenceSettings(),
        prefix=f"t{uuid.uuid4().hex[:12]}",
    )
    try:
        published = (await store.apply("app", [on("bob", "d1", NOW)], NOW)).published
        key = store.key("app", "bob").encode()
        slots = await store._wire.topology()
        assert slots is not None
        wrong = next(node for node in set(slots) if node != slots[key_slot(key)])
        [state] = await store._wire.run(wrong, [command(b"HGET", key, b"s")])
        assert state == state_encoder.encode(published[0])
    finally:
        await store.close()


async def test_stalled_loop_is_not_a_redis_timeout(redis_url: str) -> None:
    """A reply that arrived while the event loop itself was held up is read, not timed out."""
    store = RedisStore.from_url(
        redis_url, cluster=False, settings=PresenceSettings(), socket_timeout=0.2
    )
    try:
        await store.ping()
        task = asyncio.create_task(store.get("app", ["bob"]))
        await asyncio.sleep(0)  # the command is written
        time.sleep(0.4)  # noqa: ASYNC251  # the loop held up (a long callback): reply unread
        assert await task == [UserState("bob")]
    finally:
        await store.close()
