"""parse(build_request(x)) == x for Tencent, RongCloud, OpenIM and Standard Webhooks.

Each provider module's ``build_request`` is the inverse of its parser: simulate, bench, the
demo's dev helper and the tests send what it builds, so a wire form it gets wrong would hide
a parser bug everywhere. These properties draw events the provider can express (its
platforms, states, reasons, times) in each of its wire variants and check that the provider's
own ``handle`` (source check, verification, parsing) gives back exactly those events.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from gateway.backends.base import PresenceSettings
from gateway.model import PLATFORMS, PresenceEvent, custom_event
from gateway.providers import openim, rongcloud, standard, tencent
from gateway.providers.base import MAX_MS, WebhookRequest

NOW = 1763700000000
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

ids = st.text(min_size=1, max_size=40)  # any characters: the JSON carries them
times = st.integers(0, MAX_MS)
lags = st.integers(-30_000, 30_000)  # receive time minus signing time, inside every window
texts = st.text(max_size=25)  # at most 100 UTF-8 bytes: a custom the parsers keep whole


# -- Tencent -------------------------------------------------------------------------------

TENCENT_PLATFORMS = sorted(tencent.OPT_PLATFORM)
CUSTOM_IN: list[Literal["Info", "top"]] = ["Info", "top"]
ONLINE_REASONS = [r for r, (action, _) in tencent.ACTIONS.items() if action == "Login"]
OFFLINE_REASONS = [r for r, (action, _) in tencent.ACTIONS.items() if action != "Login"]


@st.composite
def tencent_calls(draw: st.DrawFn) -> tuple[PresenceEvent, list[str], list[PresenceEvent]]:
    """(event, kicked platforms, the events ``parse`` should give) of one StateChange."""
    user, time = draw(ids), draw(times)
    if draw(st.integers(0, 5)) == 0:
        ev = custom_event(user, draw(texts), time)
        return ev, [], [ev]
    platform = draw(st.sampled_from(TENCENT_PLATFORMS))
    online = draw(st.booleans())
    reason = draw(st.sampled_from(ONLINE_REASONS if online else OFFLINE_REASONS))
    ev = PresenceEvent(user, platform, platform, online, time, reason)
    if reason == "openkickinstance":  # the admin API: every login of the account ends
        return ev, [], [PresenceEvent(user, p, p, False, time, reason) for p in sorted(PLATFORMS)]
    kicked = draw(st.lists(st.sampled_from(TENCENT_PLATFORMS), max_size=3)) if online else []
    gone = [PresenceEvent(user, p, p, False, time, "kicked") for p in kicked]
    return ev, kicked, [ev, *gone]


@given(
    tencent_calls(),
    st.sampled_from(["", "cb-token"]),
    st.sampled_from(CUSTOM_IN),
    st.booleans(),
    lags,
)
def test_tencent_parse_of_build_is_identity(
    call: tuple[PresenceEvent, list[str], list[PresenceEvent]],
    token: str,
    custom_in: Literal["Info", "top"],
    macos: bool,
    lag: int,
) -> None:
    """Login, Logout, Disconnect, KickedDevice, admin kick, custom, signed or not: parse back."""
    ev, kicked, expected = call
    config = tencent.TencentConfig(sdkappid=1400000001, callback_token=token)
    opt = "macOS" if macos and ev.platform == "mac" else None  # Tencent writes it both ways
    req = tencent.build_request(
        config, ev, kicked=kicked, opt_platform=opt, custom_in=custom_in, now_ms=NOW
    )
    got = tencent.TencentProvider(config, PresenceSettings()).handle(received(req, NOW + lag))
    assert got.events == expected


# -- RongCloud -----------------------------------------------------------------------------

RC_CONFIG = rongcloud.RongCloudConfig(app_key="rk", app_secret="rs")
RC_STYLES: list[Literal["timestamp", "signTimestamp", "rc"]] = ["timestamp", "signTimestamp", "rc"]


@st.composite
def rongcloud_events(draw: st.DrawFn) -> PresenceEvent:
    state = draw(st.sampled_from([(True, ""), (False, "offline"), (False, "logout")]))
    platform = draw(st.sampled_from(sorted(rongcloud.OS_OF)))
    return PresenceEvent(draw(ids), draw(ids), platform, state[0], draw(times), state[1])


@given(
    st.lists(rongcloud_events(), max_size=8),
    st.sampled_from(RC_STYLES),
    st.booleans(),
    lags,
)
def test_rongcloud_parse_of_build_is_identity(
    events: list[PresenceEvent],
    style: Literal["timestamp", "signTimestamp", "rc"],
    single: bool,
    lag: int,
) -> None:
    """Any batch, under each generation's parameter names, array or one object, parses back."""
    single = single and len(events) == 1
    req = rongcloud.build_request(RC_CONFIG, events, now_ms=NOW, style=style, single=single)
    parsed = rongcloud.RongCloudProvider(RC_CONFIG, PresenceSettings()).handle(
        received(req, NOW + lag)
    )
    assert parsed.events == events
    assert parsed.replay_key  # the signed query is named for the route's replay claim


