"""The network edge (SPEC sections 2 and 3): client address, deadlines, limits, quiet logs.

Every test runs a real uvicorn gateway (``tests.live``) and talks to it over raw asyncio TCP
sockets or real WebSocket clients, so what is checked is what a client on the wire sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.config import ServerConfig, Settings
from gateway.edge import ClientResolver, ConnectionLimits, is_loopback, redact_path
from gateway.node import Node
from gateway.providers.openim import OpenIMConfig
from gateway.providers.tencent import TencentConfig, sign
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import TOKEN, app_of, make_settings, tencent

WAIT_S = 10.0  # a deadline for what must happen, never a pause


def edge_settings(
    allowed_ips: list[str] | None = None, openim_token: str = "", **server: Any
) -> Settings:
    """``make_settings()`` with Tencent's allow-list, an OpenIM token and ``[server]`` set."""
    settings = make_settings()
    app = app_of(settings)
    app = msgspec.structs.replace(
        app,
        tencent=TencentConfig(
            sdkappid=1400000000, callback_token=TOKEN, allowed_ips=allowed_ips or []
        ),
        openim=OpenIMConfig(token=openim_token),
    )
    return Settings(apps={app.id: app}, server=ServerConfig(**server))


def gateway_of(gw: LiveGateway) -> Node:
    found = gw.gateway
    assert isinstance(found, Node)
    return found


@contextlib.asynccontextmanager
async def raw(gw: LiveGateway) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to the gateway, closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, within: float = WAIT_S) -> bytes:
    """Everything the gateway sends until it closes the connection (fails past ``within``)."""
    data = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])


def tencent_head(app: str, length: int) -> bytes:
    """The request line and headers of a signed Tencent webhook with a ``length`` body."""
    rt = str(int(time.time()))
    query = (
        f"SdkAppid=1400000000&CallbackCommand=State.StateChange&OptPlatform=iOS"
        f"&RequestTime={rt}&Sign={sign(TOKEN, rt)}"
    )
    return (
        f"POST /v1/apps/{app}/webhooks/tencent?{query} HTTP/1.1\r\n"
        f"Host: gw\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def wait_for(check: Any, what: str, within: float = WAIT_S) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- client address (SPEC section 3) ----------------------------------------------------


def test_resolver_takes_right_most_untrusted_forwarded_entry() -> None:
    """Behind trusted proxies the client is the right-most X-Forwarded-For hop not trusted."""
    r = ClientResolver(["10.0.0.0/8", "::1"])
    xff = [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4"), (b"x-forwarded-for", b"10.0.0.7")]
    assert r.resolve("10.0.0.1", xff) == "1.2.3.4"
    assert r.resolve("::1", [(b"x-forwarded-for", b"[2001:db8::1]:443, 1.2.3.4:80")]) == "1.2.3.4"
    assert r.resolve("10.0.0.1", [(b"x-forwarded-for", b"10.0.0.9, 10.0.0.8")]) == "10.0.0.9"
    assert r.resolve("10.0.0.1", []) == "10.0.0.1"
    assert r.resolve("10.0.0.1", [(b"x-forwarded-for", b"1.2.3.4, garbage")]) is None
    assert r.resolve("8.8.8.8", xff) == "8.8.8.8"  # an untrusted peer's headers mean nothing
    assert ClientResolver([]).resolve("127.0.0.1", xff) == "127.0.0.1"


@pytest.mark.parametrize(
    ("headers", "expect"),
    [
        ({"X-Forwarded-For": "10.9.9.9"}, 403),
        ({"Forwarded": "for=10.9.9.9"}, 403),
        ({}, 403),
    ],
)
async def test_forwarded_headers_ignored_without_trusted_proxies(
    headers: dict[str, str], expect: int
) -> None:
    """With no trusted proxies a loopback client naming an allowed address is still refused."""
    settings = edge_settings(allowed_ips=["10.9.9.9/32"])
    app = app_of(settings)
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url, headers=headers) as c:
        r = await tencent(c, app.id, "bob", "Login")
    assert r.status_code == expect
    assert r.json()["ActionStatus"] == "FAIL"


@pytest.mark.parametrize(
    ("forwarded", "expect"),
    [
        ("10.9.9.9", 200),  # the proxy saw 10.9.9.9
        ("10.9.9.9, 6.6.6.6", 403),  # the client claimed 10.9.9.9; the proxy saw 6.6.6.6
        ("6.6.6.6, 10.9.9.9, 127.0.0.5", 200),  # two proxies: the first saw 10.9.9.9
        (None, 403),  # no header: the proxy itself is the client
    ],
)
async def test_trusted_proxy_forwarded_for(forwarded: str | None, expect: int) -> None:
    """From a trusted proxy the right-most untrusted X-Forwarded-For hop is checked."""
    settings = edge_settings(allowed_ips=["10.9.9.9/32"], trusted_proxies=["127.0.0.0/8"])
    app = app_of(settings)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    async with serve(settings) as gw, httpx.AsyncClient(base_url=gw.url, headers=headers) as c:
        r = await tencent(c, app.id, "bob", "Login")
    assert r.status_code == expect, r.text


# -- source check, deadlines, header size -----------------------------------------------


async def test_forbidden_source_answered_before_the_body() -> None:
    """A disallowed source gets 403 and a closed connection with its 1 MiB body unsent."""
    settings = edge_settings(allowed_ips=["10.0.0.0/8"], request_timeout_s=30)
    app = app_of(settings)
    async with serve(settings) as gw, raw(gw) as (reader, writer):
        writer.write(tencent_head(app.id, 1024 * 1024) + b"{")
        response = await until_closed(reader, within=5)
    assert status_of(response) == 403
    assert b'"ActionStatus":"FAIL"' in response


async def test_idle_connection_dropped_after_request_timeout() -> None:
    """A connection that sends nothing gets 408 and is closed after request_timeout_s."""
    async with serve(edge_settings(request_timeout_s=0.5)) as gw, raw(gw) as (reader, _):
        response = await until_closed(reader)
        assert status_of(response) == 408
        await wait_for(lambda: gateway_of(gw).edge.limits.open == 0, "the slot to be freed")


async def test_trickled_headers_dropped_at_the_deadline() -> None:
    """Headers sent a byte at a time do not extend the deadline: 408 and closed."""
    async with serve(edge_settings(request_timeout_s=0.5)) as gw, raw(gw) as (reader, writer):
        head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 10_000

        async def trickle() -> None:
            for byte in head:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)

        task = asyncio.create_task(trickle())
        try:
            response = await until_closed(reader)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
    assert status_of(response) == 408


