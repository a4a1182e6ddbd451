"""The heal scenario's server under test: the gateway with a ``heal-<provider>`` app that
reconciles with the simulator's pull APIs and a ``noheal-<provider>`` app that does not, per
provider (one IM provider per app); the simulator's signing secrets for each app."""

from __future__ import annotations

from dataclasses import replace

from bench.procs import Redis
from bench.target import (
    API_KEY,
    CALLBACK_TOKEN,
    CLIENT_SECRET,
    MAX_EVENT_AGE_S,
    RC_APP_KEY,
    RC_APP_SECRET,
    SDKAPPID,
    Target,
)
from gateway.config import parse as parse_config
from gateway.errors import ConfigError
from gateway.simulate.heal import PULL_PROVIDERS
from gateway.simulate.requests import Target as SimTarget

HEAL, NOHEAL = "heal", "noheal"
OPENIM_TOKEN = "bench-openim-path-token"
INTERVAL_S = 10.0
RATES = {"tencent": 100, "rongcloud": 100, "openim": 50}  # RongCloud's limit is 100/s


class HealTarget(Target):
    """The gateway with a ``heal-<p>`` app reconciling with ``pull_url`` and a ``noheal-<p>``
    app per provider ``p`` (``noheal`` ones only when ``reconcile`` is off)."""

    def __init__(self, pull_url: str, reconcile: bool, log_level: str = "warning") -> None:
        super().__init__(log_level=log_level, max_watch=1000)
        self.pull_url = pull_url
        self.reconcile = reconcile

    def kinds(self) -> list[str]:
        return [HEAL, NOHEAL] if self.reconcile else [NOHEAL]

    def config(self, redis: Redis | None) -> str:
        lines = [
            "[presence]",
            f"session_retention_s = {MAX_EVENT_AGE_S}",
            f"max_event_age_s = {MAX_EVENT_AGE_S}",
            "",
        ]
        if redis is not None:
            lines += ["[redis]", f'url = "{redis.url}"', f"cluster = {str(redis.cluster).lower()}"]
        for kind in self.kinds():
            for provider in PULL_PROVIDERS:
                url = self.pull_url if kind == HEAL else None
                lines += app_table(app_id(kind, provider), provider, url)
        return "\n".join(lines) + "\n"


def app_id(kind: str, provider: str) -> str:
    return f"{kind}-{provider}"


def app_table(app: str, provider: str, pull_url: str | None) -> list[str]:
    """One ``[[apps]]`` entry with one provider; its reconcile table when given a URL."""
    creds = SimTarget()
    lines = [
        "",
        "[[apps]]",
        f'id = "{app}"',
        f'client_secret = "{CLIENT_SECRET}-{app}"',
        f'api_key = "{API_KEY}"',
        "max_watch = 1000",
        f"[apps.{provider}]",
    ]
    lines += {
        "tencent": [f"sdkappid = {SDKAPPID}", f'callback_token = "{CALLBACK_TOKEN}"'],
        "rongcloud": [f'app_key = "{RC_APP_KEY}"', f'app_secret = "{RC_APP_SECRET}"'],
        "openim": [f'token = "{OPENIM_TOKEN}"'],
    }[provider]
    if pull_url is None:
        return lines
    lines += [f"[apps.{provider}.reconcile]", f'api_base = "{pull_url}"']
    lines += {
        "tencent": [
            f'admin = "{creds.tencent_admin}"',
            f'secret_key = "{creds.tencent_secret_key}"',
        ],
        "rongcloud": [],
        "openim": [
            f'admin_user = "{creds.openim_admin_user}"',
            f'secret = "{creds.openim_secret}"',
        ],
    }[provider]
    return [*lines, f"interval_s = {INTERVAL_S}", f"rate = {RATES[provider]}"]


def reconcile_wired() -> str | None:
    """None when the config takes reconcile tables, else why not (the scheduler's part)."""
    text = HealTarget("http://127.0.0.1:9", reconcile=True).config(None)
    try:
        parse_config(text, "<bench heal>", env={})
    except ConfigError as exc:
        return str(exc)
    return None


def sim_target(app: str) -> SimTarget:
    return replace(
        SimTarget(),
        app=app,
        tencent_sdkappid=SDKAPPID,
        tencent_token=CALLBACK_TOKEN,
        rongcloud_app_key=RC_APP_KEY,
        rongcloud_app_secret=RC_APP_SECRET,
        openim_token=OPENIM_TOKEN,
    )
