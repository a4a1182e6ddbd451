"""Startup warnings: unauthenticated provider tables and short secrets, never their values."""

from __future__ import annotations

import logging

import pytest

from gateway.config import dev_settings, parse
from gateway.startup import startup_warnings
from tests.live import serve

CLIENT_SECRET = "client-secret-0123456789-abcdefghij"
SHORT_KEY = "k3y-sh0rt"
SHORT_SECRET = "rc-s3cret"
GOOD_KEY = "an-api-key-long-enough-to-pass"

WEAK = f"""
[[apps]]
id = "weak"
client_secret = "{CLIENT_SECRET}"
api_key = "{SHORT_KEY}"

[apps.tencent]
sdkappid = 1400000000

[apps.openim]

[apps.rongcloud]
app_key = "rk"
app_secret = "{SHORT_SECRET}"
"""

STRONG = f"""
[[apps]]
id = "strong"
client_secret = "{CLIENT_SECRET}"
api_key = "{GOOD_KEY}"

[apps.tencent]
sdkappid = 1400000000
callback_token = "a-callback-token-of-some-length"

[apps.openim]
token = "an-openim-path-token-long-enough"

[apps.rongcloud]
app_key = "rk"
app_secret = "a-rongcloud-secret-long-enough"
"""


def test_weak_tables_and_short_secrets_are_named() -> None:
    """No callback_token, no OpenIM token, a short api_key and app_secret: one line each."""
    lines = startup_warnings(parse(WEAK, "weak.toml", env={}))
    text = "\n".join(lines)
    assert len(lines) == 4, lines
    assert "[apps.tencent] has no callback_token" in text
    assert "[apps.openim] has no token" in text
    assert "api_key is shorter than 16" in text
    assert "[apps.rongcloud]: app_secret is shorter than 16" in text
    assert all("'weak'" in line for line in lines)
    assert SHORT_KEY not in text and SHORT_SECRET not in text


def test_a_sound_config_has_no_warnings() -> None:
    """Every table authenticated with long secrets: nothing to say."""
    assert startup_warnings(parse(STRONG, "strong.toml", env={})) == []


def test_allowed_ips_is_mentioned_when_it_is_the_only_guard() -> None:
    """An unauthenticated table limited by allowed_ips says that only the list protects it."""
    text = WEAK.replace(
        "sdkappid = 1400000000", 'sdkappid = 1400000000\nallowed_ips = ["10.0.0.0/8"]'
    )
    lines = startup_warnings(parse(text, "weak.toml", env={}))
    tencent = next(line for line in lines if "[apps.tencent]" in line)
    assert "only allowed_ips" in tencent


def test_dev_tokens_outside_dev_mode_are_a_warning() -> None:
    """dev_tokens = true in a config file is worth a warning."""
    text = STRONG.replace(f'api_key = "{GOOD_KEY}"', f'api_key = "{GOOD_KEY}"\ndev_tokens = true')
    lines = startup_warnings(parse(text, "strong.toml", env={}))
    assert len(lines) == 1 and "dev_tokens" in lines[0]


def test_dev_mode_keeps_to_its_one_warning() -> None:
    """Dev mode's known secrets and open tables add nothing to its own single warning."""
    assert startup_warnings(dev_settings()) == []


async def test_the_warnings_are_logged_once_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    """Starting the gateway logs each warning once, and no secret reaches the log."""
    caplog.set_level(logging.INFO)
    settings = parse(WEAK, "weak.toml", env={})
    async with serve(settings):
        pass
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for line in startup_warnings(settings):
        assert sum(line in message for message in logged) == 1, line
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SHORT_KEY, SHORT_SECRET, CLIENT_SECRET):
        assert secret not in everything
