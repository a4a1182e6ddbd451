"""``[apps.<provider>.reconcile]`` tables and ``max_silence_s`` in the config file (SPEC 2, 8)."""

from __future__ import annotations

import pytest

from gateway.config import parse
from gateway.errors import ConfigError
from gateway.reconcile.targets import targets

HEAD = """
[[apps]]
id = "a"
client_secret = "0123456789abcdef0123456789abcdef"
api_key = "key"
"""

TABLES = """
[apps.tencent]
sdkappid = 1400000000
max_silence_s = 900
[apps.tencent.reconcile]
secret_key = "tencent-secret-key"
interval_s = 60
rate = 20

[apps.rongcloud]
app_key = "k"
app_secret = "s"
[apps.rongcloud.reconcile]

[apps.openim]
[apps.openim.reconcile]
api_base = "http://openim:10002"
secret = "openIM123"

[apps.standard]
secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
max_silence_s = 30

[apps.netease]
app_key = "n"
app_secret = "s"
"""


def test_tables_become_targets() -> None:
    """Each reconcile table, and each max_silence_s without one, is a target with its
    interval and silence; a provider with neither is none."""
    settings = parse(HEAD + TABLES, "gateway.toml")
    found = {
        t.provider: (t.interval_s, t.silence_ms, t.make_client is not None)
        for t in targets({a.id: a.providers() for a in settings.apps.values()})
    }
    assert found == {
        "tencent": (60.0, 900_000, True),
        "rongcloud": (300.0, 0, True),
        "openim": (300.0, 0, True),
        "standard": (300.0, 30_000, False),
    }


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[apps.tencent]\nsdkappid = 1\n[apps.tencent.reconcile]\n", "secret_key"),
        (
            '[apps.tencent]\nsdkappid = 1\n[apps.tencent.reconcile]\nsecret_key = "k"\n'
            'api_base = "ftp://x"\n',
            "reconcile.api_base",
        ),
        (
            '[apps.tencent]\nsdkappid = 1\n[apps.tencent.reconcile]\nsecret_key = "k"\n'
            "interval_s = 0\n",
            "interval_s",
        ),
        (
            '[apps.openim]\n[apps.openim.reconcile]\napi_base = "http://x"\nsurprise = 1\n',
            "surprise",
        ),
        ("[apps.openim]\nmax_silence_s = -1\n", "max_silence_s"),
    ],
)
def test_bad_tables_name_the_key(table: str, key: str) -> None:
    """A missing, unknown or unusable reconcile key, or a negative max_silence_s, is a startup
    error naming the key and the file."""
    with pytest.raises(ConfigError) as caught:
        parse(HEAD + table, "gateway.toml")
    assert key in str(caught.value) and "gateway.toml" in str(caught.value)


def test_secret_key_never_in_a_repr() -> None:
    """The reconcile secrets do not show in the config's repr (tracebacks, debuggers)."""
    settings = parse(HEAD + TABLES, "gateway.toml")
    text = repr(settings) + repr(settings.apps["a"].tencent) + repr(settings.apps["a"].openim)
    assert "tencent-secret-key" not in text and "openIM123" not in text
