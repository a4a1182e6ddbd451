"""OpenIM user online / offline / kick-off webhooks."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.backends.base import PresenceSettings
from gateway.model import PresenceEvent
from gateway.providers.base import Parsed, WebhookRejected, WebhookRequest
from gateway.providers.openim import COMMANDS, OpenIMConfig, OpenIMProvider

NOW = 1763700000000
TOKEN = "s3cret-token"
ONLINE = "callbackAfterUserOnlineCommand"
OFFLINE = "callbackAfterUserOfflineCommand"


def body(command: str | None = ONLINE, **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "operationID": "op-1",
        "platformID": 1,
        "platform": "IOS",
        "userID": "bob",
        "seq": NOW - 50,
        "connID": "",
        "isAppBackground": False,
    }
    if command is not None:
        doc["callbackCommand"] = command
    doc.update(fields)
    return msgspec.json.encode(doc)


def request(
    path: tuple[str, ...] = (),
    data: bytes | None = None,
    q: tuple[tuple[str, str], ...] = (),
    now: int = NOW,
) -> WebhookRequest:
    return WebhookRequest(
        path=path,
        query=q,
        headers={"operationid": "op-1"},
        body=body() if data is None else data,
        client_ip="10.0.0.1",
        now_ms=now,
    )


def provider(token: str = "", **kw: Any) -> OpenIMProvider:
    return OpenIMProvider(OpenIMConfig(token=token, **kw), PresenceSettings())


def rejected(p: OpenIMProvider, req: WebhookRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        p.handle(req)
    return info.value


def test_online_event_keyed_by_platform_id() -> None:
    """An online callback is one online event, device = platformID, time = seq."""
    parsed = provider().handle(request((ONLINE,)))
    assert parsed == Parsed(
        events=[PresenceEvent("bob", "1", "ios", True, NOW - 50, "")], unused=0, command=ONLINE
    )


@pytest.mark.parametrize(
    ("command", "online", "reason"),
    [
        ("callbackUserOnlineCommand", True, ""),
        ("callbackAfterUserOnlineCommand", True, ""),
        ("callbackUserOfflineCommand", False, ""),
        ("callbackAfterUserOfflineCommand", False, ""),
        ("callbackUserKickOffCommand", False, "kicked"),
        ("callbackAfterUserKickOffCommand", False, "kicked"),
    ],
)
def test_both_command_generations(command: str, online: bool, reason: str) -> None:
    """callbackUser...Command and callbackAfterUser...Command names are both understood."""
    (ev,) = provider().handle(request((command,), body(command))).events
    assert (ev.online, ev.reason) == (online, reason)


def test_command_from_path_without_token() -> None:
    """v3.5+: the command is the path segment appended to the configured URL."""
    assert provider().handle(request((OFFLINE,), body(None))).command == OFFLINE


def test_command_from_query() -> None:
    """v3.0-3.4: the command comes as ?command= (name matched in any case)."""
    assert provider().handle(request(q=(("command", OFFLINE),), data=body(None))).command == OFFLINE
    assert provider().handle(request(q=(("Command", OFFLINE),), data=body(None))).command == OFFLINE


def test_command_from_body_only() -> None:
    """With no path and no query the body's callbackCommand decides."""
    parsed = provider().handle(request(data=body(OFFLINE)))
    assert (parsed.command, parsed.events[0].online) == (OFFLINE, False)


def test_path_command_wins_over_body() -> None:
    """A known command in the path is used even when the body names another."""
    assert provider().handle(request((OFFLINE,), body(ONLINE))).events[0].online is False


def test_token_then_command_in_path() -> None:
    """With a token configured, /{token}/{command} is accepted."""
    assert provider(TOKEN).handle(request((TOKEN, OFFLINE), body(None))).command == OFFLINE


def test_token_alone_then_query_or_body_command() -> None:
    """With a token configured, /{token} with the command in the query or body is accepted."""
    p = provider(TOKEN)
    assert p.handle(request((TOKEN,), body(None), (("command", OFFLINE),))).command == OFFLINE
    assert p.handle(request((TOKEN,), body(OFFLINE))).command == OFFLINE


def test_empty_segments_are_ignored() -> None:
    """A trailing slash in the configured URL (empty segment) changes nothing."""
    assert provider(TOKEN).handle(request(("", TOKEN, "", ONLINE))).command == ONLINE


@pytest.mark.parametrize(
    "path", [(), ("wrong",), ("wrong", ONLINE), (ONLINE,), (TOKEN + "x", ONLINE)]
)
def test_missing_or_wrong_token_is_401(path: tuple[str, ...]) -> None:
    """With a token configured, a path without it as first segment is refused."""
    err = rejected(provider(TOKEN), request(path))
    assert (err.status, err.reason) == (401, "invalid token")


def test_rejection_never_echoes_the_token() -> None:
    """The 401 reason does not contain what was sent in the token position."""
    err = rejected(provider(TOKEN), request((TOKEN[:-1], ONLINE)))
    assert TOKEN[:-1] not in err.reason


def test_unconfigured_token_segment_is_ignored() -> None:
    """Without a configured token, /{anything}/{command} and /{anything} + body command work."""
    assert provider().handle(request(("leftover", ONLINE))).command == ONLINE
    assert provider().handle(request(("leftover",), body(OFFLINE))).command == OFFLINE


