"""The exception tree and the close codes of ``gateway.errors``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import errors, protocol, tokens, webhooks
from gateway.api import BadQuery
from gateway.errors import CloseCode, GatewayError
from gateway.providers.base import WebhookRejected
from gateway.reconcile.base import CredentialsExpired, ProviderError, PullError, RateLimited

CODES_JS = Path(errors.__file__).resolve().parent / "web" / "codes.js"


@pytest.mark.parametrize(
    ("leaf", "branch"),
    [
        (errors.ConfigError, GatewayError),
        (errors.StoreUnavailable, errors.BackendError),
        (errors.FeedLost, errors.BackendError),
        (protocol.BadMessage, errors.Rejected),
        (tokens.TokenError, errors.Rejected),
        (BadQuery, errors.Rejected),
        (webhooks.BodyTooLarge, errors.Rejected),
        (WebhookRejected, errors.Rejected),
        (PullError, errors.UpstreamError),
        (RateLimited, PullError),
        (CredentialsExpired, PullError),
        (ProviderError, PullError),
    ],
)
def test_every_error_sits_on_its_branch(leaf: type[Exception], branch: type[Exception]) -> None:
    """Each error the gateway raises on purpose derives from its branch and GatewayError."""
    assert issubclass(leaf, branch)
    assert issubclass(leaf, GatewayError)


def test_leaves_are_the_same_class_where_raised() -> None:
    """A leaf imported from the module that raises it is errors.py's class, not a copy."""
    assert protocol.BadMessage is errors.BadMessage
    assert tokens.TokenError is errors.TokenError
    assert webhooks.BodyTooLarge is errors.BodyTooLarge
    assert WebhookRejected is errors.WebhookRejected
    assert BadQuery is errors.BadQuery


def test_rejections_carry_their_reason() -> None:
    """BadMessage keeps code, message and request id; WebhookRejected status and reason."""
    bad = errors.BadMessage("unknown_type", "unknown type 'x'", 7)
    assert (bad.code, bad.message, bad.request_id, str(bad)) == (
        "unknown_type",
        "unknown type 'x'",
        7,
        "unknown type 'x'",
    )
    rejected = errors.WebhookRejected(401, "bad signature")
    assert (rejected.status, rejected.reason, str(rejected)) == (
        401,
        "bad signature",
        "401 bad signature",
    )


def test_close_codes_match_the_browser_client() -> None:
    """CloseCode holds every code web/codes.js names, under the same name and number."""
    source = CODES_JS.read_text(encoding="utf-8")
    block = source[source.index("export const CloseCode") : source.index("});")]
    in_js = {name: int(code) for name, code in re.findall(r"^\s+([A-Z_]+): (\d+),", block, re.M)}
    assert in_js, "no close codes found in codes.js"
    assert {name: CloseCode[name].value for name in in_js} == in_js
    assert set(in_js) <= set(CloseCode.__members__)
