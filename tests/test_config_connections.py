"""The ``[connections]`` table and the fan-out keys of ``[server]``: parsed, checked, in use."""

from __future__ import annotations

import httpx
import pytest

from gateway import config
from gateway.errors import ConfigError
from tests.test_config import GOOD
from tests.test_e2e_webhooks import app_of, make_settings
from tests.test_ws_protocol import running, tuned


def test_connections_table_parses_and_defaults_match_the_old_constants() -> None:
    """A ``[connections]`` table sets its keys; left out, every key has its former value."""
    s = config.parse(GOOD + "\n[connections]\nheartbeat_ms = 5000\nmessage_burst = 7\n", "gw.toml")
    assert s.connections.heartbeat_ms == 5000 and s.connections.message_burst == 7
    d = config.parse(GOOD, "gw.toml", env={}).connections
    assert (d.hello_timeout_s, d.heartbeat_ms, d.idle_limit_s) == (10.0, 25_000, 75.0)
    assert (d.high_water_bytes, d.slow_close_after_s) == (256 * 1024, 10.0)
    assert (d.messages_per_s, d.message_burst) == (20.0, 40)
    assert (d.store_read_burst, d.store_read_refill_s, d.store_read_chunk) == (100, 10.0, 1000)
    assert (d.flush_tick_s, d.unsubscribe_delay_s) == (0.002, 0.5)
    assert (d.sse_retry_ms, d.sse_preflight_max_age_s) == (2000, 600)
    server = config.parse(GOOD, "gw.toml", env={}).server
    assert (server.max_body_bytes, server.pong_high_water_bytes) == (1024 * 1024, 256 * 1024)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[connections]\nheartbeat_ms = 10", "connections.heartbeat_ms"),
        ("[connections]\nhigh_water_bytes = -1", "connections.high_water_bytes"),
        ("[connections]\nmessages_per_s = 0", "connections.messages_per_s"),
        ("[connections]\nhello_timeout_s = 'soon'", "connections.hello_timeout_s"),
        ("[connections]\nheartbeat = 1000", "connections"),  # unknown key
        ("[connections]\nidle_limit_s = 20", "connections.idle_limit_s"),  # below heartbeat
        ("[server]\nmax_body_bytes = 10", "server.max_body_bytes"),
        ("[server]\npong_high_water_bytes = 0", "server.pong_high_water_bytes"),
    ],
)
def test_bad_connections_values_name_the_key(table: str, key: str) -> None:
    """An out-of-range, mistyped or unknown key is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        config.parse(GOOD + "\n" + table + "\n", "gw.toml", env={})
    assert info.value.key == key, info.value


async def test_the_welcome_and_the_stream_carry_the_configured_values() -> None:
    """heartbeat_ms reaches the welcome; sse_retry_ms and the preflight max age the stream."""
    settings = tuned(make_settings(), heartbeat_ms=7000, sse_retry_ms=1234)
    settings = tuned(settings, sse_preflight_max_age_s=42)
    app = app_of(settings)
    async with running(settings) as live:
        client = await live.open()
        welcome = await client.hello(live.token("alice"))
        assert welcome["type"] == "welcome" and welcome["heartbeat_ms"] == 7000
        headers = {"origin": "https://x.example", "access-control-request-method": "GET"}
        r = await live.http.options(f"/v1/apps/{app.id}/sse", headers=headers)
        assert r.status_code == 204 and r.headers["access-control-max-age"] == "42"
        token = live.token("alice")
        url = f"/v1/apps/{app.id}/sse?user=bob&token={token}"
        async with live.http.stream("GET", url, timeout=httpx.Timeout(5.0)) as stream:
            first = await anext(stream.aiter_bytes())
        assert first.startswith(b"retry: 1234\n\n"), first
