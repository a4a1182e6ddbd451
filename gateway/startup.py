"""Startup warnings: a config that is valid but weaker than it looks.

``startup_warnings(settings)`` lists them; the app logs each once when it starts and
``presence-gateway check-config`` prints them. A warning names the app and the key, never a
secret's value (nor its length).
"""

from __future__ import annotations

import msgspec

from gateway.config import Settings

MIN_SECRET_LENGTH = 16
"""A shared secret shorter than this is easy to guess offline from one signed request."""

# Fields of a provider table that hold a shared secret. Where the field may be left empty
# (its default is ""), an empty value means the webhook is not authenticated at all.
SECRET_FIELDS = frozenset(["callback_token", "token", "secret", "app_secret"])


def startup_warnings(settings: Settings) -> list[str]:
    """What is worth an operator's attention in ``settings``, one line each.

    Dev mode gets none here: its one warning (logged by the app) already says it is not for
    production, and its well-known secrets are the point of it.
    """
    if settings.dev_mode:
        return []
    found: list[str] = []
    for app in settings.apps.values():
        where = f"app {app.id!r}"
        if len(app.api_key) < MIN_SECRET_LENGTH:
            found.append(
                f"{where}: api_key is shorter than {MIN_SECRET_LENGTH} characters; "
                "use a long random key"
            )
        if app.dev_tokens:
            found.append(
                f"{where}: dev_tokens = true lets anyone get a token for any user "
                "(GET /v1/apps/{app}/dev-token); turn it off outside development"
            )
        for provider, table in app.providers().items():
            found.extend(_table_warnings(f"{where}: [apps.{provider}]", table))
    return found


def _table_warnings(where: str, table: msgspec.Struct) -> list[str]:
    found: list[str] = []
    for field in msgspec.structs.fields(table):
        if field.name not in SECRET_FIELDS:
            continue
        value = getattr(table, field.name)
        if not isinstance(value, str):
            continue
        if not value and field.default == "":
            guard = getattr(table, "allowed_ips", None)
            found.append(
                f"{where} has no {field.name}: its webhook is not authenticated, "
                + (
                    "only allowed_ips limits who may post presence events"
                    if guard
                    else "anyone who can reach it may post presence events"
                )
            )
        elif value and len(value) < MIN_SECRET_LENGTH:
            found.append(
                f"{where}: {field.name} is shorter than {MIN_SECRET_LENGTH} characters; "
                "use a long random secret"
            )
    return found
