"""The shared id rules of ``gateway.types`` agree wherever they are applied."""

from __future__ import annotations

import re

import msgspec
import pytest

from gateway import tokens
from gateway.providers.base import WebhookRejected, check_id
from gateway.types import APP_ID_PATTERN, MAX_USER_ID, USER_ID, AppId, UserId, clock_ms

SECRET = "cs-0123456789abcdef0123456789abcdef"
USERS = ["a", "x" * MAX_USER_ID, "with\nnewline", "é" * MAX_USER_ID, "", "x" * (MAX_USER_ID + 1)]


@pytest.mark.parametrize("user", USERS)
def test_user_id_rule_is_one_rule(user: str) -> None:
    """The regex, the msgspec type, a token's sub and a provider's check accept the same ids."""
    valid = USER_ID.match(user) is not None
    assert valid == (0 < len(user) <= MAX_USER_ID)
    try:
        msgspec.convert(user, UserId)
        typed = True
    except msgspec.ValidationError:
        typed = False
    try:
        check_id(user, "user")
        checked = True
    except WebhookRejected:
        checked = False
    try:
        signed = tokens.verify(tokens.issue(SECRET, "demo", user), SECRET, "demo").sub == user
    except tokens.TokenError:
        signed = False
    assert typed == checked == signed == valid


@pytest.mark.parametrize(
    ("app", "valid"),
    [("demo", True), ("A-b_9", True), ("x" * 64, True), ("x" * 65, False), ("demo\n", False)],
)
def test_app_id_pattern_and_type_agree(app: str, valid: bool) -> None:
    """APP_ID_PATTERN and the AppId type accept the same app ids, never a trailing newline."""
    assert (re.match(APP_ID_PATTERN, app) is not None) == valid
    try:
        msgspec.convert(app, AppId)
        typed = True
    except msgspec.ValidationError:
        typed = False
    assert typed == valid


def test_clock_ms_is_wall_clock_milliseconds() -> None:
    """clock_ms() is an integer of milliseconds since the epoch, never going back."""
    first = clock_ms()
    second = clock_ms()
    assert isinstance(first, int) and 1_700_000_000_000 < first <= second