def test_too_many_segments_is_400() -> None:
    """More path than token and command is refused."""
    assert rejected(provider(TOKEN), request((TOKEN, "a", ONLINE))).status == 400


def test_unknown_command_is_acked_and_unused() -> None:
    """Other OpenIM callbacks (same URL) are acked, counted unused, body not parsed."""
    for req in (
        request(("callbackBeforeSendSingleMsgCommand",), b'{"content": 1}'),
        request(q=(("command", "callbackAfterSendGroupMsgCommand"),), data=b"{}"),
        request(data=b'{"callbackCommand": "callbackBeforeAddFriendCommand"}'),
    ):
        assert provider().handle(req) == Parsed(events=[], unused=1, command="other")


def test_missing_command_everywhere_is_400() -> None:
    """No command in path, query or body is a malformed request."""
    err = rejected(provider(), request(data=body(None)))
    assert (err.status, err.reason) == (400, "malformed body: missing callbackCommand")


@pytest.mark.parametrize(
    ("pid", "platform"),
    [
        (1, "ios"),
        (2, "android"),
        (3, "windows"),
        (4, "mac"),
        (5, "web"),
        (6, "miniprogram"),
        (7, "linux"),
        (8, "apad"),
        (9, "ipad"),
        (10, "server"),
        (11, "harmonyos"),
    ],
)
def test_platform_ids_are_normalized(pid: int, platform: str) -> None:
    """Each platformID maps to its platform; the device key is the id."""
    (ev,) = provider().handle(request((ONLINE,), body(platformID=pid, platform="x"))).events
    assert (ev.device, ev.platform) == (str(pid), platform)


def test_unknown_platform_id_falls_back_to_name() -> None:
    """A platformID not in the table uses the platform name."""
    (ev,) = provider().handle(request((ONLINE,), body(platformID=42, platform="OSX"))).events
    assert (ev.device, ev.platform) == ("42", "mac")


def test_missing_platform_id_is_derived_from_name() -> None:
    """Without platformID the id is derived from the platform name, keeping keys stable."""
    data = msgspec.json.encode({"userID": "bob", "platform": "Android", "seq": NOW})
    (ev,) = provider().handle(request((OFFLINE,), data)).events
    assert (ev.device, ev.platform) == ("2", "android")


def test_conn_id_is_the_device_key_when_set() -> None:
    """Two connections of one platform (OpenIM <= 3.7 connIDs) are two devices."""
    (a,) = provider().handle(request((ONLINE,), body(connID="c1"))).events
    (b,) = provider().handle(request((ONLINE,), body(connID="c2"))).events
    assert (a.device, b.device) == ("c1", "c2")
    assert a.platform == b.platform == "ios"


def test_empty_conn_id_falls_back_to_platform_id() -> None:
    """OpenIM >= 3.8.2 sends connID "": the device key is the platform id."""
    (ev,) = provider().handle(request((ONLINE,), body(connID=""))).events
    assert ev.device == "1"


def test_overlong_conn_id_is_400() -> None:
    """A connID over 256 characters is refused like any overlong device key."""
    assert rejected(provider(), request((ONLINE,), body(connID="c" * 257))).status == 400


@pytest.mark.parametrize("seq", [0, 123456, None])
def test_missing_or_counter_seq_uses_receive_time(seq: int | None) -> None:
    """seq missing, 0 or a small counter (old docs) falls back to now_ms."""
    fields = {} if seq is None else {"seq": seq}
    data = msgspec.json.encode({"userID": "bob", "platformID": 5, **fields})
    (ev,) = provider().handle(request((ONLINE,), data, now=NOW + 9)).events
    assert ev.time == NOW + 9


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"platformID": 1}',
        b'{"userID": "", "platformID": 1}',
        b'{"userID": 3, "platformID": 1}',
        b'{"userID": "bob", "platformID": "1"}',
        b'{"userID": "bob", "platformID": 1, "seq": -5}',
        b'{"userID": "bob", "platformID": 1, "seq": 1.5}',
    ],
)
def test_malformed_body_is_400(data: bytes) -> None:
    """Non-JSON, missing or empty userID and wrong types are 400."""
    err = rejected(provider(), request((ONLINE,), data))
    assert err.status == 400
    assert err.reason.startswith("malformed body")


def test_ip_allow_list_is_403() -> None:
    """A caller outside allowed_ips is refused with 403 before the token is checked."""
    assert rejected(provider(TOKEN, allowed_ips=["127.0.0.1"]), request()).status == 403
    assert provider(allowed_ips=["10.0.0.0/24"]).handle(request((ONLINE,))).events


def test_ok_ack_bytes() -> None:
    """OK is HTTP 200 with OpenIM's exact JSON ack."""
    reply = provider().ok()
    assert reply.status == 200
    assert reply.body == b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'


@pytest.mark.parametrize("status", [400, 401, 403, 413, 503])
def test_error_ack_bytes(status: int) -> None:
    """Failures use actionCode 1, errCode = the status, errMsg = the reason."""
    reply = provider().error(status, "why")
    assert reply.status == status
    expected = b'{"actionCode":1,"errCode":%d,"errMsg":"why","errDlt":"","nextCode":0}' % status
    assert reply.body == expected


def test_command_table_has_both_generations_of_three_hooks() -> None:
    """Six command names are known: online, offline, kick-off in both generations."""
    assert len(COMMANDS) == 6
    assert all(c.startswith(("callbackUser", "callbackAfterUser")) for c in COMMANDS)
