"""The wire layer on real Redis: fair deadlines on a shared lane, lanes to nodes met later."""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backends.redis.lane import command
from gateway.backends.redis.wire import Wire, redact, safe_url
from tests.servers import RedisServer, free_port

# A call that keeps Redis busy for ARGV[1] microseconds (Redis runs one script at a time).
BUSY = command(
    b"EVAL",
    b"local t = redis.call('TIME'); local start = t[1] * 1000000 + t[2]\n"
    b"while true do\n"
    b"  t = redis.call('TIME')\n"
    b"  if t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1]) then return 1 end\n"
    b"end",
    b"0",
    b"%d" % 250_000,
)
PING = command(b"PING")


def test_safe_url_hides_the_password() -> None:
    """A URL's password never survives safe_url or redact; the rest of it does."""
    assert safe_url("redis://:s3cret@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert safe_url("rediss://app:s3cret@cache:6380") == "rediss://app:***@cache:6380"
    assert safe_url("redis://10.0.0.1:6379/0") == "redis://10.0.0.1:6379/0"
    assert safe_url("redis://:pw@host:notaport/0") == "<redis url>"
    url = "redis://:p%40ss@h:1/0"
    text = redact(f"failed on {url}: auth p@ss and p%40ss", url)
    assert "p@ss" not in text and "p%40ss" not in text and "h:1" in text


def test_lane_to_a_node_met_later_keeps_tls_and_auth() -> None:
    """A lane to a node the client did not know is made with its class, AUTH and timeouts."""
    client = RedisCluster.from_url(
        "rediss://app:s3cret@127.0.0.1:7000/0", socket_connect_timeout=0.7, socket_timeout=1.5
    )
    wire = Wire(client)
    conn = wire._factory("10.9.8.7:7005")()  # a node added or promoted after startup
    assert isinstance(conn, SSLConnection)
    assert (conn.host, conn.port) == ("10.9.8.7", 7005)
    assert (conn.username, conn.password) == ("app", "s3cret")
    assert conn.socket_connect_timeout == 0.7
    assert conn.socket_timeout is None  # the lane times its calls itself


@pytest.fixture
async def server(redis_proc: RedisServer) -> RedisServer:
    return redis_proc


@pytest.mark.redis
async def test_slow_calls_do_not_fail_the_calls_queued_behind(server: RedisServer) -> None:
    """Calls queued behind slow ones on one lane get their own full timeout, not a share."""
    client = Redis.from_url(server.url, socket_timeout=0.4)
    wire = Wire(client)
    try:
        await wire.run("", [PING])
        # Two 0.25 s calls and a quick one, sent together: the quick one is answered
        # 0.5 s after it was sent, past its 0.4 s, but only 0.25 s after its turn came.
        calls = [wire.run("", [BUSY]), wire.run("", [BUSY]), wire.run("", [PING])]
        assert await asyncio.gather(*calls) == [[1], [1], [b"PONG"]]
    finally:
        await wire.close()
        await client.aclose()


@pytest.mark.redis
async def test_a_dead_connection_still_fails_within_the_timeout(server: RedisServer) -> None:
    """A server that answers nothing fails every queued call once the head call times out."""
    client = Redis.from_url(server.url, socket_timeout=0.3)
    wire = Wire(client)
    try:
        await wire.run("", [PING])
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            calls = [wire.run("", [PING]) for _ in range(5)]
            async with asyncio.timeout(5):  # not hung: failed by the lane's own watchdog
                results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, RedisTimeoutError) for r in results), results
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert await wire.run("", [PING]) == [b"PONG"]
    finally:
        await wire.close()
        await client.aclose()


@pytest.mark.redis
async def test_refused_port_is_retried_on_the_next_call(server: RedisServer) -> None:
    """A lane whose connect failed is not cached as failed: the next call connects."""
    port = free_port()
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    wire = Wire(client)
    try:
        with pytest.raises(RedisConnectionError):
            await wire.run("", [PING])
        again = RedisServer(server.directory / "again", port)
        await again.astart()
        try:
            assert await wire.run("", [PING]) == [b"PONG"]
        finally:
            again.stop()
    finally:
        await wire.close()
        await client.aclose()
