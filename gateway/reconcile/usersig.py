"""Tencent IM admin UserSig (TLSSigAPIv2), standard library only.

The document ``{"TLS.ver", "TLS.identifier", "TLS.sdkappid", "TLS.expire", "TLS.time",
"TLS.sig"}`` is zlib-compressed, base64-encoded and then ``+`` → ``*``, ``/`` → ``-``,
``=`` → ``_``; ``TLS.sig`` is the standard base64 of HMAC-SHA256 (key: the app's secret
key) over the identifier, sdkappid, time and expire lines. Valid while now ≤ time + expire.
``decode`` is the inverse (the fake Tencent server of the tests checks signatures with it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Callable
from typing import Any

DEFAULT_EXPIRE_S = 86_400  # a day: the sig travels in URLs, so it should not live for months
_TO_SIG = str.maketrans("+/=", "*-_")
_FROM_SIG = str.maketrans("*-_", "+/=")
_MAX_DOC = 4096  # a real document is ~200 bytes; decode refuses bigger ones (zip bombs)


def signature(secret_key: str, identifier: str, sdkappid: int, time_s: int, expire_s: int) -> str:
    """``TLS.sig``: base64 of HMAC-SHA256 over the four ``TLS.`` lines."""
    content = (
        f"TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\n"
        f"TLS.time:{time_s}\nTLS.expire:{expire_s}\n"
    )
    mac = hmac.new(secret_key.encode(), content.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def generate(
    secret_key: str, sdkappid: int, identifier: str, expire_s: int, now_s: int | None = None
) -> str:
    """A UserSig for ``identifier``, valid for ``expire_s`` seconds from ``now_s``."""
    now = int(time.time()) if now_s is None else now_s
    doc = {
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire_s,
        "TLS.time": now,
        "TLS.sig": signature(secret_key, identifier, sdkappid, now, expire_s),
    }
    packed = zlib.compress(json.dumps(doc, separators=(",", ":")).encode())
    return base64.b64encode(packed).decode().translate(_TO_SIG)


def decode(usersig: str) -> dict[str, Any]:
    """The document inside ``usersig``; ``ValueError`` when it is not one."""
    try:
        packed = base64.b64decode(usersig.translate(_FROM_SIG), validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, _MAX_DOC)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("not a UserSig")
        doc = json.loads(raw)
    except (ValueError, zlib.error) as exc:  # binascii.Error and JSONDecodeError included
        raise ValueError("not a UserSig") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a UserSig")
    return doc


class AdminUserSig:
    """The admin's UserSig, made once and renewed when 90 % of its lifetime has passed."""

    def __init__(
        self,
        secret_key: str,
        sdkappid: int,
        identifier: str,
        expire_s: int = DEFAULT_EXPIRE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert expire_s >= 10
        self._key = secret_key
        self.sdkappid = sdkappid
        self.identifier = identifier
        self.expire_s = expire_s
        self._clock = clock
        self._sig = ""
        self._renew_at = 0.0
        self.renewals = 0  # how many were made (the first one included)

    def get(self) -> str:
        """A UserSig with at least 10 % of its lifetime left."""
        now = self._clock()
        if not self._sig or now >= self._renew_at:
            self._sig = generate(self._key, self.sdkappid, self.identifier, self.expire_s, int(now))
            self._renew_at = int(now) + self.expire_s * 0.9
            self.renewals += 1
        return self._sig

    def renew(self) -> str:
        """A new UserSig now (Tencent said 70001: expired)."""
        self._sig = ""
        return self.get()

    def __repr__(self) -> str:  # never the key or the sig
        return f"AdminUserSig(sdkappid={self.sdkappid}, identifier={self.identifier!r})"
