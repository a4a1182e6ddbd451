"""The parts every provider shares: config checks, the IP allow-list, ordering, registry."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from gateway.backends.base import PresenceSettings
from gateway.errors import GatewayError
from gateway.providers import CONFIGS, PROVIDERS
from gateway.providers.base import (
    MAX_ID_LENGTH,
    ProviderConfig,
    WebhookRejected,
    WebhookRequest,
    clip,
    decode,
    event,
    ip_allowed,
    parse_networks,
    parse_query,
    query_value,
    same_secret,
)
from gateway.providers.easemob import EasemobConfig
from gateway.providers.netease import NetEaseConfig
from gateway.providers.openim import OpenIMConfig
from gateway.providers.rongcloud import RongCloudConfig
from gateway.providers.standard import StandardConfig
from gateway.providers.tencent import TencentConfig, TencentProvider
from gateway.providers.wukongim import WuKongIMConfig

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def request(client_ip: str | None = "10.0.0.1", **kw: Any) -> WebhookRequest:
    fields: dict[str, Any] = {
        "path": (),
        "query": (),
        "headers": {},
        "body": b"{}",
        "client_ip": client_ip,
        "now_ms": 0,
    }
    fields.update(kw)
    return WebhookRequest(**fields)


def test_registry_maps_names_to_classes_and_configs() -> None:
    """PROVIDERS and CONFIGS cover the seven providers, keyed by each class's name."""
    assert dict(CONFIGS) == {
        "tencent": TencentConfig,
        "rongcloud": RongCloudConfig,
        "openim": OpenIMConfig,
        "standard": StandardConfig,
        "easemob": EasemobConfig,
        "netease": NetEaseConfig,
        "wukongim": WuKongIMConfig,
    }
    assert set(PROVIDERS) == set(CONFIGS)
    assert all(cls.name == name for name, cls in PROVIDERS.items())


@pytest.mark.parametrize(
    ("cls", "table"),
    [
        (TencentConfig, {"sdkappid": 1400000000, "callback_token": "t"}),
        (RongCloudConfig, {"app_key": "k", "app_secret": "s"}),
        (OpenIMConfig, {}),
        (StandardConfig, {"secret": SECRET}),
    ],
)
def test_configs_decode_from_toml_tables(cls: type[ProviderConfig], table: dict[str, Any]) -> None:
    """Each config decodes from its TOML table with allowed_ips defaulting to any."""
    cfg = msgspec.convert({**table, "allowed_ips": ["10.0.0.0/8"]}, cls)
    cfg.validate()
    assert cfg.allowed_ips == ["10.0.0.0/8"]
    assert msgspec.convert(table, cls).allowed_ips == []


@pytest.mark.parametrize("cls", list(CONFIGS.values()))
def test_configs_refuse_unknown_keys(cls: type[ProviderConfig]) -> None:
    """A misspelled key in a provider table is an error, not silently ignored."""
    with pytest.raises(msgspec.ValidationError, match="unknown field `alowed_ips`"):
        msgspec.convert({"alowed_ips": []}, cls)


def test_configs_check_types() -> None:
    """A value of the wrong type (sdkappid as a string) names the key."""
    with pytest.raises(msgspec.ValidationError, match=r"\$\.sdkappid"):
        msgspec.convert({"sdkappid": "1400000000"}, TencentConfig)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (TencentConfig(sdkappid=0), "sdkappid"),
        (TencentConfig(sdkappid=1, allowed_ips=["10.0.0.0/33"]), "allowed_ips"),
        (RongCloudConfig(app_key="k", app_secret=""), "app_secret"),
        (RongCloudConfig(app_key="", app_secret="s"), "app_key"),
        (OpenIMConfig(token="a/b"), "token"),
        (OpenIMConfig(token="callbackUserOnlineCommand"), "token"),
        (StandardConfig(secret="MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "secret"),
        (StandardConfig(secret="whsec_not*base64!"), "secret"),
        (StandardConfig(secret="whsec_c2hvcnQ="), "secret"),
    ],
)
def test_validate_names_the_bad_key(cfg: ProviderConfig, key: str) -> None:
    """validate() raises ValueError("key: reason") for well-typed but unusable values."""
    with pytest.raises(ValueError, match=f"^{key}: "):
        cfg.validate()


def test_validate_never_echoes_secrets() -> None:
    """A bad secret's error message does not contain the secret."""
    with pytest.raises(ValueError) as info:
        StandardConfig(secret="whsec_top*secret*value").validate()
    assert "top*secret" not in str(info.value)


def test_allow_list_accepts_cidrs_and_plain_addresses() -> None:
    """CIDRs, plain IPv4/IPv6 addresses and IPv4-mapped IPv6 clients are matched."""
    nets = parse_networks(["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"])
    assert ip_allowed("10.1.2.3", nets)
    assert ip_allowed("192.168.1.7", nets)
    assert ip_allowed("2001:db8::1", nets)
    assert ip_allowed("::ffff:10.9.9.9", nets)
    assert not ip_allowed("192.168.1.8", nets)
    assert not ip_allowed("2001:db9::1", nets)


