"""Config loading: TOML, environment, dev mode, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config
from gateway.cli import main
from gateway.errors import ConfigError

GOOD = """
[redis]
url = "redis://127.0.0.1:6379/0"

[presence]
offline_grace_ms = 1500

[[apps]]
id = "acme"
client_secret = "cs-0123456789abcdef0123456789abcdef"
api_key = "ak"
watch_policy = "token"

[apps.tencent]
sdkappid = 1400000001
callback_token = "tok"

[apps.rongcloud]
app_key = "k"
app_secret = "s"

[apps.openim]

[apps.standard]
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"""


def test_good_file_parses() -> None:
    """A complete config yields the apps, providers, presence windows and Redis URL."""
    s = config.parse(GOOD, "gw.toml", env={})
    assert list(s.apps) == ["acme"]
    app = s.apps["acme"]
    assert app.watch_policy == "token"
    assert sorted(app.providers()) == ["openim", "rongcloud", "standard", "tencent"]
    assert s.presence.offline_grace_ms == 1500
    assert s.redis is not None and s.redis.url == "redis://127.0.0.1:6379/0"
    assert not s.dev_mode


def test_redis_url_env_overrides_file() -> None:
    """REDIS_URL replaces [redis] url."""
    s = config.parse(GOOD, "gw.toml", env={"REDIS_URL": "redis://10.0.0.1:7000/1"})
    assert s.redis is not None and s.redis.url == "redis://10.0.0.1:7000/1"


def test_no_redis_table_means_memory() -> None:
    """Without [redis] and REDIS_URL the in-memory backend is used."""
    text = GOOD.split("[presence]")[1]
    s = config.parse("[presence]" + text, "gw.toml", env={})
    assert s.redis is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD.replace('id = "acme"', 'id = "acme"\ncolour = "red"'), "apps[0]"),
        (GOOD.replace("sdkappid = 1400000001", 'sdkappid = "x"'), "apps[0].tencent.sdkappid"),
        (GOOD.replace('client_secret = "cs-0123456789abcdef0123456789abcdef"\n', ""), "apps[0]"),
        (GOOD.replace("cs-0123456789abcdef0123456789abcdef", "short"), "apps[0].client_secret"),
        (GOOD.replace('api_key = "ak"', 'api_key = ""'), "apps[0].api_key"),
        (GOOD.replace('id = "acme"', 'id = "a c"'), "apps[0].id"),
        (GOOD.replace('watch_policy = "token"', 'watch_policy = "closed"'), "watch_policy"),
        (GOOD.replace("offline_grace_ms = 1500", "offline_grace_ms = -1"), "offline_grace_ms"),
        (GOOD.replace("offline_grace_ms = 1500", "session_retention_s = 10"), "retention"),
        (GOOD + GOOD.split("[presence]\noffline_grace_ms = 1500")[1], "apps[1].id"),
        (
            GOOD + GOOD.split("[presence]\noffline_grace_ms = 1500")[1].replace("acme", "beta"),
            "apps[1].client_secret",
        ),
        ("[[apps]\n", "<syntax>"),
        ("", "apps"),
    ],
)
def test_errors_name_key_and_file(text: str, key: str) -> None:
    """Unknown keys, wrong types, missing secrets and duplicates are errors naming key and file."""
    with pytest.raises(ConfigError) as info:
        config.parse(text, "gw.toml", env={})
    assert "gw.toml" in str(info.value)
    assert key in str(info.value)


def test_errors_never_show_secrets() -> None:
    """A config error message does not echo the secrets of the file."""
    text = GOOD.replace("sdkappid = 1400000001", 'sdkappid = "x"')
    with pytest.raises(ConfigError) as info:
        config.parse(text, "gw.toml", env={})
    for secret in ("tok", "cs-0123", '"ak"', "whsec_"):
        assert secret not in str(info.value)
    assert "cs-0123" not in repr(config.parse(GOOD, "gw.toml", env={}).apps["acme"])


def test_dev_mode_without_config() -> None:
    """No config file and no PRESENCE_CONFIG: dev mode, app demo, memory, dev tokens."""
    s = config.load(None, env={})
    assert s.dev_mode and s.redis is None
    assert s.apps["demo"].dev_tokens


def test_presence_config_env(tmp_path: Path) -> None:
    """PRESENCE_CONFIG names the file to load."""
    f = tmp_path / "gw.toml"
    f.write_text(GOOD)
    s = config.load(None, env={"PRESENCE_CONFIG": str(f)})
    assert s.source == str(f) and "acme" in s.apps


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`presence-gateway check-config` exits 0 on a good file and 2 naming the key on a bad one."""
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr()
    assert "ok" in out.out and "warning: " in out.err  # GOOD's short api_key is warned about
    assert '"ak"' not in out.err and "= ak" not in out.err  # never a secret's value
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("max_watch", "x").replace('api_key = "ak"', "api_key = 1"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "apps[0].api_key" in err
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_presence_config_is_an_error(value: str) -> None:
    """PRESENCE_CONFIG set to an empty string is a startup error naming it, never dev mode."""
    with pytest.raises(ConfigError) as info:
        config.load(None, env={"PRESENCE_CONFIG": value}, host="127.0.0.1")
    assert "PRESENCE_CONFIG" in str(info.value)
    with pytest.raises(ConfigError):
        config.load("", env={})  # --config "" too


def test_missing_presence_config_file_is_an_error(tmp_path: Path) -> None:
    """PRESENCE_CONFIG naming a file that does not exist is an error naming the file."""
    missing = str(tmp_path / "gw.tmol")
    with pytest.raises(ConfigError) as info:
        config.load(None, env={"PRESENCE_CONFIG": missing}, host="0.0.0.0")
    assert missing in str(info.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.internal"])
def test_dev_mode_refused_off_loopback(host: str) -> None:
    """With no config, asking to listen on a non-loopback address refuses dev mode."""
    with pytest.raises(ConfigError) as info:
        config.load(None, env={"REDIS_URL": "redis://prod:6379/0"}, host=host)
    assert "PRESENCE_CONFIG" in str(info.value) and "loopback" in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_dev_mode_allowed_on_loopback(host: str) -> None:
    """With no config, a loopback bind address starts dev mode."""
    assert config.load(None, env={}, host=host).dev_mode


def test_config_file_may_listen_anywhere(tmp_path: Path) -> None:
    """A real config file is not limited to loopback."""
    f = tmp_path / "gw.toml"
    f.write_text(GOOD)
    s = config.load(None, env={"PRESENCE_CONFIG": str(f)}, host="0.0.0.0")
    assert not s.dev_mode and "acme" in s.apps
