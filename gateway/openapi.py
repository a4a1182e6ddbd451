"""``GET /openapi.json``: the HTTP API described from the Structs the routes encode.

The JSON bodies of the server API are msgspec Structs (``gateway.api``, ``gateway.model``),
and their schemas come from ``msgspec.json.schema_components``, so the document cannot drift
from what is sent. Webhook bodies belong to each provider and are described as generic
bodies with their documented statuses. The WebSocket endpoint (SPEC section 5) is no HTTP
operation and is not listed; the Server-Sent Events stream (section 10) is, with its refusals.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import (
    MAX_QUERY_USERS,
    USER_ID_MAX,
    CustomRequest,
    ErrorReply,
    PresenceReply,
    ReconcileQueued,
    ReconcileRequest,
    ReconcileStatus,
    TokenReply,
)
from gateway.config import APP_ID_PATTERN
from gateway.model import UserState
from gateway.providers import PROVIDERS
from gateway.sse import StreamError

_REF = "#/components/schemas/{name}"
_JSON = "application/json"
_TEXT = "text/plain"


def _structs(types: list[type[msgspec.Struct]]) -> dict[str, type[msgspec.Struct]]:
    """Every Struct reachable from ``types``, by name (the components' keys)."""
    found: dict[str, type[msgspec.Struct]] = {}

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls.__name__ in found:
                return
            found[info.cls.__name__] = info.cls
            for field in info.fields:
                walk(field.type)
        for attr in ("item_type", "key_type", "value_type"):
            if isinstance(inner := getattr(info, attr, None), msgspec.inspect.Type):
                walk(inner)
        for inner in getattr(info, "types", ()):
            walk(inner)
        for inner in getattr(info, "item_types", ()):
            walk(inner)

    for info in msgspec.inspect.multi_type_info(types):
        walk(info)
    return found


def _components() -> tuple[dict[str, Any], dict[str, Any]]:
    """Response schemas by Struct name, and the components they refer to."""
    replies: list[type[msgspec.Struct]] = [
        PresenceReply,
        TokenReply,
        ErrorReply,
        StreamError,
        ReconcileQueued,
        ReconcileStatus,
        UserState,
    ]
    refs, components = msgspec.json.schema_components(replies, ref_template=_REF)
    # A response always carries every field (no Struct here omits defaults), so every
    # property is required: the schema says what a client can rely on, not what it may send.
    for name, cls in _structs(replies).items():
        if not cls.__struct_config__.omit_defaults:
            schema = components[name]
            schema["required"] = list(schema.get("properties", {}))
    return dict(zip((c.__name__ for c in replies), refs, strict=True)), components


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": ref}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_TEXT: {"schema": {"type": "string"}}}}


_APP = {
    "name": "app",
    "in": "path",
    "required": True,
    "description": "An app id of the config file (unknown: 404).",
    "schema": {"type": "string", "pattern": APP_ID_PATTERN.replace("\\A", "^").replace("\\Z", "$")},
}


def _user_query(*, max_items: int) -> dict[str, Any]:
    return {
        "name": "user",
        "in": "query",
        "required": True,
        "style": "form",
        "explode": True,
        "schema": {
            "type": "array",
            "minItems": 1,
            "maxItems": max_items,
            "items": {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX},
        },
    }


def _webhook_operation(with_rest: bool) -> dict[str, Any]:
    # Every provider answers in its own shape (JSON, or nothing for 204), so the bodies
    # are generic; the statuses are SPEC section 3's.
    generic = {"description": "", "content": {_JSON: {"schema": {}}}}
    statuses = {
        "200": "applied (or nothing to apply), in the provider's ack shape",
        "400": "malformed body or query",
        "401": "missing or wrong signature, token or timestamp",
        "403": "the caller's address is not in allowed_ips",
        "404": "unknown app, or this provider is not configured for it",
        "408": "the body did not arrive in time",
        "413": "body over 1 MiB",
        "503": "the store is unavailable (or an internal error): nothing applied, retry",
    }
    responses: dict[str, Any] = {
        status: {**generic, "description": text} for status, text in statuses.items()
    }
    responses["204"] = {"description": "applied (Standard Webhooks: no body)"}
    parameters: list[dict[str, Any]] = [
        _APP,
        {
            "name": "provider",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": sorted(PROVIDERS)},
        },
    ]
    if with_rest:
        parameters.append(
            {
                "name": "rest",
                "in": "path",
                "required": True,
                "description": "Path segments some providers use (OpenIM's token and command).",
                "schema": {"type": "string", "minLength": 1},
            }
        )
    return {
        "summary": "A provider's webhook (SPEC section 3)"
        + (" with path segments" if with_rest else ""),
        "operationId": "webhookWithPath" if with_rest else "webhook",
        "parameters": parameters,
        "requestBody": {
            "required": False,
            "content": {
                _JSON: {"schema": {}},
                "application/x-www-form-urlencoded": {"schema": {}},
            },
        },
        "responses": responses,
    }


_SSE_EVENTS = (
    'An event stream: `retry: 2000`, then `event: snapshot` (data `{"presence":[...]}`), '
    "then `event: presence` (data: one state) per change and `event: resync` (data "
    '`{"presence":[...]}`) after a feed loss; a `: ping` comment every heartbeat_ms.'
)


def _sse_operations(error: dict[str, Any]) -> dict[str, Any]:
    """GET (the stream) and OPTIONS (its CORS preflight) of SPEC section 10."""
    return {
        "get": {
            "summary": "A Server-Sent Events stream of these users' states (SPEC section 10)",
            "operationId": "sse",
            "security": [{"clientToken": []}, {"clientTokenQuery": []}],
            "parameters": [_APP, _user_query(max_items=MAX_QUERY_USERS)],
            "responses": {
                "200": {
                    "description": _SSE_EVENTS,
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _json(error, "no user, a malformed one, or more than max_watch"),
                "401": _json(error, "missing, bad or expired client token"),
                "403": _json(error, "Origin not allowed, or watch_policy refuses a user"),
                "404": _json(error, "unknown app"),
                "405": _json(error, "another method than GET or OPTIONS"),
                "429": _json(error, "the user has max_connections_per_user open"),
                "503": _json(error, "the store is unavailable; retry"),
            },
        },
        "options": {
            "summary": "The CORS preflight of the stream",
            "operationId": "ssePreflight",
            "parameters": [_APP],
            "responses": {
                "204": {"description": "what a page of an allowed origin may send"},
                "403": _json(error, "Origin not allowed"),
                "404": _json(error, "unknown app"),
            },
        },
    }


# What the HTTP layer answers before any route runs (gateway.transport, uvicorn, the router),
# in plain text, on every path: a request it cannot parse, headers (or a body) too slow or
# too large, a path no route matches (a path segment out of its pattern), the connection
# limits.
_TRANSPORT = {
    "400": "the HTTP request cannot be parsed (plain text, from the HTTP server)",
    "404": "no route matches the path",
    "408": "the request did not arrive within request_timeout_s",
    "431": "the request line or headers are too large",
    "503": "over the connection limits; retry later",
}


def _with_transport_answers(operation: dict[str, Any]) -> dict[str, Any]:
    responses = operation["responses"]
    for status, text in _TRANSPORT.items():
        plain = {_TEXT: {"schema": {"type": "string"}}}
        if status in responses:
            responses[status]["content"] = {**responses[status].get("content", {}), **plain}
        else:
            responses[status] = {"description": text, "content": plain}
    return operation


def _reconcile_item(refs: dict[str, Any], bearer: list[dict[str, list[str]]]) -> dict[str, Any]:
    """``/v1/apps/{app}/reconcile`` (SPEC 6, 8): queue checks; the last pass per provider."""
    error = refs["ErrorReply"]
    _, request_components = msgspec.json.schema_components([ReconcileRequest])
    common = {
        "401": _json(error, "missing or wrong api key"),
        "404": _json(error, "unknown app"),
        "503": _json(error, "the store is unavailable; retry"),
    }
    return {
        "post": {
            "summary": "Check the given users (or, with no body, every known user) now",
            "operationId": "reconcile",
            "security": bearer,
            "parameters": [_APP],
            "requestBody": {
                "required": False,
                "content": {_JSON: {"schema": request_components["ReconcileRequest"]}},
            },
            "responses": {
                "202": _json(refs["ReconcileQueued"], "queued for the providers' pull APIs"),
                "400": _json(error, 'a body that is not {"users": [...]} of 1 to 1000 ids'),
                "409": _json(error, "no provider of this app has a reconcile table"),
                "413": _json(error, "body too large"),
                **common,
            },
        },
        "get": {
            "summary": "The last reconciliation pass of each reconciled provider",
            "operationId": "reconcileStatus",
            "security": bearer,
            "parameters": [_APP],
            "responses": {
                "200": _json(refs["ReconcileStatus"], "per provider: last pass and its counts"),
                **common,
            },
        },
    }


def _custom_item(refs: dict[str, Any], bearer: list[dict[str, list[str]]]) -> dict[str, Any]:
    """``PUT /v1/apps/{app}/users/{user}/custom`` (SPEC 6): set or clear a custom status."""
    error = refs["ErrorReply"]
    _, request_components = msgspec.json.schema_components([CustomRequest])
    user = {
        "name": "user",
        "in": "path",
        "required": True,
        "description": "The user id (percent-encoded; it may contain /).",
        "schema": {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX},
    }
    return {
        "put": {
            "summary": "Set the user's custom status (null clears it) at the gateway's clock",
            "operationId": "setCustom",
            "security": bearer,
            "parameters": [_APP, user],
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": request_components["CustomRequest"]}},
            },
            "responses": {
                "200": _json(refs["UserState"], "the user's state with the new custom"),
                "400": _json(
                    error,
                    'a body that is not {"custom": text | null}, a custom over 100 UTF-8 bytes, '
                    "or a malformed user id",
                ),
                "401": _json(error, "missing or wrong api key"),
                "404": _json(error, "unknown app"),
                "413": _json(error, "body too large"),
                "503": _json(error, "the store is unavailable; retry"),
            },
        }
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's HTTP API."""
    refs, components = _components()
    error = refs["ErrorReply"]
    bearer: list[dict[str, list[str]]] = [{"apiKey": []}]
    paths: dict[str, Any] = {
        "/v1/apps/{app}/presence": {
            "get": {
                "summary": "The current state of up to 1000 users (SPEC section 6)",
                "operationId": "presence",
                "security": bearer,
                "parameters": [_APP, _user_query(max_items=MAX_QUERY_USERS)],
                "responses": {
                    "200": _json(refs["PresenceReply"], "one state per distinct user, in order"),
                    "400": _json(error, "no user, too many, or a malformed query"),
                    "401": _json(error, "missing or wrong api key"),
                    "404": _json(error, "unknown app"),
                    "503": _json(error, "the store is unavailable; retry"),
                },
            }
        },
        "/v1/apps/{app}/users/{user}/custom": _custom_item(refs, bearer),
        "/v1/apps/{app}/reconcile": _reconcile_item(refs, bearer),
        "/v1/apps/{app}/dev-token": {
            "get": {
                "summary": "A client token, where the app has dev_tokens on",
                "operationId": "devToken",
                "parameters": [_APP, _user_query(max_items=1)],
                "responses": {
                    "200": _json(refs["TokenReply"], "a token for the WebSocket hello"),
                    "400": _json(error, "no user, or a malformed one"),
                    "404": _json(error, "unknown app, or dev tokens off"),
                },
            }
        },
        "/v1/apps/{app}/sse": _sse_operations(refs["StreamError"]),
        "/v1/apps/{app}/webhooks/{provider}": {"post": _webhook_operation(False)},
        "/v1/apps/{app}/webhooks/{provider}/{rest}": {"post": _webhook_operation(True)},
        "/healthz": {
            "get": {
                "summary": "200 while the process runs",
                "operationId": "healthz",
                "responses": {"200": _text("ok")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "200 only while the backend answers",
                "operationId": "readyz",
                "responses": {"200": _text("ready"), "503": _text("store unavailable")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition",
                "operationId": "metrics",
                "responses": {"200": _text("metrics, text format 0.0.4")},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {}}}}
                },
            }
        },
    }
    for item in paths.values():
        for operation in item.values():
            _with_transport_answers(operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Presence gateway",
            "version": "1",
            "description": "IM provider webhooks in, presence out (HTTP part; the WebSocket "
            "protocol at /v1/apps/{app}/ws is described in SPEC section 5).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "clientToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "clientTokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }


@functools.cache
def _encoded() -> bytes:
    return msgspec.json.encode(document())


async def serve(request: Request) -> Response:
    """GET /openapi.json."""
    return Response(_encoded(), media_type=_JSON)