async def test_keep_alive_request_gets_its_own_deadline() -> None:
    """After a complete request, a second one that stalls in its headers gets 408."""
    async with serve(edge_settings(request_timeout_s=0.5)) as gw, raw(gw) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        response = await until_closed(reader)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 408 " in response


async def test_stalled_body_gets_408_in_provider_shape() -> None:
    """A webhook body that stops arriving gets Tencent's FAIL ack with 408, then a close."""
    settings = edge_settings(request_timeout_s=0.5)
    app = app_of(settings)
    async with serve(settings) as gw, raw(gw) as (reader, writer):
        writer.write(tencent_head(app.id, 1024 * 1024) + b"[" * 1024)
        response = await until_closed(reader)
        assert status_of(response) == 408
        assert b'"ActionStatus":"FAIL"' in response and b"in time" in response
        async with httpx.AsyncClient(base_url=gw.url) as client:
            text = (await client.get("/metrics")).text
    assert 'presence_webhooks_total{outcome="timeout",provider="tencent"} 1.0' in text


async def test_stalled_uploads_are_all_dropped_and_freed() -> None:
    """Twenty stalled 1 MiB uploads are each closed at the deadline; no slot stays held."""
    settings = edge_settings(request_timeout_s=0.5)
    app = app_of(settings)
    async with serve(settings) as gw, contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(raw(gw)) for _ in range(20)]
        for _, writer in conns:
            writer.write(tencent_head(app.id, 1024 * 1024) + b"0" * (256 * 1024))
        responses = await asyncio.gather(*(until_closed(reader) for reader, _ in conns))
        assert {status_of(r) for r in responses} == {408}
        await wait_for(lambda: gateway_of(gw).edge.limits.open == 0, "every slot to be freed")


async def test_oversized_headers_get_431() -> None:
    """Headers that go on past 64 KiB get 431 and a closed connection."""
    async with serve(edge_settings(request_timeout_s=30)) as gw, raw(gw) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
        for i in range(2000):
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"f" * 64))
        response = await until_closed(reader)
    assert status_of(response) == 431


async def test_client_hangup_mid_body_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """A client gone mid-body logs no error or 5xx and is counted as its own outcome."""
    caplog.set_level(logging.INFO)
    settings = edge_settings()
    app = app_of(settings)
    async with serve(settings) as gw:
        async with raw(gw) as (_, writer):
            writer.write(tencent_head(app.id, 5000) + b'{"Info":')
            await writer.drain()
        async with httpx.AsyncClient(base_url=gw.url) as client:

            async def counted() -> bool:
                text = (await client.get("/metrics")).text
                return 'outcome="disconnected",provider="tencent"} 1.0' in text

            deadline = time.monotonic() + WAIT_S
            while not await counted():
                assert time.monotonic() < deadline, "the hang-up was never counted"
                await asyncio.sleep(0.02)
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
    access = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert not [line for line in access if " 5" in line and "webhooks" in line], access


# -- connection limits -------------------------------------------------------------------


