"""Settings: the only reader of the environment and the TOML config file (SPEC section 2)."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from gateway.backends.base import PresenceSettings
from gateway.edge import is_loopback
from gateway.errors import ConfigError
from gateway.outbound.config import WebhookEndpoint
from gateway.outbound.config import check as check_webhooks
from gateway.providers import CONFIGS
from gateway.providers.base import ProviderConfig, parse_networks
from gateway.providers.easemob import EasemobConfig
from gateway.providers.netease import NetEaseConfig
from gateway.providers.openim import OpenIMConfig
from gateway.providers.rongcloud import RongCloudConfig
from gateway.providers.standard import StandardConfig
from gateway.providers.tencent import TencentConfig
from gateway.providers.wukongim import WuKongIMConfig
from gateway.types import APP_ID_PATTERN as APP_ID_PATTERN  # the name openapi.py imports
from gateway.types import AppId

log = logging.getLogger(__name__)

Secret = Annotated[str, msgspec.Meta(min_length=1)]


class RedisConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[redis]`` table; absent means the in-memory backend."""

    url: Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix)://")]
    cluster: bool = False


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``[server]`` table: how the gateway meets the network."""

    # CIDRs of reverse proxies whose X-Forwarded-For is believed (SPEC section 3)
    trusted_proxies: list[str] = []
    # an HTTP request whose headers or body do not arrive within this many seconds is dropped
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    # open connections (HTTP and WebSocket) per process, and per client address
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    max_connections_per_ip: Annotated[int, msgspec.Meta(ge=1)] = 1_000
    # largest webhook or API request body, in bytes (413 past it)
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # WebSocket pong bytes a client leaves unread before it is closed with 4008
    pong_high_water_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 256 * 1024


class ConnectionsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``[connections]`` table: how the gateway treats client connections (WebSocket and
    SSE streams) and its fan-out to them. Per connection unless said otherwise."""

    # seconds a new WebSocket has to send its hello before it is closed with 4001
    hello_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    # how often clients ping (sent in the welcome) and SSE streams get a ping comment
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=1000, le=3_600_000)] = 25_000
    # seconds without a message before a WebSocket client is dropped with 1001
    # (more than heartbeat_ms; the default allows two missed pings)
    idle_limit_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 75.0
    # bytes unsent to a client before it counts as behind: its requests wait, its replies
    # queue up to this many bytes more, then it is closed with 4008
    high_water_bytes: Annotated[int, msgspec.Meta(ge=4096, le=64 * 1024 * 1024)] = 256 * 1024
    # seconds a client may stay behind before it is closed with 4008 (SSE: cut)
    slow_close_after_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    # client messages per second, sustained, and in a burst; past them: 4009
    messages_per_s: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 20.0
    message_burst: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 40
    # users a connection may read from the store at once (at least; max_watch if larger),
    # and the seconds that allowance takes to refill: a watch past it waits
    store_read_burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100
    store_read_refill_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    # users per store read (snapshots and resyncs)
    store_read_chunk: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    # seconds between flushes to clients under load (at once when the node is idle)
    flush_tick_s: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.002
    # seconds the node waits before unsubscribing users nobody watches (batches churn)
    unsubscribe_delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    # the reconnect delay SSE clients are told (the stream's "retry:" field)
    sse_retry_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 2000
    # seconds a browser may cache the SSE endpoint's CORS preflight answer
    sse_preflight_max_age_s: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 600


class AppConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[apps]]`` entry: an isolated tenant with its own secrets and providers."""

    id: AppId
    client_secret: Annotated[str, msgspec.Meta(min_length=32)]  # HS256 wants >= 32 bytes
    api_key: Secret
    watch_policy: Literal["open", "token"] = "open"
    max_watch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    allowed_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])
    dev_tokens: bool = False
    max_connections_per_user: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 16
    tencent: TencentConfig | None = None
    rongcloud: RongCloudConfig | None = None
    openim: OpenIMConfig | None = None
    standard: StandardConfig | None = None
    easemob: EasemobConfig | None = None
    netease: NetEaseConfig | None = None
    wukongim: WuKongIMConfig | None = None
    webhooks: list[WebhookEndpoint] = []  # presence webhooks out (SPEC 9)

    def providers(self) -> dict[str, ProviderConfig]:
        """The configured provider tables by provider name."""
        tables = {name: getattr(self, name) for name in CONFIGS}
        return {name: cfg for name, cfg in tables.items() if cfg is not None}

    def __repr__(self) -> str:  # never show secrets, even in a debugger or a traceback
        return f"AppConfig(id={self.id!r}, providers={sorted(self.providers())})"


class _File(msgspec.Struct, forbid_unknown_fields=True):
    apps: Annotated[list[AppConfig], msgspec.Meta(min_length=1)]
    redis: RedisConfig | None = None
    presence: PresenceSettings = PresenceSettings()
    server: ServerConfig = ServerConfig()
    connections: ConnectionsConfig = ConnectionsConfig()


class Settings(msgspec.Struct, frozen=True):
    """Everything the gateway needs to start."""

    apps: dict[str, AppConfig]
    presence: PresenceSettings = PresenceSettings()
    redis: RedisConfig | None = None
    server: ServerConfig = ServerConfig()
    connections: ConnectionsConfig = ConnectionsConfig()
    source: str = "<dev mode>"
    dev_mode: bool = False


DEV_STANDARD_SECRET = "whsec_ZGV2LW9ubHktc3RhbmRhcmQtd2ViaG9va3Mtc2VjcmV0"


def dev_settings(redis_url: str | None = None) -> Settings:
    """Dev mode: one app ``demo`` with well-known secrets, in memory unless REDIS_URL is set."""
    app = AppConfig(
        id="demo",
        client_secret="dev-client-secret-not-for-production",
        api_key="dev-api-key",
        dev_tokens=True,
        tencent=TencentConfig(sdkappid=1400000000),
        rongcloud=RongCloudConfig(app_key="demo-app-key", app_secret="demo-app-secret"),
        openim=OpenIMConfig(),
        standard=StandardConfig(secret=DEV_STANDARD_SECRET),
        easemob=EasemobConfig(appkey="demo#demo", secret="demo-easemob-callback-secret"),
        netease=NetEaseConfig(app_key="demo-netease-app-key", app_secret="demo-netease-secret"),
        wukongim=WuKongIMConfig(),  # no token: no path segment (WuKongIM signs nothing)
    )
    redis = RedisConfig(url=redis_url) if redis_url else None
    return Settings(apps={"demo": app}, redis=redis, dev_mode=True)


def _key_of(path: str) -> str:
    """Turn msgspec's ``$.apps[0].tencent`` into ``apps[0].tencent``."""
    return path.removeprefix("$").removeprefix(".") or "<top level>"


