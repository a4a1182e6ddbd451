"""Standard Webhooks headers for one attempt, made with the ``standardwebhooks`` package."""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


class Signer:
    """Signs bodies with one endpoint's secret (kept here only, never logged)."""

    __slots__ = ("_hook",)

    def __init__(self, secret: str) -> None:
        self._hook = Webhook(secret)

    def headers(self, msg_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
        at = now or datetime.now(UTC)
        signature = self._hook.sign(msg_id, at, body.decode())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        }

    def __repr__(self) -> str:
        return "Signer(<secret>)"
