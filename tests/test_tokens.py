"""Client token checks (SPEC section 5): clock leeway, and hostile time claims refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from typing import Any

import jwt
import pytest

from gateway import tokens
from tests.test_e2e_webhooks import app_of, make_settings
from tests.test_ws_protocol import running

SECRET = "a-client-secret-of-at-least-32-bytes"
APP = "app1"


def signed(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256")


def signed_raw(payload_json: str, secret: str = SECRET) -> str:
    """An HS256 token over a payload written by hand (numbers json.dumps cannot write)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload_json.encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


def later(seconds: float) -> int:
    return int(time.time() + seconds)


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_a_backend_clock_slightly_ahead_is_forgiven(claim: str) -> None:
    """iat or nbf 2 s in the future (a backend clock ahead) verifies: no reconnect loop."""
    token = signed({"sub": "alice", "exp": later(600), claim: later(2)})
    assert tokens.verify(token, SECRET, APP).sub == "alice"


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_a_time_claim_beyond_the_leeway_is_refused(claim: str) -> None:
    """iat or nbf further ahead than the leeway is refused."""
    token = signed({"sub": "alice", "exp": later(600), claim: later(tokens.LEEWAY_S + 10)})
    with pytest.raises(tokens.TokenError):
        tokens.verify(token, SECRET, APP)


def test_expiry_gets_the_leeway_and_no_more() -> None:
    """A token expired 2 s ago still verifies; one expired beyond the leeway is refused."""
    assert tokens.verify(signed({"sub": "a", "exp": later(-2)}), SECRET, APP).sub == "a"
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(signed({"sub": "a", "exp": later(-tokens.LEEWAY_S - 2)}), SECRET, APP)


def test_deadline_includes_the_leeway() -> None:
    """A connection lives until exp plus the leeway, so a token let in is not closed at once."""
    exp = later(600) + 0.5
    claims = tokens.verify(signed({"sub": "a", "exp": exp}), SECRET, APP)
    assert claims.exp == exp
    assert claims.deadline() == exp + tokens.LEEWAY_S


BIG = str(10**400)
HOSTILE = [  # raw JSON of the claims after sub; FRESH is an exp 10 minutes ahead
    pytest.param(f'"exp":{BIG}', id="exp-10**400"),
    pytest.param('"exp":' + "9" * 5000, id="exp-5000-digits"),
    pytest.param('"exp":1e400', id="exp-1e400"),
    pytest.param('"exp":1e300', id="exp-1e300"),
    pytest.param('"exp":-1e400', id="exp--1e400"),
    pytest.param('"exp":NaN', id="exp-NaN"),
    pytest.param('"exp":Infinity', id="exp-Infinity"),
    pytest.param('"exp":"FRESH"', id="exp-digits-string"),
    pytest.param('"exp":[FRESH]', id="exp-list"),
    pytest.param('"exp":{"t":FRESH}', id="exp-object"),
    pytest.param('"exp":true', id="exp-true"),
    pytest.param('"exp":null', id="exp-null"),
    pytest.param(f'"exp":FRESH,"iat":{BIG}', id="iat-huge"),
    pytest.param(f'"exp":FRESH,"nbf":{BIG}', id="nbf-huge"),
    pytest.param('"exp":FRESH,"nbf":-1e400', id="nbf--1e400"),
    pytest.param('"exp":FRESH,"iat":"now"', id="iat-string"),
    pytest.param('"exp":FRESH,"nbf":"0"', id="nbf-string"),
]


def hostile(claims_json: str) -> str:
    return '{"sub":"a",' + claims_json.replace("FRESH", str(later(600))) + "}"


@pytest.mark.parametrize("claims_json", HOSTILE)
def test_hostile_time_claims_are_a_token_error(claims_json: str) -> None:
    """Huge, non-finite or non-numeric time claims raise TokenError, nothing else."""
    with pytest.raises(tokens.TokenError):
        tokens.verify(signed_raw(hostile(claims_json)), SECRET, APP)


@pytest.mark.parametrize("payload", ["[1, 2, 3]", '"alice"', "null", "{"])
def test_a_payload_that_is_no_object_is_a_token_error(payload: str) -> None:
    """A signed payload that is not a JSON object raises TokenError."""
    with pytest.raises(tokens.TokenError):
        tokens.verify(signed_raw(payload), SECRET, APP)


async def test_huge_exp_closes_4001_and_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """A token with exp 10**400 over a real WebSocket closes 4001; nothing breaks."""
    caplog.set_level(logging.INFO)
    settings = make_settings()
    app = app_of(settings)
    async with running(settings) as live:
        for claims_json in (f'"exp":{BIG}', '"exp":1e300', '"exp":FRESH,"nbf":-1e400'):
            payload = hostile(claims_json)
            code, reason = await live.rejected(signed_raw(payload, app.client_secret))
            assert code == 4001, payload
            assert "Traceback" not in reason
        client = await live.login("fresh")
        assert await client.request("ping") == {"type": "pong", "id": 1}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_token_let_in_by_the_leeway_is_not_closed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """exp just passed: welcome, then the 4001 close comes at exp + leeway, not before."""
    monkeypatch.setattr(tokens, "LEEWAY_S", 2)
    settings = make_settings()
    app = app_of(settings)
    async with running(settings) as live:
        exp = time.time() - 0.5
        client = await live.open()
        ahead = {"sub": "alice", "exp": exp, "iat": later(1)}  # and a backend clock ahead
        welcome = await client.hello(jwt.encode(ahead, app.client_secret, algorithm="HS256"))
        assert welcome["type"] == "welcome"
        code, reason = await client.closed_with(wait=5)
        assert code == 4001 and "expired" in reason
        assert time.time() >= exp + 2 - 0.05