# -- OpenIM --------------------------------------------------------------------------------

COMMAND_IN: list[Literal["path", "query", "body"]] = ["path", "query", "body"]


@st.composite
def openim_events(draw: st.DrawFn) -> PresenceEvent:
    pid, platform = draw(st.sampled_from(sorted(openim.PLATFORM_IDS.items())))
    device = draw(st.one_of(st.just(str(pid)), ids))  # v3.8.2+: empty connID; older: connID
    state = draw(st.sampled_from([(True, ""), (False, ""), (False, "kicked")]))
    time = draw(st.integers(10**12, MAX_MS))  # seq: the sender's clock in ms
    return PresenceEvent(draw(ids), device, platform, state[0], time, state[1])


@given(
    openim_events(),
    st.sampled_from(["", "oi-token"]),
    st.sampled_from(COMMAND_IN),
    st.booleans(),
)
def test_openim_parse_of_build_is_identity(
    ev: PresenceEvent, token: str, command_in: Literal["path", "query", "body"], after: bool
) -> None:
    """Any callback, command in path, query or body, either name, token or not, parses back."""
    config = openim.OpenIMConfig(token=token)
    req = openim.build_request(config, ev, command_in=command_in, after=after)
    parsed = openim.OpenIMProvider(config, PresenceSettings()).handle(req)
    assert parsed.events == [ev]
    assert parsed.command == openim.command_of(ev, after=after)


# -- Standard Webhooks ---------------------------------------------------------------------

STD_CONFIG = standard.StandardConfig(secret=SECRET)


@st.composite
def standard_events(draw: st.DrawFn) -> PresenceEvent:
    user, time = draw(ids), draw(times)
    if draw(st.integers(0, 3)) == 0:
        return custom_event(user, draw(texts), time)
    state = draw(st.sampled_from([(True, ""), (False, "offline"), (False, "logout")]))
    platform = draw(st.sampled_from(sorted(PLATFORMS)))
    return PresenceEvent(user, draw(ids), platform, state[0], time, state[1])


@given(
    st.lists(standard_events(), max_size=8),
    st.one_of(st.none(), st.text("abcdefghij_0123456789", min_size=1, max_size=40)),
    lags,
)
def test_standard_parse_of_build_is_identity(
    events: list[PresenceEvent], msg_id: str | None, lag: int
) -> None:
    """Any mix of device and custom events (clears too), any webhook-id, parses back."""
    req = standard.build_request(STD_CONFIG, events, now_ms=NOW, msg_id=msg_id)
    got = standard.StandardProvider(STD_CONFIG, PresenceSettings()).handle(received(req, NOW + lag))
    assert got.events == events
    assert msg_id is None or req.headers["webhook-id"] == msg_id


def received(req: WebhookRequest, now_ms: int) -> WebhookRequest:
    """``req`` as the route reads it at ``now_ms``."""
    return dataclasses.replace(req, now_ms=now_ms)
