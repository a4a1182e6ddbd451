"""The webhook route's own parts: reading a bounded body off ASGI messages."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from gateway.webhooks import BodyTooLarge, read_body


def request(messages: Sequence[Message], headers: Sequence[tuple[bytes, bytes]] = ()) -> Request:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0)

    scope = {"type": "http", "method": "POST", "headers": list(headers), "query_string": b""}
    return Request(scope, receive)


def body(chunk: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": chunk, "more_body": more}


async def test_read_body_joins_chunks() -> None:
    """A body sent in several messages comes back whole, empty chunks skipped."""
    got = await read_body(request([body(b"ab", True), body(b"", True), body(b"cd")]))
    assert got == b"abcd"
    assert await read_body(request([body(b"")])) == b""


async def test_read_body_refuses_declared_and_streamed_excess() -> None:
    """Over the limit is refused from Content-Length alone, or once the chunks pass it."""
    with pytest.raises(BodyTooLarge):
        await read_body(request([], [(b"content-length", b"11")]), limit=10)
    with pytest.raises(BodyTooLarge):
        await read_body(request([body(b"123456", True), body(b"78901")]), limit=10)
    assert await read_body(request([body(b"12345", True), body(b"67890")]), limit=10)


async def test_read_body_raises_client_disconnect() -> None:
    """A client gone before the body ended raises Starlette's ClientDisconnect."""
    with pytest.raises(ClientDisconnect):
        await read_body(request([body(b"ab", True), {"type": "http.disconnect"}]))
