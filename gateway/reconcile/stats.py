"""The bookkeeping of a pass: what the holder did since the pass before, kept in the store."""

from __future__ import annotations

import msgspec

STATUS_TTL_MS = 30 * 86_400_000


class PassStats(msgspec.Struct):
    """One provider's last pass, as ``GET /v1/apps/{app}/reconcile`` shows it."""

    last_pass_at: int | None = None
    checked: int = 0
    corrected: int = 0
    errors: int = 0


stats_decoder = msgspec.json.Decoder(PassStats)
stats_encoder = msgspec.json.Encoder()
