"""``[[apps.webhooks]]`` parsing: defaults, and errors that name the key."""

from __future__ import annotations

import pytest

from gateway.config import parse
from gateway.errors import ConfigError
from gateway.outbound.config import DEFAULT_SCHEDULE
from gateway.outbound.message import Message
from tests.receiver import SECRET, config_text


def test_defaults() -> None:
    """An endpoint with url and secret only gets online+offline and the default schedule."""
    text = (
        config_text([]) + f'\n[[apps.webhooks]]\nurl = "https://x.example/h"\nsecret = "{SECRET}"\n'
    )
    [endpoint] = parse(text, "t.toml").apps["nodes"].webhooks
    assert endpoint.events == ["user.online", "user.offline"]
    assert endpoint.retry_schedule_s == DEFAULT_SCHEDULE
    assert endpoint.timeout_s == 10.0
    assert SECRET not in repr(endpoint)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ((SECRET, "whsec_!!!notbase64"), "apps[0].webhooks[1].secret"),
        ((SECRET, "nope"), "apps[0].webhooks[1].secret"),
        ((SECRET, "whsec_!!" + SECRET[8:]), "apps[0].webhooks[1].secret"),
        ((SECRET, "whsec_c2hvcnQ="), "apps[0].webhooks[1].secret"),
        (('events = ["user.online"', 'events = ["user.gone"'), "apps[0].webhooks[1].events"),
        (("http://127.0.0.1:9/b", "ftp://x/b"), "apps[0].webhooks[1].url"),
        (("http://127.0.0.1:9/b", "http://127.0.0.1:9/a"), "apps[0].webhooks[1].url"),
        (("retry_schedule_s = [0.1, 0.2]", "retry_schedule_s = [-1]"), "apps[0].webhooks[1]"),
    ],
)
def test_errors_name_the_key(change: tuple[str, str], key: str) -> None:
    """A bad second endpoint is a startup error naming apps[0].webhooks[1].<key>."""
    text = config_text(["http://127.0.0.1:9/a"])
    second = config_text(["http://127.0.0.1:9/b"]).split("[[apps.webhooks]]")[1]
    text += "\n[[apps.webhooks]]" + second.replace(*change)
    with pytest.raises(ConfigError) as info:
        parse(text, "t.toml")
    assert str(info.value).find(key) >= 0, str(info.value)
    assert "whsec_!!!" not in str(info.value)


def test_webhook_id_stable_and_per_change() -> None:
    """webhook-id depends on app, user and v only: the same for every attempt and backend."""
    a = Message("app", "user.online", b'{"user":"bob","status":"online","v":5}', 1, "x")
    b = Message("app", "user.online", b'{"user":"bob","status":"online","v":5}', 2, "y")
    c = Message("app", "user.offline", b'{"user":"bob","status":"offline","v":6}', 2, "y")
    assert a.webhook_id() == b.webhook_id() != c.webhook_id()
    assert a.webhook_id().startswith("msg_")
