"""Id patterns match the whole string: a trailing newline is never part of a valid id."""

from __future__ import annotations

import pytest

from gateway import config
from gateway.app import _WS_PATH
from gateway.errors import ConfigError

CONFIG = """
[[apps]]
id = "{id}"
client_secret = "cs-0123456789abcdef0123456789abcdef"
api_key = "ak"
"""


def test_app_id_with_trailing_newline_is_a_config_error() -> None:
    """An app id "demo\\n" is refused at startup, naming the key; "demo" is accepted."""
    assert "demo" in config.parse(CONFIG.format(id="demo"), "t.toml").apps
    with pytest.raises(ConfigError) as info:
        config.parse(CONFIG.format(id="demo\\n"), "t.toml")
    assert "id" in str(info.value)


@pytest.mark.parametrize("path", ["/v1/apps/demo/ws\n", "/v1/apps/demo\n/ws", "/v1/apps//ws"])
def test_ws_path_refuses_trailing_newline(path: str) -> None:
    """The WebSocket path regex matches only a whole, newline-free path."""
    assert _WS_PATH.match(path) is None
    match = _WS_PATH.match("/v1/apps/demo/ws")
    assert match is not None and match.group(1) == "demo"