@pytest.mark.parametrize("client_ip", [None, "", "testclient", "10.0.0.1.5"])
def test_allow_list_refuses_unknown_addresses(client_ip: str | None) -> None:
    """A missing or unparsable client address is never inside the allow-list."""
    assert not ip_allowed(client_ip, parse_networks(["0.0.0.0/0", "::/0"]))


def test_handle_refuses_address_outside_allow_list_with_403() -> None:
    """A caller outside allowed_ips gets 403 before any verification."""
    cfg = TencentConfig(sdkappid=1, allowed_ips=["10.0.0.0/8"])
    provider = TencentProvider(cfg, PresenceSettings())
    with pytest.raises(WebhookRejected) as info:
        provider.handle(request(client_ip="11.0.0.1"))  # also unsigned: 403 comes first
    assert info.value.status == 403


def test_handle_verifies_before_parsing() -> None:
    """A request that is both unauthenticated and malformed is refused with 401, not 400."""
    provider = TencentProvider(TencentConfig(sdkappid=1), PresenceSettings())
    req = request(query=(("SdkAppid", "2"), ("CallbackCommand", "State.StateChange")), body=b"[")
    with pytest.raises(WebhookRejected) as info:
        provider.handle(req)
    assert info.value.status == 401


def test_handle_refuses_extra_path_for_providers_without_one() -> None:
    """Path segments after a provider that takes none answer 404."""
    provider = TencentProvider(TencentConfig(sdkappid=1), PresenceSettings())
    with pytest.raises(WebhookRejected) as info:
        provider.handle(request(path=("x",)))
    assert info.value.status == 404


def test_provider_refuses_another_providers_config() -> None:
    """Building a provider with the wrong config class is a programmer error."""
    with pytest.raises(TypeError):
        TencentProvider(OpenIMConfig(), PresenceSettings())


def test_provider_validates_its_config() -> None:
    """A provider cannot be built from a config that fails validate()."""
    with pytest.raises(ValueError, match="allowed_ips"):
        TencentProvider(TencentConfig(sdkappid=1, allowed_ips=["nope"]), PresenceSettings())


def test_webhook_rejected_carries_status_and_reason() -> None:
    """WebhookRejected is a GatewayError with the status and the safe reason."""
    exc = WebhookRejected(401, "invalid Sign")
    assert isinstance(exc, GatewayError)
    assert (exc.status, exc.reason) == (401, "invalid Sign")


def test_decode_turns_bad_json_into_400_with_capped_reason() -> None:
    """Malformed JSON, wrong types and invalid UTF-8 become 400s whose reason stays short."""
    for body in (b"not json", b'{"a":1}', b'"\xff"'):
        with pytest.raises(WebhookRejected) as info:
            decode(body, list[int])
        assert info.value.status == 400
        assert info.value.reason.startswith("malformed body: ")
    with pytest.raises(WebhookRejected) as info:
        decode(b'"' + b"x" * 10_000 + b'"', int)
    assert len(info.value.reason) <= 160


def test_event_refuses_empty_and_overlong_ids() -> None:
    """User ids and device keys must be 1..256 characters, else 400."""
    assert event("u" * MAX_ID_LENGTH, "d", "web", True, 1).user == "u" * MAX_ID_LENGTH
    for user, device in (("", "d"), ("u", ""), ("u" * (MAX_ID_LENGTH + 1), "d")):
        with pytest.raises(WebhookRejected) as info:
            event(user, device, "web", True, 1)
        assert info.value.status == 400


def test_same_secret_handles_any_characters() -> None:
    """The constant-time comparison works for non-ASCII input instead of raising."""
    assert same_secret("tökén", "tökén")
    assert not same_secret("tökén", "token")


def test_clip_caps_long_text() -> None:
    """clip() leaves short text alone and cuts long text to the limit."""
    assert clip("short") == "short"
    assert len(clip("x" * 500, 50)) == 50


QUERY_PIECES = st.sampled_from(["a", "B", "=", "&", "+", "%", "%2", "%2F", "%C3%A9", "%E9", "é"])


@given(raw=st.lists(QUERY_PIECES).map("".join).map(str.encode) | st.binary())
def test_parse_query_reads_like_starlette(raw: bytes) -> None:
    """parse_query gives exactly Starlette's QueryParams(raw).multi_items(), for any bytes."""
    assert parse_query(raw) == tuple(QueryParams(raw).multi_items())


def test_query_value_takes_the_first_match_folding_case_on_request() -> None:
    """query_value returns the first value under any of the names; fold ignores case."""
    req = request(query=parse_query(b"sign=a&Sign=b&x=1"))
    assert query_value(req, "Sign") == "b"
    assert query_value(req, "Sign", fold=True) == "a"
    assert query_value(req, "y", "X", fold=True) == "1"
    assert query_value(req, "y") is None


def test_provider_tables_never_show_their_secrets_in_repr() -> None:
    """repr() of every provider table (tracebacks, debuggers, logs) hides its secrets."""
    from gateway.config import dev_settings

    tables = dev_settings().apps["demo"].providers()
    secrets = {
        getattr(table, name)
        for table in tables.values()
        for name in type(table).SECRET_FIELDS
        if getattr(table, name, "")
    }
    assert len(secrets) >= 4  # rongcloud, standard, easemob, netease (the tokens are empty)
    for table in tables.values():
        text = repr(table)
        assert type(table).__name__ in text
        assert not any(secret in text for secret in secrets), text