def parse(text: str, source: str, env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate a TOML config; every error names the key and the file."""
    env = os.environ if env is None else env
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<syntax>", str(exc), source) from None
    try:
        data = msgspec.convert(raw, _File)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = re.search(r" - at `([^`]*)`$", message)
        key = _key_of(match.group(1)) if match else "<top level>"
        reason = message[: match.start()] if match else message
        raise ConfigError(key, reason, source) from None
    apps: dict[str, AppConfig] = {}
    secrets: set[str] = set()
    for i, app in enumerate(data.apps):
        if app.id in apps:
            raise ConfigError(f"apps[{i}].id", f"duplicate app id {app.id!r}", source)
        if app.client_secret in secrets:  # a token of one app must be worthless in another
            raise ConfigError(f"apps[{i}].client_secret", "shared with another app", source)
        secrets.add(app.client_secret)
        for name, table in app.providers().items():
            try:
                table.validate()
            except ValueError as exc:
                key, _, reason = str(exc).partition(": ")
                raise ConfigError(f"apps[{i}].{name}.{key}", reason or "invalid", source) from None
        try:
            check_webhooks(app.webhooks)
        except ValueError as exc:
            key, _, reason = str(exc).partition(": ")
            raise ConfigError(f"apps[{i}].webhooks{key}", reason or "invalid", source) from None
        apps[app.id] = app
    p = data.presence
    for key in (
        "offline_grace_ms",
        "session_retention_s",
        "max_event_age_s",
        "future_skew_s",
        "last_seen_retention_s",
    ):
        if getattr(p, key) < 0:
            raise ConfigError(f"presence.{key}", "must be >= 0", source)
    if not 1 <= p.max_devices_per_user <= 10_000:
        raise ConfigError("presence.max_devices_per_user", "must be from 1 to 10000", source)
    if p.last_seen_retention_s < p.session_retention_s:
        raise ConfigError(
            "presence.last_seen_retention_s", "must be >= session_retention_s", source
        )
    if p.session_retention_s < p.max_event_age_s:
        raise ConfigError(
            "presence.session_retention_s",
            "must be >= max_event_age_s (a tombstone must outlive every event it can beat)",
            source,
        )
    redis = data.redis
    if url := env.get("REDIS_URL"):
        redis = RedisConfig(url=url, cluster=redis.cluster if redis else False)
    try:
        parse_networks(data.server.trusted_proxies)
    except ValueError as exc:
        _, _, reason = str(exc).partition(": ")
        raise ConfigError("server.trusted_proxies", reason, source) from None
    c = data.connections
    if c.idle_limit_s * 1000 <= c.heartbeat_ms:
        raise ConfigError(
            "connections.idle_limit_s", "must be more than heartbeat_ms (a ping's interval)", source
        )
    return Settings(
        apps=apps,
        presence=p,
        redis=redis,
        server=data.server,
        connections=c,
        source=source,
    )


def load(
    path: str | None = None, env: Mapping[str, str] | None = None, *, host: str | None = None
) -> Settings:
    """Settings from ``path``, else ``PRESENCE_CONFIG``, else dev mode (SPEC section 2).

    Dev mode fails closed: a ``PRESENCE_CONFIG`` that is set but empty, or names a file that
    cannot be read, is an error, never dev mode; and with ``host`` given, dev mode is refused
    unless that bind address is a loopback one.
    """
    env = os.environ if env is None else env
    if path is None and "PRESENCE_CONFIG" in env:
        path = env["PRESENCE_CONFIG"]
        source = "PRESENCE_CONFIG"
    else:
        source = "--config"
    if path is not None:
        if not path.strip():
            raise ConfigError(
                source, "is set but empty (unset it to run in dev mode on loopback)", "<startup>"
            )
        return parse_file(path, env)
    if host is not None and not is_loopback(host):
        raise ConfigError(
            "PRESENCE_CONFIG",
            f"no config file, and dev mode (well-known secrets) only listens on loopback, "
            f"not {host[:64]!r}: set PRESENCE_CONFIG or --config, or bind 127.0.0.1",
            "<startup>",
        )
    return dev_settings(env.get("REDIS_URL") or None)


def parse_file(path: str, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the TOML file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read: {exc.strerror}", path) from None
    return parse(text, path, env)
