"""``[[apps.webhooks]]``: one endpoint an app's presence changes are POSTed to."""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Literal

import msgspec
from standardwebhooks.webhooks import Webhook

Event = Literal["user.online", "user.offline", "user.updated"]
DEFAULT_SCHEDULE = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


class WebhookEndpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One endpoint; ``validate`` raises ``ValueError("<key>: <reason>")``."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/?#]+", max_length=2048)]
    secret: str  # whsec_<base64>, checked by the standardwebhooks package
    events: list[Event] = msgspec.field(default_factory=lambda: ["user.online", "user.offline"])
    retry_schedule_s: list[Annotated[float, msgspec.Meta(ge=0, le=86400)]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_SCHEDULE)
    )
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 10.0  # per POST
    # messages queued (per node on memory; spread over the streams on Redis), then oldest go
    max_queue: Annotated[int, msgspec.Meta(ge=10, le=10_000_000)] = 100_000
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32  # POSTs in flight per node

    def validate(self) -> None:
        if not self.secret.startswith("whsec_"):
            raise ValueError("secret: must start with whsec_")
        encoded = self.secret[len("whsec_") :]
        try:  # strict base64 first: the package's decoder skips characters it does not know
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            Webhook(self.secret)
        except Exception:  # binascii.Error, EmptyWebhookSecretError: no value in the message
            raise ValueError("secret: not valid base64 after whsec_") from None
        if len(key) < 16:
            raise ValueError("secret: shorter than 16 bytes")
        if not self.events:
            raise ValueError("events: must name at least one event")
        if len(set(self.events)) != len(self.events):
            raise ValueError("events: duplicate event")
        if len(self.retry_schedule_s) > 100:
            raise ValueError("retry_schedule_s: at most 100 retries")

    def group(self, app: str) -> str:
        """The endpoint's consumer group name: stable for (app, url), no secret in it."""
        return "e" + hashlib.sha256(f"{app}\n{self.url}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:  # never the secret
        return f"WebhookEndpoint(url={self.url!r}, events={self.events!r})"


def check(endpoints: list[WebhookEndpoint]) -> None:
    """Validate an app's endpoints; ``ValueError("[<i>].<key>: <reason>")``."""
    seen: set[str] = set()
    for i, endpoint in enumerate(endpoints):
        try:
            endpoint.validate()
        except ValueError as exc:
            raise ValueError(f"[{i}].{exc}") from None
        if endpoint.url in seen:
            raise ValueError(f"[{i}].url: duplicate endpoint url")
        seen.add(endpoint.url)
