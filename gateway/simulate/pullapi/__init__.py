"""Fake pull APIs of Tencent IM, RongCloud and OpenIM, served for real on a loopback port.

One module per provider (``tencent``, ``rongcloud``, ``openim``), what they share in ``base``,
the uvicorn server in ``server``; this package holds their default credentials.

Used by the tests (``tests/pullapi.py`` re-exports the fakes), the bench's ``heal``
scenario and ``presence-gateway simulate --serve-pull-api``, which answers from its model.

Each fake checks the credentials the way PROVIDERS.md describes the real service (Tencent:
the admin UserSig decoded and verified with the key; RongCloud: the signature headers;
OpenIM: the admin token it issued, and the secret on ``/auth/get_admin_token``), refuses
wrong ones with the provider's error answers, and answers from ``users``: a dict user → the
set of platforms (gateway names, e.g. ``{"ios", "web"}``) the user is online on right now;
an empty set is a known offline user, a missing key a user the provider does not know
(Tencent 70107; the others say offline). ``"unknown"`` in the set: online, no platform
named. ``lookup`` (user → that set, or None for unknown), when set, answers instead of
``users``: the simulator's live model. Tests set ``users`` and queue ``faults`` (consumed
one per status request, in order):

- ``"http500"``: HTTP 500; ``"http429"``: HTTP 429; ``"stall"``: no answer until the fake
  closes (or ``stall_s``), so the client times out;
- ``"ratelimit"``: the provider's own rate-limit answer (Tencent 60018, RongCloud 1008 with
  HTTP 429, OpenIM: HTTP 429);
- ``"expired"``: the credential is refused as expired (Tencent 70001; OpenIM errCode 1501,
  and every token issued so far is revoked, so only a new one works).

``requests`` records every request (status and credential requests) with its arrival time
on the monotonic clock; ``credentials`` every credential value seen or issued (for "never in
a log" checks). With ``record=False`` (a long-running simulator) neither grows; ``calls``
counts the requests per path either way. ``serve(*fakes)`` runs them on one uvicorn server;
its URL is the api_base.
"""

from __future__ import annotations

# The fakes' default credentials, also ``presence-gateway simulate``'s (docs/heal-demo.toml).
# The Tencent key is PROVIDERS.md's UserSig test-vector key; OpenIM's are its share.yml defaults.
TENCENT_SECRET_KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
TENCENT_ADMIN = "administrator"
OPENIM_SECRET = "openIM123"
OPENIM_ADMIN = "imAdmin"
