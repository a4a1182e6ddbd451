"""GET /openapi.json describes the HTTP API, and a real gateway keeps to it (schemathesis).

The gateway runs under uvicorn in a thread of its own (schemathesis' tests are synchronous),
on the memory backend, with one app whose api key the tests send. Schemathesis generates
a bounded number of requests for every operation of the document, positive and negative,
and checks that no answer is a 5xx, and that every status, content type and body is one the
document lists.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from gateway.app import create_app
from gateway.config import Settings, dev_settings
from gateway.openapi import document
from gateway.types import APP_ID_PATTERN
from tests.live import LiveGateway, serve

APP_ID = "schema"
APP_PATTERN = re.compile(APP_ID_PATTERN)


class ThreadedGateway:
    """``tests.live.serve`` on an event loop in a thread; ``stop`` leaves serve cleanly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.live: LiveGateway | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                async with serve(self.settings) as live:
                    self.live = live
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self.error = exc
                raise
            finally:
                self._ready.set()

        asyncio.run(main())

    def start(self) -> LiveGateway:
        self._thread.start()
        if not self._ready.wait(timeout=20) or self.live is None:
            raise RuntimeError(f"gateway did not start: {self.error!r}")
        return self.live

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=20)


def schema_settings() -> Settings:
    """Dev mode's providers (some unsigned, so generated bodies reach the parsers)."""
    demo = dev_settings().apps["demo"]
    app = msgspec.structs.replace(demo, id=APP_ID, dev_tokens=True)
    return Settings(apps={APP_ID: app})


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    runner = ThreadedGateway(schema_settings())
    try:
        yield runner.start()
    finally:
        runner.stop()
    assert runner.error is None, runner.error


# The document the gateway serves (the last test checks they are the same); loaded at import
# because schemathesis' lazy loader (from_fixture) does not run under pytest 9.
schema = schemathesis.openapi.from_dict(
    msgspec.json.decode(msgspec.json.encode(document())),
    config=schemathesis.Config.from_dict({"generation": {"mode": "all"}}),
).include(path_regex=r"^/(?!openapi\.json)")

# Not negative_data_rejection: the test sends the api key itself, which turns many a negative
# case (no Authorization) into a valid request.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # no example database in the work tree; every run starts fresh
)
def test_the_gateway_keeps_to_its_openapi_document(case: Any, gateway: LiveGateway) -> None:
    """Generated requests: never a 5xx, and every answer's status, type and body documented."""
    app = schema_settings().apps[APP_ID]
    headers = {"Authorization": f"Bearer {app.api_key}"}
    path = case.path_parameters or {}
    if "app" in path and APP_PATTERN.match(str(path["app"])) and random.random() < 0.9:
        path["app"] = APP_ID  # a valid app id: mostly the one that exists, else a 404
    case.call_and_validate(base_url=gateway.url, headers=headers, checks=CHECKS, timeout=10)


async def test_the_served_document_is_the_generated_one() -> None:
    """GET /openapi.json serves document(), with the Structs' schemas as components."""
    async with serve(schema_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        r = await http.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    served = r.json()
    assert served == msgspec.json.decode(msgspec.json.encode(document()))
    components = served["components"]["schemas"]
    assert {"PresenceReply", "UserState", "DeviceView", "TokenReply", "ErrorReply"} <= set(
        components
    )
    assert components["UserState"]["required"] == [
        "user",
        "status",
        "since",
        "devices",
        "v",
        "custom",
    ]
    custom = served["paths"]["/v1/apps/{app}/users/{user}/custom"]["put"]
    assert custom["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserState"
    }
    presence = served["paths"]["/v1/apps/{app}/presence"]["get"]
    assert presence["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PresenceReply"
    }


# Routes outside the document: the demo page, and the demo page's own helper (dev mode only).
UNDOCUMENTED = {"/", "/v1/apps/{app}/dev-webhook/{provider}"}


def test_every_http_route_is_in_the_document() -> None:
    """Each route of the app (method and path) is an operation of the document, or listed."""
    app = create_app(schema_settings()).app
    paths = document()["paths"]
    for route in app.routes:
        if not isinstance(route, Route) or route.path in UNDOCUMENTED:
            continue
        path = route.path.replace(":path}", "}")
        assert path in paths, path
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in paths[path], (method, path)