async def test_per_address_limit_refuses_with_503_then_recovers() -> None:
    """Past max_connections_per_ip a connection gets 503 with Retry-After; freed, it works."""
    settings = edge_settings(request_timeout_s=30, max_connections_per_ip=2)
    async with serve(settings) as gw:
        async with raw(gw), raw(gw):
            await wait_for(lambda: gateway_of(gw).edge.limits.open == 2, "two connections")
            async with raw(gw) as (reader, writer):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                response = await until_closed(reader)
            assert status_of(response) == 503
            assert b"retry-after: " in response.lower()
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{gw.ws_url}/v1/apps/{app_of(settings).id}/ws"):
                    pass
            assert refused.value.response.status_code == 503
        await wait_for(lambda: gateway_of(gw).edge.limits.open == 0, "the slots to be freed")
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/healthz")).status_code == 200


async def test_websockets_count_towards_the_process_limit() -> None:
    """Open WebSockets hold their connection's place: past max_connections HTTP gets 503."""
    settings = edge_settings(request_timeout_s=30, max_connections=2)
    url = f"ws://127.0.0.1:{{}}/v1/apps/{app_of(settings).id}/ws"
    async with serve(settings) as gw:
        async with connect(url.format(gw.port)), connect(url.format(gw.port)):
            await asyncio.sleep(0)
            assert gateway_of(gw).edge.limits.open == 2
            async with raw(gw) as (reader, writer):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                assert status_of(await until_closed(reader)) == 503
        await wait_for(lambda: gateway_of(gw).edge.limits.open == 0, "the WebSockets to go")


def test_limits_count_per_address_and_exempt_trusted_proxies() -> None:
    """Slots count per peer; a trusted proxy's connections count towards the total only."""
    limits = ConnectionLimits(total=4, per_ip=1, resolver=ClientResolver(["10.0.0.1"]))
    a = limits.acquire("1.1.1.1")
    assert a is not None and limits.acquire("1.1.1.1") is None
    proxied = [limits.acquire("10.0.0.1"), limits.acquire("10.0.0.1")]
    assert all(proxied) and limits.acquire("2.2.2.2") is not None
    assert limits.acquire("3.3.3.3") is None  # total reached
    a.release()
    a.release()  # idempotent
    assert limits.open == 3 and "1.1.1.1" not in limits.by_ip


# -- logs ---------------------------------------------------------------------------------


async def test_logs_carry_no_client_port_query_or_path_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No log line names the client port, a query string or an OpenIM path token."""
    caplog.set_level(logging.DEBUG)
    settings = edge_settings(openim_token="path-s3cret")
    app = app_of(settings)
    async with serve(settings) as gw:
        url = f"{gw.ws_url}/v1/apps/{app.id}/ws?token=query-s3cret"
        async with connect(url) as ws:
            ws_port = ws.local_address[1]
        with pytest.raises(InvalidStatus):
            async with connect(f"{gw.ws_url}/v1/apps/nope/ws?token=query-s3cret"):
                pass
        async with raw(gw) as (reader, writer):
            http_port = writer.get_extra_info("sockname")[1]
            writer.write(
                f"POST /v1/apps/{app.id}/webhooks/openim/path-s3cret?sig=query-s3cret HTTP/1.1"
                "\r\nHost: gw\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
            )
            assert status_of(await until_closed(reader)) in (200, 400)
        await wait_for(
            lambda: sum("WebSocket" in r.getMessage() for r in caplog.records) >= 2,
            "the WebSocket access lines",
        )
    client_side = ("websockets.client", "httpx", "httpcore")
    lines = [r.getMessage() for r in caplog.records if not r.name.startswith(client_side)]
    for secret in ("query-s3cret", "path-s3cret", f":{ws_port}", f":{http_port}", "?"):
        assert not [line for line in lines if secret in line], secret
    access = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert any(f"WebSocket /v1/apps/{app.id}/ws 101 close" in line for line in access), access
    assert any("WebSocket /v1/apps/nope/ws 403" in line for line in access), access
    assert any("/webhooks/openim/…" in line for line in access), access


def test_redact_path_hides_openim_and_wukongim_tokens() -> None:
    """Path tokens of OpenIM and WuKongIM never reach a log line."""
    assert redact_path("/v1/apps/a/webhooks/openim/tok/callbackUserOnlineCommand") == (
        "/v1/apps/a/webhooks/openim/…"
    )
    assert redact_path("/v1/apps/a/webhooks/wukongim/tok") == "/v1/apps/a/webhooks/wukongim/…"
    assert redact_path("/v1/apps/a/webhooks/tencent") == "/v1/apps/a/webhooks/tencent"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    """Only 127.0.0.0/8, ::1 and localhost count as loopback bind addresses."""
    assert is_loopback(host) is loopback
