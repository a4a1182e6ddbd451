"""Never a 500 (SPEC 3, 6): odd HTTP input gets a 4xx, a bug in a webhook route a 503.

Through a real uvicorn gateway (two HTTP protocols where the bytes on the wire matter), with
raw sockets for what an HTTP client library would refuse to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.config import AppConfig, Settings
from gateway.node import Node
from tests.live import LiveGateway, serve
from tests.test_e2e_webhooks import TOKEN, app_of, make_settings, tencent

HTTP_IMPLS = ["edge", "h11"]  # the gateway's own (httptools-based), and uvicorn's h11


def _exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes; what arrived before a reset counts."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # answered (and closed) before reading it all
            sock.sendall(request)
        with contextlib.suppress(OSError):  # a reset after the answer
            while chunk := sock.recv(65536):
                data += chunk
    return data


async def raw_request(port: int, request: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """The status (None: closed without an answer), headers and body of a raw request."""
    data = await asyncio.to_thread(_exchange, port, request)
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(target: bytes, *headers: bytes) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: t\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + (b"Connection: close\r\n\r\n")
    )


def bearer(app: AppConfig) -> bytes:
    return b"Authorization: Bearer " + app.api_key.encode()


@pytest.fixture(params=HTTP_IMPLS)
async def gw(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[LiveGateway, AppConfig]]:
    """A gateway on one HTTP parser; afterwards nothing may have logged an error."""
    caplog.set_level(logging.INFO)
    settings = make_settings()
    options = {} if request.param == "edge" else {"http": request.param}
    async with serve(settings, **options) as live:
        yield live, app_of(settings)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def presence(app: AppConfig, query: bytes) -> bytes:
    return b"/v1/apps/" + app.id.encode() + b"/presence?" + query


def assert_json_error(
    status: int | None, headers: dict[str, str], body: bytes, expected: int
) -> None:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert body.startswith(b'{"error":"') and b"Traceback" not in body


async def test_invalid_utf8_in_a_percent_escape_is_a_400(gw: tuple[LiveGateway, AppConfig]) -> None:
    """user=%ff is refused, not silently read as another user (U+FFFD)."""
    live, app = gw
    for query in (b"user=%ff", b"user=bob&user=%c3%28", b"user=%ed%a0%80"):
        status, headers, body = await raw_request(live.port, get(presence(app, query), bearer(app)))
        assert_json_error(status, headers, body, 400)
        assert b"UTF-8" in body


async def test_raw_non_ascii_in_the_query_is_a_400(gw: tuple[LiveGateway, AppConfig]) -> None:
    """Raw bytes >= 0x80 in the request target: a 400 from the HTTP layer, nothing more."""
    live, app = gw
    status, _, body = await raw_request(live.port, get(presence(app, b"user=\xff"), bearer(app)))
    assert status == 400 and b"Traceback" not in body


async def test_repeated_users_over_the_limit_are_a_400(gw: tuple[LiveGateway, AppConfig]) -> None:
    """1001 user= (even all the same user), or thousands of other params: 400, not work."""
    live, app = gw
    for query in (b"&".join([b"user=bob"] * 1001), b"user=bob&" + b"&".join([b"x=1"] * 2500)):
        status, headers, body = await raw_request(live.port, get(presence(app, query), bearer(app)))
        assert_json_error(status, headers, body, 400)


@pytest.mark.parametrize("size", [100_000, 1024 * 1024])
async def test_a_huge_query_string_is_a_4xx(gw: tuple[LiveGateway, AppConfig], size: int) -> None:
    """A query string of 100 kB or 1 MiB gets a 4xx (here or from the HTTP layer) or a close."""
    live, app = gw
    query = b"user=" + b"a" * size
    status, _, body = await raw_request(live.port, get(presence(app, query), bearer(app)))
    assert status is None or 400 <= status < 500, status
    assert b"Traceback" not in body


WEIRD_AUTH = [
    b"Authorization: Bearer",
    b"Authorization: Bearer ",
    b"Authorization: bearer\t",
    b"Authorization: Basic Zm9vOmJhcg==",
    b"Authorization: Bearer \xff\xfe\x80",
    b"Authorization: Bearer " + b"k" * 20000,
    b"Authorization: " + b" " * 100,
    b"Authorization: \x01\x02",
]


@pytest.mark.parametrize("header", WEIRD_AUTH, ids=range(len(WEIRD_AUTH)))
async def test_weird_authorization_headers_are_a_401(
    gw: tuple[LiveGateway, AppConfig], header: bytes
) -> None:
    """Empty, non-Bearer, non-ASCII, huge or control-character keys: 401 (or a 400/431)."""
    live, app = gw
    status, headers, body = await raw_request(live.port, get(presence(app, b"user=bob"), header))
    if status == 401:
        assert_json_error(status, headers, body, 401)
    else:  # the HTTP layer refused the header itself
        assert status in (400, 431), (status, body)


async def test_dev_token_refuses_bad_utf8_and_repeats(gw: tuple[LiveGateway, AppConfig]) -> None:
    """dev-token with user=%ff or two user= is a 400 (dev tokens on)."""
    live, app = gw
    target = b"/v1/apps/" + app.id.encode() + b"/dev-token?"
    for query in (b"user=%ff", b"user=a&user=b", b""):
        status, headers, body = await raw_request(live.port, get(target + query))
        assert_json_error(status, headers, body, 400)


# -- a bug in the webhook route --------------------------------------------------------------


def metric(text: str, provider: str, outcome: str) -> float:
    match = re.search(
        rf'presence_webhooks_total{{outcome="{outcome}",provider="{provider}"}} ([0-9.e+]+)', text
    )
    return float(match.group(1)) if match else 0.0


async def _broken_route(
    gw: Node, monkeypatch: pytest.MonkeyPatch, app: AppConfig, where: str
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    if where == "provider":
        monkeypatch.setattr(gw.providers[(app.id, "tencent")], "handle", boom)
    else:

        async def aboom(*args: Any, **kwargs: Any) -> Any:
            boom()

        monkeypatch.setattr(gw.store, "apply", aboom)


@pytest.mark.parametrize("where", ["provider", "store"])
async def test_a_bug_in_the_webhook_route_is_a_503_counted_as_error(
    where: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception: 503 in the provider's shape, outcome="error", traceback logged."""
    settings: Settings = make_settings()
    app = app_of(settings)
    async with serve(settings) as live, httpx.AsyncClient(base_url=live.url) as http:
        gateway: Node = live.app.state.gateway
        await _broken_route(gateway, monkeypatch, app, where)
        r = await tencent(http, app.id, "bob", "Login")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {
            "ActionStatus": "FAIL",
            "ErrorCode": 1,
            "ErrorInfo": "internal error, retry later",
        }
        text = (await http.get("/metrics")).text
    assert metric(text, "tencent", "error") == 1.0
    assert metric(text, "tencent", "ok") == 0.0
    logged = [r for r in caplog.records if r.exc_info and "answered 503" in r.getMessage()]
    assert len(logged) == 1
    assert TOKEN not in "\n".join(r.getMessage() for r in caplog.records)


async def test_a_client_gone_mid_body_is_counted_disconnected(
    gw: tuple[LiveGateway, AppConfig],
) -> None:
    """A webhook whose client leaves before its body arrives counts as "disconnected", not ok."""
    live, app = gw
    head = (
        b"POST /v1/apps/" + app.id.encode() + b"/webhooks/tencent HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    _, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(head)
    await writer.drain()
    async with httpx.AsyncClient(base_url=live.url) as http:

        async def outcome(name: str) -> float:
            return metric((await http.get("/metrics")).text, "tencent", name)

        writer.close()  # headers and the start of the body arrived; the rest never will
        await writer.wait_closed()
        async with asyncio.timeout(5):
            while await outcome("disconnected") < 1:  # noqa: ASYNC110 (polling, a deadline)
                await asyncio.sleep(0.02)
        assert await outcome("ok") == 0
        assert await outcome("error") == 0
