"""``presence-gateway token``: a client token signed with the app's client_secret (SPEC 2)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from gateway import config, tokens
from gateway.cli import main
from tests.live import serve
from tests.wsclient import Client

ROOT = Path(__file__).resolve().parent.parent
TWO_APPS = """
[[apps]]
id = "acme"
client_secret = "acme-client-secret-0123456789abcdef"
api_key = "acme-api-key"

[[apps]]
id = "globex"
client_secret = "globex-client-secret-0123456789abcdef"
api_key = "globex-api-key"
"""


@pytest.fixture
def two_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PRESENCE_CONFIG", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = tmp_path / "gateway.toml"
    path.write_text(TWO_APPS)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["token", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_token_verifies_for_its_app_only(
    two_apps: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed token verifies with the app's secret, carries user and watch list, and is
    refused by another app's secret."""
    rc, out, err = run(
        capsys, "--config", str(two_apps), "--app", "acme", "--user", "bob", "--watch", "a, b,"
    )
    assert rc == 0, err
    token = out.strip()
    settings = config.parse_file(str(two_apps))
    acme, globex = settings.apps["acme"], settings.apps["globex"]
    claims = tokens.verify(token, acme.client_secret, "acme")
    assert claims.sub == "bob"
    assert claims.watch == frozenset({"a", "b"})
    assert abs(claims.exp - (time.time() + 3600)) < 60  # default ttl
    with pytest.raises(tokens.TokenError):
        tokens.verify(token, globex.client_secret, "globex")


def test_ttl_sets_the_expiry(two_apps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--ttl S makes the token expire S seconds from now; no --watch means no watch claim."""
    rc, out, _ = run(
        capsys, "--config", str(two_apps), "--app", "globex", "--user", "u", "--ttl", "60"
    )
    assert rc == 0
    secret = config.parse_file(str(two_apps)).apps["globex"].client_secret
    claims = tokens.verify(out.strip(), secret, "globex")
    assert abs(claims.exp - (time.time() + 60)) < 10
    assert claims.watch is None


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--app", "initech", "--user", "u"], "unknown app 'initech'"),
        (["--app", "acme", "--user", "u", "--ttl", "0"], "--ttl must be"),
        (["--app", "acme", "--user", "u", "--ttl", "-5"], "--ttl must be"),
        (["--app", "acme", "--user", "u", "--ttl", "99999999999"], "--ttl must be"),
        (["--app", "acme", "--user", ""], "--user must be"),
        (["--app", "acme", "--user", "u", "--watch", "x" * 300], "--watch user ids"),
    ],
)
def test_bad_input_exits_2_with_a_reason(
    two_apps: Path, capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    """An unknown app, a ttl out of range or a bad user id: exit 2, a reason, no token."""
    rc, out, err = run(capsys, "--config", str(two_apps), *argv)
    assert (rc, out) == (2, "")
    assert reason in err and "Traceback" not in err


def test_non_numeric_ttl_exits_2(two_apps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--ttl that is not a number is a usage error (exit 2) naming --ttl."""
    with pytest.raises(SystemExit) as exc:
        main(["token", "--config", str(two_apps), "--app", "acme", "--user", "u", "--ttl", "1h"])
    assert exc.value.code == 2
    assert "--ttl" in capsys.readouterr().err


@pytest.mark.parametrize("text", [None, "[[apps]]\nid = 'x'\n", "not toml ["])
def test_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None
) -> None:
    """A missing, invalid or unparsable config file: exit 2 with "config error", no token."""
    path = tmp_path / "gateway.toml"
    if text is not None:
        path.write_text(text)
    rc, out, err = run(capsys, "--config", str(path), "--app", "x", "--user", "u")
    assert (rc, out) == (2, "")
    assert err.startswith("presence-gateway token: config error:"), err


def test_presence_config_is_used_without_config_flag(
    two_apps: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config the token is signed for the app of $PRESENCE_CONFIG."""
    monkeypatch.setenv("PRESENCE_CONFIG", str(two_apps))
    rc, out, err = run(capsys, "--app", "globex", "--user", "u")
    assert rc == 0, err
    secret = config.parse_file(str(two_apps)).apps["globex"].client_secret
    assert tokens.verify(out.strip(), secret, "globex").sub == "u"


def test_dev_mode_demo_app_without_any_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither --config nor $PRESENCE_CONFIG the token is for dev mode's demo app."""
    monkeypatch.delenv("PRESENCE_CONFIG", raising=False)
    rc, out, err = run(capsys, "--app", "demo", "--user", "alice")
    assert rc == 0, err
    demo = config.dev_settings().apps["demo"]
    assert tokens.verify(out.strip(), demo.client_secret, "demo").sub == "alice"


async def test_a_real_gateway_welcomes_the_printed_token(two_apps: Path) -> None:
    """The token printed by a real `python -m gateway token` process opens a session on a real
    gateway of that config (hello → welcome over a real WebSocket)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_CONFIG", "REDIS_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "token", "--config", str(two_apps), "--app", "acme", "--user", "bob"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    async with serve(config.parse_file(str(two_apps))) as gw:
        client = await Client.open(gw.ws_url, "acme")
        try:
            welcome = await client.hello(out.decode().strip())
            assert welcome["type"] == "welcome" and welcome["user"] == "bob", welcome
        finally:
            await client.close()
