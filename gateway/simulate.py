"""``presence-gateway simulate``: realistic, correctly signed provider webhooks for N users.

Two halves. The behaviour half is pure: ``Simulation`` decides what happens to which device
of which user (logins, several devices at once, reconnect flaps, kicks, late, repeated and
reordered deliveries) and keeps its own model of which devices are online. The sending half
turns each ``Delivery`` into one signed HTTP request in its provider's format (``build``)
and posts it with httpx at a steady rate, riding out a gateway that is down.

Every event time a user gets is later than all earlier ones of that user, and the gateway
merges each device last-writer-wins by event time, so no retry, duplicate or reordering
changes the end result: once every delivery is in, the gateway shows ``expected()``.

WuKongIM is the exception: its payload has no event time, the gateway stamps its events in
arrival order (array order inside one request). So its deliveries are never reordered,
held back or re-sent except as WuKongIM itself does (the same batch again, at once), and
they are posted one at a time; their ``Change.time`` is the model's own and is not sent.

The three newer providers (Easemob, NetEase, WuKongIM) are built by their adapters' own
inverse (``build_request``): this module holds no second copy of those wire formats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import random
import signal
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar
from urllib.parse import quote

import httpx
import msgspec

from gateway import pullapi_sim
from gateway.config import AppConfig, dev_settings
from gateway.model import PresenceEvent, custom_event
from gateway.providers import easemob, netease, openim, rongcloud, standard, tencent, wukongim
from gateway.providers.base import WebhookRequest

PROVIDER_NAMES = ("tencent", "rongcloud", "openim", "standard", "easemob", "netease", "wukongim")
FIRST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank")  # the demo page's friends
DEFAULT_URL = "http://127.0.0.1:8000"
_T = TypeVar("_T")

# What happened to a device (``Change.how``); only LOGIN leaves it online.
LOGIN = "login"
LOGOUT = "logout"
DISCONNECT = "disconnect"  # connection closed (app killed, network lost)
TIMEOUT = "timeout"  # heartbeat timeout
KICKED = "kicked"  # replaced by a login elsewhere
ADMIN_KICK = "admin-kick"  # Tencent OpenKickInstance: every device of the user
CUSTOM_STATUS = "custom-status"  # Tencent CustomStatusChange: sets the custom, not presence
CUSTOM_TEXTS = ("In a meeting", "Lunch", "Focus time", "")  # "" clears; picked by event time

BATCHING = frozenset({"rongcloud", "standard", "wukongim"})  # several events in one post
# Providers whose events the gateway orders by arrival (no event time): never reordered,
# held back or re-sent from further back, and posted one at a time.
ARRIVAL_ORDERED = frozenset({"wukongim"})
RESEND_CHANCE = 0.12  # share of steps that re-send an earlier delivery
BATCH_CHANCE = 0.6  # share of batching steps that carry other users' events too

# Device classes and the platforms (as the gateway shows them) each provider has in them.
# A kick replaces a device by one of the same class.
CATALOG: dict[str, dict[str, tuple[str, ...]]] = {
    "tencent": {
        "phone": ("ios", "android"),
        "desktop": ("windows", "mac"),
        "web": ("web",),
        "tablet": ("ipad",),
    },
    "rongcloud": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("pc",),
        "web": ("web", "miniprogram"),
    },
    "openim": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web", "miniprogram"),
        "tablet": ("ipad", "apad"),
    },
    "standard": {
        "phone": ("ios", "android"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web",),
        "tablet": ("ipad",),
    },
    "easemob": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web",),
    },
    "netease": {
        "phone": ("ios", "android", "harmonyos"),
        "desktop": ("windows", "mac", "linux"),
        "web": ("web",),
    },
    "wukongim": {  # deviceFlag 0 app, 1 web, 2 pc
        "phone": ("mobile",),
        "desktop": ("pc",),
        "web": ("web",),
    },
}
OWN_CHANCE = {"phone": 1.0, "desktop": 0.7, "web": 0.5, "tablet": 0.25}

# Wire names and signatures are the provider modules' own (their build_request).


def _device_id(user: str, gadget: _Gadget) -> str:
    """A stable device id (UUID form) for one device of ``user``."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{user}/{gadget.platform}/{gadget.ident}"))


def user_ids(n: int) -> list[str]:
    """``alice, bob, carol, dave, erin, frank``, then ``user7, user8, ...``."""
    return [FIRST_NAMES[i] if i < len(FIRST_NAMES) else f"user{i + 1}" for i in range(n)]


def clock_ms() -> int:
    """Wall-clock time in ms since the epoch."""
    return time.time_ns() // 1_000_000


# -- behaviour (pure) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One device of one user changing state, as a provider reports it."""

    user: str
    device: str  # the device key the gateway derives: platform, session id, platform id, id
    platform: str  # as the gateway shows it (normalized)
    how: str  # LOGIN, LOGOUT, DISCONNECT, TIMEOUT, KICKED, ADMIN_KICK or CUSTOM_STATUS
    time: int  # provider event time, ms since the epoch

    @property
    def online(self) -> bool:
        return self.how == LOGIN


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook call: a provider, the changes it carries, and a note for humans."""

    id: int
    provider: str
    changes: tuple[Change, ...]
    note: str
    style: int = 0  # which of the provider's equivalent wire forms to use (see ``build``)
    msg_id: str = ""  # Standard Webhooks ``webhook-id``; a re-send keeps it
    resend_of: int | None = None  # the delivery this one repeats

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(c.user for c in self.changes))


@dataclass(slots=True)
class _Gadget:
    """A device a user owns."""

    cls: str
    platform: str
    ident: str


@dataclass(slots=True)
class _User:
    name: str
    provider: str
    gadgets: list[_Gadget]
    online: dict[str, _Gadget] = field(default_factory=dict)  # device key -> device
    clock: int = 0  # the last event time given to this user


@dataclass(frozen=True, slots=True)
class _Part:
    """The changes of one behaviour that travel together."""

    changes: tuple[Change, ...]
    note: str
    delay_ms: int = 0  # > 0: delivered this much later (a late offline)


class Simulation:
    """The behaviour generator and its model of which devices are online.

    ``step(now_ms)`` gives the next webhook(s) to send, ``flush(now_ms)`` the late ones
    still held back, ``expected()`` what the gateway shows once all of them arrived.
    Event times are ``now_ms``, or a few seconds before for the offline half of a flap; a
    re-send or late delivery is at most ``max_lag_s`` (+30 s) old, well inside the gateway's
    ``max_event_age_s`` (600 by default). Deterministic for a seed and sequence of ``now_ms``.
    """

    def __init__(
        self,
        users: Sequence[str],
        providers: Sequence[str] = PROVIDER_NAMES,
        seed: int | None = None,
        *,
        max_lag_s: float = 120.0,
    ) -> None:
        if not users or not providers:
            raise ValueError("need at least one user and one provider")
        if unknown := set(providers) - set(PROVIDER_NAMES):
            raise ValueError(f"unknown provider(s): {', '.join(sorted(unknown))}")
        self.rng = random.Random(seed)
        self.max_lag_ms = int(max_lag_s * 1000)  # oldest re-send or late delivery
        self.users = [self._new_user(u, providers[i % len(providers)]) for i, u in enumerate(users)]
        self._peers: dict[str, list[_User]] = {}
        for user in self.users:
            self._peers.setdefault(user.provider, []).append(user)
        self._ids = itertools.count(1)
        self._conn_ids = itertools.count(self.rng.randrange(1_000, 1_000_000))  # WuKongIM connId
        self._order = itertools.count()
        self._held: list[tuple[int, int, str, _Part]] = []  # (due, order, provider, part)
        self._history: deque[tuple[int, Delivery]] = deque(maxlen=256)
        self._by_name = {u.name: u for u in self.users}

    def step(self, now_ms: int) -> list[Delivery]:
        """The next webhook(s): late ones now due, a re-send, or a new behaviour."""
        if due := self._pop_held(now_ms, everything=False):
            return due
        resend = self._history and self.rng.random() < RESEND_CHANCE
        if resend and (resent := self._resend(now_ms)):
            return [resent]
        while True:
            user = self.rng.choice(self.users)
            parts = self._act(user, now_ms)
            peers = [u for u in self._peers[user.provider] if u is not user]
            if user.provider in BATCHING and peers and self.rng.random() < BATCH_CHANCE:
                for peer in self.rng.sample(peers, min(len(peers), self.rng.randint(1, 3))):
                    parts += self._act(peer, now_ms)
            if out := self._deliveries(user.provider, parts, now_ms):
                return out

    def flush(self, now_ms: int) -> list[Delivery]:
        """Every late delivery still held back, due or not."""
        return self._pop_held(now_ms, everything=True)

    def expected(self) -> dict[str, list[str]]:
        """Each user's online platforms (sorted, no repeats; empty = offline) by user id."""
        return {u.name: sorted({g.platform for g in u.online.values()}) for u in self.users}

    def truth(self, provider: str) -> Callable[[str], set[str] | None]:
        """What ``provider``'s pull API knows right now: a user's online platforms (empty:
        offline), None for a user of another provider (one the provider never heard of).

        The model changes when a behaviour happens, whether or not its webhook is ever sent
        (``Dropper``): it is the provider's truth, which the gateway learns late or never.
        """

        def lookup(user: str) -> set[str] | None:
            found = self._by_name.get(user)
            if found is None or found.provider != provider:
                return None
            return {g.platform for g in found.online.values()}

        return lookup

    # -- deliveries

    def _new(self, provider: str, changes: tuple[Change, ...], note: str, now: int) -> Delivery:
        delivery = Delivery(
            id=next(self._ids),
            provider=provider,
            changes=changes,
            note=note,
            style=self.rng.randrange(4),
            msg_id=f"msg_{self.rng.getrandbits(64):016x}",
        )
        self._history.append((now, delivery))
        return delivery

    def _deliveries(self, provider: str, parts: list[_Part], now: int) -> list[Delivery]:
        now_parts = []
        for part in parts:
            if part.delay_ms and provider not in ARRIVAL_ORDERED:
                due = now + part.delay_ms
                heapq.heappush(self._held, (due, next(self._order), provider, part))
            else:
                now_parts.append(part)
        if provider not in BATCHING or len(now_parts) < 2:
            return [self._new(provider, p.changes, p.note, now) for p in now_parts]
        changes = tuple(c for p in now_parts for c in p.changes)
        note = "; ".join(f"{p.changes[0].user} {p.note}" for p in now_parts)
        if provider not in ARRIVAL_ORDERED and self.rng.random() < 0.3:
            changes = tuple(self.rng.sample(changes, len(changes)))
            note += " [shuffled]"
        return [self._new(provider, changes, f"batch of {len(changes)}: {note}", now)]

    def _pop_held(self, now: int, *, everything: bool) -> list[Delivery]:
        out = []
        while self._held and (everything or self._held[0][0] <= now):
            _, _, provider, part = heapq.heappop(self._held)
            out.append(self._new(provider, part.changes, part.note, now))
        return out

    def _resend(self, now: int) -> Delivery | None:
        """A delivery sent again: at once (a duplicate) or up to ``max_lag_s`` later.

        A WuKongIM batch is re-sent only while it is that provider's latest: WuKongIM resends
        the batch whose answer it missed before any other, and the gateway, ordering by
        arrival, would apply an older one over newer events.
        """
        latest = {d.provider: d.id for _, d in self._history if d.provider in ARRIVAL_ORDERED}
        recent = [
            (t, d)
            for t, d in self._history
            if now - t <= self.max_lag_ms and latest.get(d.provider, d.id) == d.id
        ]
        if not recent:
            return None
        sent, orig = recent[-1] if self.rng.random() < 0.4 else self.rng.choice(recent)
        age_s = (now - sent) / 1000
        note = (
            f"duplicate of #{orig.id}" if age_s < 1 else f"retry of #{orig.id}, {age_s:.0f} s late"
        )
        changes = orig.changes
        shuffle = orig.provider in BATCHING and orig.provider not in ARRIVAL_ORDERED
        if shuffle and len(changes) > 1 and self.rng.random() < 0.5:
            changes = tuple(self.rng.sample(changes, len(changes)))
            note += " [shuffled]"
        return Delivery(
            id=next(self._ids),
            provider=orig.provider,
            changes=changes,
            note=note,
            style=orig.style,
            msg_id=orig.msg_id,
            resend_of=orig.resend_of or orig.id,
        )

    # -- users and their devices

    def _new_user(self, name: str, provider: str) -> _User:
        gadgets = [
            _Gadget(cls, self.rng.choice(platforms), f"{self.rng.getrandbits(24):06x}")
            for cls, platforms in CATALOG[provider].items()
            if self.rng.random() < OWN_CHANCE[cls]
        ]
        return _User(name, provider, gadgets)

    def _tick(self, user: _User, wanted: int) -> int:
        """An event time for ``user``: ``wanted``, but later than any it had before."""
        user.clock = max(wanted, user.clock + 1)
        return user.clock

    def _key(self, user: _User, gadget: _Gadget) -> str:
        """The gateway's device key of a new connection of ``gadget``."""
        if user.provider == "tencent":
            return gadget.platform
        if user.provider == "openim":
            pid = str(openim.ID_OF[gadget.platform])
            if zlib.crc32(user.name.encode()) % 2:  # OpenIM <= 3.7: a connID per connection
                return f"{pid}-{self.rng.getrandbits(32):08x}"
            return pid  # OpenIM >= 3.8.2 sends an empty connID: keyed by platform id
        if user.provider == "rongcloud":
            return f"{self.rng.getrandbits(48):012x}"  # a new session per connection
        if user.provider == "easemob":  # the resource of ``user``: {os}_{deviceId}
            os_name = easemob.OS_OF.get(gadget.platform, gadget.platform)
            return f"{os_name}_{_device_id(user.name, gadget)}"
        if user.provider == "netease":  # deviceId: one per device, kept across logins
            return _device_id(user.name, gadget)
        if user.provider == "wukongim":  # {deviceFlag}:{connId}: a connId per connection
            return f"{wukongim.FLAG_OF[gadget.platform]}:{next(self._conn_ids)}"
        return f"{user.name}-{gadget.platform}-{gadget.ident}"

    def _connect(self, user: _User, gadget: _Gadget, t: int) -> Change:
        key = self._key(user, gadget)
        user.online[key] = gadget
        return Change(user.name, key, gadget.platform, LOGIN, t)

    def _drop(self, user: _User, key: str, how: str, t: int) -> Change:
        gadget = user.online.pop(key)
        return Change(user.name, key, gadget.platform, how, t)

    def _free(self, user: _User) -> list[_Gadget]:
        busy = {id(g) for g in user.online.values()}
        return [g for g in user.gadgets if id(g) not in busy]

    def _pick(self, user: _User) -> tuple[str, _Gadget]:
        key = self.rng.choice(sorted(user.online))
        return key, user.online[key]

    # -- behaviours: each updates the model and returns what the provider sends

    def _act(self, user: _User, now: int) -> list[_Part]:
        if not user.online:
            return self._login(user, now)
        options: list[tuple[float, Callable[[_User, int], list[_Part]]]] = [
            (2.0 if self._free(user) else 0.0, self._login),
            (1.2, self._logout),
            (1.5, self._disconnect),
            (3.0, self._leave),
            (2.5, self._flap),
            (1.2, self._kick),
        ]
        if user.provider == "tencent":
            options += [(0.3, self._admin_kick), (0.6, self._custom_status)]
        if user.provider == "openim":
            options.append((0.8, self._resync))
        if user.provider == "wukongim":
            options.append((0.8, self._brief))
        action = self.rng.choices([a for _, a in options], [w for w, _ in options])[0]
        return action(user, now)

    def _login(self, user: _User, now: int) -> list[_Part]:
        free = self._free(user)
        picks = [self.rng.choice(free)]
        if not user.online and len(free) > 1 and self.rng.random() < 0.25:
            picks.append(self.rng.choice([g for g in free if g is not picks[0]]))
        parts = []
        for gadget in picks:
            change = self._connect(user, gadget, self._tick(user, now))
            count = len(user.online)
            note = f"login {gadget.platform}" + (f" ({count} devices)" if count > 1 else "")
            parts.append(_Part((change,), note))
        return parts

    def _logout(self, user: _User, now: int) -> list[_Part]:
        key, gadget = self._pick(user)
        change = self._drop(user, key, LOGOUT, self._tick(user, now))
        return [_Part((change,), f"logout {gadget.platform}")]

    def _disconnect(self, user: _User, now: int) -> list[_Part]:
        key, gadget = self._pick(user)
        how = TIMEOUT if self.rng.random() < 0.3 else DISCONNECT
        change = self._drop(user, key, how, self._tick(user, now))
        note = f"{'heartbeat timeout' if how == TIMEOUT else 'connection lost'} {gadget.platform}"
        if user.provider == "rongcloud" and self.rng.random() < 0.4:
            delay = self._late()  # RongCloud: an offline after network loss can come late
            return [_Part((change,), f"{note}, {delay // 1000} s late", delay)]
        return [_Part((change,), note)]

    def _leave(self, user: _User, now: int) -> list[_Part]:
        parts = []
        for key in sorted(user.online):
            how = self.rng.choice((LOGOUT, DISCONNECT))
            change = self._drop(user, key, how, self._tick(user, now))
            parts.append(_Part((change,), f"leaves: {how} {change.platform}"))
        return parts

    def _flap(self, user: _User, now: int) -> list[_Part]:
        """A reconnect: offline immediately followed by online (Tencent: maybe no offline)."""
        key, gadget = self._pick(user)
        name, provider = gadget.platform, user.provider
        if provider == "tencent" and self.rng.random() < 0.4:
            change = Change(user.name, key, name, LOGIN, self._tick(user, now))
            return [_Part((change,), f"reconnect {name}: Login with no Disconnect")]
        gap = self.rng.randint(200, 3000)
        off = self._drop(user, key, DISCONNECT, self._tick(user, now - gap))
        on = self._connect(user, gadget, self._tick(user, now))
        off_note, on_note = f"flap {name}: offline", f"flap {name}: online {gap} ms later"
        if provider == "rongcloud" and self.rng.random() < 0.4:
            delay = self._late()
            return [
                _Part((on,), f"reconnect {name}: new session"),
                _Part((off,), f"old session of {name} offline, {delay // 1000} s late", delay),
            ]
        if provider in BATCHING:
            if self.rng.random() < 0.3:
                return [_Part((on, off), f"flap {name}: online, offline {gap} ms before")]
            return [_Part((off, on), f"flap {name}: offline, online {gap} ms later")]
        if provider == "openim" and self.rng.random() < 0.3:  # two workers: reordered
            return [_Part((on,), on_note), _Part((off,), off_note + ", sent after the online")]
        return [_Part((off,), off_note), _Part((on,), on_note)]

    def _kick(self, user: _User, now: int) -> list[_Part]:
        """A login on a new device of the same class kicks the old one off."""
        key, old = self._pick(user)
        new = _Gadget(old.cls, self.rng.choice(CATALOG[user.provider][old.cls]), old.ident)
        if new.platform == old.platform:
            new.ident = f"{self.rng.getrandbits(24):06x}"  # another device of the same kind
        user.gadgets[user.gadgets.index(old)] = new
        t = self._tick(user, now)
        kicked = self._drop(user, key, KICKED, t)
        login = self._connect(user, new, t)
        note = f"login {new.platform} kicks {old.platform}"
        if new.platform == old.platform:
            note = f"login on another {new.platform} kicks the old one"
        if user.provider == "tencent" and self.rng.random() < 0.3:  # older SDKs: two callbacks
            return [_Part((login,), note + " (Login)"), _Part((kicked,), note + " (Logout)")]
        if user.provider == "tencent":
            return [_Part((login, kicked), note + " (KickedDevice)")]
        if user.provider == "openim":
            return [_Part((kicked,), f"kick-off {old.platform}"), _Part((login,), note)]
        if user.provider == "easemob":  # the new login's callback, then the old one's
            return [_Part((login,), note), _Part((kicked,), f"{old.platform} replaced")]
        if user.provider == "netease":  # NetEase copies a plain logout for the kicked device
            return [_Part((login,), note), _Part((kicked,), f"{old.platform} logged out")]
        return [_Part((kicked, login), note)]

    def _admin_kick(self, user: _User, now: int) -> list[_Part]:
        t = self._tick(user, now)
        changes = tuple(self._drop(user, key, ADMIN_KICK, t) for key in sorted(user.online))
        return [_Part(changes, "admin kick (OpenKickInstance): every device")]

    def _custom_status(self, user: _User, now: int) -> list[_Part]:
        key, gadget = self._pick(user)
        change = Change(user.name, key, gadget.platform, CUSTOM_STATUS, self._tick(user, now))
        return [_Part((change,), "custom status (not presence)")]

    def _resync(self, user: _User, now: int) -> list[_Part]:
        """OpenIM >= 3.8.2 re-sends online for every connected platform."""
        t = self._tick(user, now)
        return [
            _Part((Change(user.name, key, g.platform, LOGIN, t),), f"re-sent online {g.platform}")
            for key, g in sorted(user.online.items())
        ]

    def _brief(self, user: _User, now: int) -> list[_Part]:
        """WuKongIM: a connection opens and closes within one batch (array order decides)."""
        gadget = self.rng.choice(user.gadgets)
        key = self._key(user, gadget)
        on = Change(user.name, key, gadget.platform, LOGIN, self._tick(user, now))
        off = Change(user.name, key, gadget.platform, DISCONNECT, self._tick(user, now))
        return [_Part((on, off), f"brief connection {gadget.platform}: online, then offline")]

    def _late(self) -> int:
        return self.rng.randint(2_000, max(2_000, min(30_000, self.max_lag_ms)))


class Dropper:
    """The webhooks a provider under load never sends: each delivery with chance ``fraction``.

    Seeded apart from the behaviour, so a run with drops makes the same changes as one
    without. A dropped delivery is never retried (its later re-sends are drawn afresh).
    """

    def __init__(self, fraction: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("the drop fraction must be within [0, 1]")
        self.fraction = fraction
        self.rng = random.Random(seed)
        self.offered = 0  # deliveries decided on
        self.dropped = 0
        self.dropped_events = 0

    def drops(self, d: Delivery) -> bool:
        """Whether ``d`` is dropped (counted)."""
        self.offered += 1
        if self.fraction <= 0.0 or self.rng.random() >= self.fraction:
            return False
        self.dropped += 1
        self.dropped_events += len(d.changes)
        return True


# -- one signed request per provider (pure) ------------------------------------------------


def _dev(table: _T | None) -> _T:
    assert table is not None, "dev mode configures every provider"
    return table


# Target's defaults: the secrets of dev mode's app (config.dev_settings, their one copy).
_DEV = dev_settings().apps["demo"]
_DEV_TC, _DEV_RC, _DEV_STD = _dev(_DEV.tencent), _dev(_DEV.rongcloud), _dev(_DEV.standard)
_DEV_OI, _DEV_EM, _DEV_NE = _dev(_DEV.openim), _dev(_DEV.easemob), _dev(_DEV.netease)
_DEV_WK = _dev(_DEV.wukongim)


@dataclass(frozen=True, slots=True)
class Target:
    """The gateway app to post to and the provider secrets to sign with (dev mode's default)."""

    app: str = _DEV.id
    tencent_sdkappid: int = _DEV_TC.sdkappid
    tencent_token: str = _DEV_TC.callback_token
    rongcloud_app_key: str = _DEV_RC.app_key
    rongcloud_app_secret: str = _DEV_RC.app_secret
    openim_token: str = _DEV_OI.token
    standard_secret: str = _DEV_STD.secret
    easemob_appkey: str = _DEV_EM.appkey
    easemob_secret: str = _DEV_EM.secret
    netease_app_key: str = _DEV_NE.app_key
    netease_app_secret: str = _DEV_NE.app_secret
    wukongim_token: str = _DEV_WK.token
    # --serve-pull-api: the credentials the fake pull APIs check (RongCloud's: the two above)
    tencent_admin: str = pullapi_sim.TENCENT_ADMIN
    tencent_secret_key: str = pullapi_sim.TENCENT_SECRET_KEY
    openim_admin_user: str = pullapi_sim.OPENIM_ADMIN
    openim_secret: str = pullapi_sim.OPENIM_SECRET

    @classmethod
    def for_app(cls, app: AppConfig) -> Target:
        """The target that signs like the providers configured for ``app``."""
        target = cls(app=app.id)
        if app.tencent:
            tc = app.tencent
            target = replace(target, tencent_sdkappid=tc.sdkappid, tencent_token=tc.callback_token)
        if app.rongcloud:
            rc = app.rongcloud
            target = replace(
                target, rongcloud_app_key=rc.app_key, rongcloud_app_secret=rc.app_secret
            )
        if app.openim:
            target = replace(target, openim_token=app.openim.token)
        if app.standard:
            target = replace(target, standard_secret=app.standard.secret)
        if app.easemob:
            em = app.easemob
            target = replace(target, easemob_appkey=em.appkey, easemob_secret=em.secret)
        if app.netease:
            ne = app.netease
            target = replace(target, netease_app_key=ne.app_key, netease_app_secret=ne.app_secret)
        if app.wukongim:
            target = replace(target, wukongim_token=app.wukongim.token)
        # the [apps.<provider>.reconcile] tables, where the config has them
        tc_pull = getattr(app.tencent, "reconcile", None)
        if tc_pull is not None:
            target = replace(
                target, tencent_admin=tc_pull.admin, tencent_secret_key=tc_pull.secret_key
            )
        oi_pull = getattr(app.openim, "reconcile", None)
        if oi_pull is not None:
            target = replace(
                target, openim_admin_user=oi_pull.admin_user, openim_secret=oi_pull.secret
            )
        return target


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A webhook call, ready to send."""

    method: str
    path: str  # already percent-encoded
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes


_json = msgspec.json.Encoder()
_nonces = random.SystemRandom()
_JSON = {"content-type": "application/json"}


def _client_ip(user: str) -> str:
    h = zlib.crc32(user.encode())
    return f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255 or 1}"


def _hook(target: Target, provider: str) -> str:
    return f"/v1/apps/{quote(target.app, safe='')}/webhooks/{provider}"


# how -> the reason tencent.build_request sends it with (Action, Reason in tencent.ACTIONS)
_TENCENT_REASON = {
    LOGIN: "register",
    LOGOUT: "unregister",
    KICKED: "unregister",  # older SDKs: a separate Logout
    DISCONNECT: "linkclose",
    TIMEOUT: "timeout",
    ADMIN_KICK: "openkickinstance",
}


def build_tencent(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    first, kicked = d.changes[0], d.changes[1:]
    config = tencent.TencentConfig(
        sdkappid=target.tencent_sdkappid, callback_token=target.tencent_token
    )
    if first.how == CUSTOM_STATUS:
        text = CUSTOM_TEXTS[first.time % len(CUSTOM_TEXTS)]
        ev = msgspec.structs.replace(
            custom_event(first.user, text, first.time), platform=first.platform
        )
    else:
        ev = PresenceEvent(
            first.user,
            first.platform,
            first.platform,
            first.online,
            first.time,
            _TENCENT_REASON[first.how],
        )
    if kicked and first.how == LOGIN:
        assert all(c.how == KICKED and c.time == first.time for c in kicked), d
    mac_os = first.platform == "mac" and d.style % 2 and first.how != ADMIN_KICK
    req = tencent.build_request(
        config,
        ev,
        kicked=[c.platform for c in kicked] if first.how == LOGIN else (),
        opt_platform="macOS" if mac_os else None,
        custom_in="top",
        client_ip=_client_ip(first.user),
        now_ms=now_ms,
    )
    return _http(target, "tencent", req)


def _rc_ip(ev: PresenceEvent) -> str:
    return f"{_client_ip(ev.user)}:{40000 + zlib.crc32(ev.device.encode()) % 20000}"


def build_rongcloud(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    config = rongcloud.RongCloudConfig(
        app_key=target.rongcloud_app_key, app_secret=target.rongcloud_app_secret
    )
    events = [
        PresenceEvent(
            c.user,
            c.device,
            c.platform,
            c.online,
            c.time,
            "" if c.online else ("logout" if c.how == LOGOUT else "offline"),
        )
        for c in d.changes
    ]
    style = ("timestamp", "timestamp", "signTimestamp", "rc")[d.style]
    req = rongcloud.build_request(
        config,
        events,
        now_ms=now_ms,
        style=style,  # type: ignore[arg-type]
        nonce=str(_nonces.randrange(10**9)),
        client_ip=_rc_ip,
    )
    return _http(target, "rongcloud", req)


def build_openim(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    (c,) = d.changes
    ev = PresenceEvent(
        c.user, c.device, c.platform, c.online, c.time, "kicked" if c.how == KICKED else ""
    )
    req = openim.build_request(
        openim.OpenIMConfig(token=target.openim_token),
        ev,
        command_in=("path", "path", "query", "body")[d.style],
        after=d.style in (0, 3),
        operation_id=f"sim-{d.id}",
        now_ms=now_ms,
    )
    return _http(target, "openim", req)


def build_standard(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    events = [
        PresenceEvent(
            c.user,
            c.device,
            c.platform,
            c.online,
            c.time,
            "" if c.online else ("logout" if c.how in (LOGOUT, ADMIN_KICK) else "offline"),
        )
        for c in d.changes
    ]
    req = standard.build_request(
        standard.StandardConfig(secret=target.standard_secret),
        events,
        now_ms=now_ms,
        msg_id=d.msg_id,
    )
    return _http(target, "standard", req)


def _event(c: Change) -> PresenceEvent:
    """``c`` as the event the gateway should parse out of its webhook."""
    return PresenceEvent(c.user, c.device, c.platform, c.online, c.time, _REASON.get(c.how, ""))


_REASON = {KICKED: "kicked"}  # Easemob sends a kicked device as ``replaced``


def _http(target: Target, provider: str, req: WebhookRequest) -> HttpRequest:
    """An adapter's inverse (a ``WebhookRequest``) as the HTTP call that carries it."""
    path = _hook(target, provider) + "".join("/" + quote(s, safe="") for s in req.path)
    return HttpRequest("POST", path, req.query, dict(req.headers), req.body)


def build_easemob(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """One ``userStatus`` callback: login, logout, or ``replaced`` for a kicked device.

    Odd styles leave ``@easemob.com`` out of ``user`` (Agora Chat's form). The callId is
    fixed by the delivery and its style, so a re-send is Easemob's own resend: same body.
    """
    (c,) = d.changes
    config = easemob.EasemobConfig(appkey=target.easemob_appkey, secret=target.easemob_secret)
    call_id = f"{config.appkey}_{uuid.uuid5(uuid.NAMESPACE_URL, f'{d.msg_id}/{d.style}')}"
    req = easemob.build_request(
        config, _event(c), call_id=call_id, now_ms=now_ms, domain=d.style % 2 == 0
    )
    return _http(target, "easemob", req)


def build_netease(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """One login / logout copy, its headers signing the body at ``now_ms``."""
    (c,) = d.changes
    config = netease.NetEaseConfig(
        app_key=target.netease_app_key, app_secret=target.netease_app_secret
    )
    return _http(target, "netease", netease.build_request(config, _event(c), now_ms=now_ms))


def build_wukongim(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """One ``user.onlinestatus`` batch: an array in the order the events happened, no times."""
    config = wukongim.WuKongIMConfig(token=target.wukongim_token)
    events = [_event(c) for c in d.changes]
    return _http(target, "wukongim", wukongim.build_request(config, events, now_ms=now_ms))


BUILDERS: dict[str, Callable[[Delivery, Target, int], HttpRequest]] = {
    "tencent": build_tencent,
    "rongcloud": build_rongcloud,
    "openim": build_openim,
    "standard": build_standard,
    "easemob": build_easemob,
    "netease": build_netease,
    "wukongim": build_wukongim,
}


def build(d: Delivery, target: Target, now_ms: int) -> HttpRequest:
    """The signed request for ``d``, as its provider would send it at ``now_ms``."""
    return BUILDERS[d.provider](d, target, now_ms)


# -- sending (I/O) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """How fast and how long to send."""

    rate: float = 2.0  # webhooks per second
    duration_s: float | None = None  # None: until stopped
    count: int | None = None  # stop after this many webhooks (then flush the late ones)
    concurrency: int = 1  # requests in flight; > 1 delivers out of order, like OpenIM's workers
    timeout_s: float = 5.0  # per request (RongCloud waits 5 s, Tencent 2 s)
    backoff_s: float = 0.5  # first wait after a failure; doubles up to backoff_max_s
    backoff_max_s: float = 5.0
    max_5xx_tries: int = 5  # a 5xx answer is retried (nothing was applied) this many times
    drop: float = 0.0  # share of webhooks never sent (the model still counts their changes)
    drop_seed: int | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """The gateway's answer to one webhook."""

    delivery: Delivery
    status: int
    reason: str  # the error reason from a non-2xx body, else ""


@dataclass
class Summary:
    """What a run did."""

    sent: int = 0  # webhooks answered (any status)
    events: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    non_2xx: int = 0
    network_errors: int = 0  # attempts that got no answer
    undelivered: int = 0  # webhooks given up (stopped while failing)
    dropped: int = 0  # webhooks never sent on purpose (``Options.drop``)
    dropped_events: int = 0
    drop: float = 0.0  # the fraction asked for
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.non_2xx == 0 and self.undelivered == 0

    def line(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (
            f"sent {self.sent} webhooks ({self.events} events) in {self.elapsed_s:.1f} s "
            f"({rate:.1f}/s); non-2xx: {self.non_2xx}"
        )
        bad = sorted((s, n) for s, n in self.statuses.items() if not 200 <= s < 300)
        if bad:
            text += " (" + ", ".join(f"{n}x {s}" for s, n in bad) + ")"
        if self.network_errors:
            text += f"; network errors: {self.network_errors}"
        if self.undelivered:
            text += f"; not delivered: {self.undelivered}"
        if self.drop > 0:
            offered = self.sent + self.dropped
            share = f", {100 * self.dropped / offered:.1f} %" if offered else ""
            text += (
                f"; dropped on purpose (never sent): {self.dropped} webhooks "
                f"({self.dropped_events} events{share})"
            )
        return text


def _reason(response: httpx.Response) -> str:
    """The short reason of a provider-shaped error body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:80]
    if isinstance(data, dict):
        for key in ("ErrorInfo", "errMsg", "error"):
            if data.get(key):
                return str(data[key])[:80]
    return ""


def format_result(result: Result) -> str:
    """One line per webhook: id, provider, users, what happened, status."""
    d = result.delivery
    users = ",".join(d.users)
    users = users if len(users) <= 14 else users[:13] + "…"
    line = f"#{d.id:<5} {d.provider:<9} {users:<14} {d.note:<52} {result.status}"
    return f"{line} {result.reason}" if result.reason else line


def format_dropped(d: Delivery) -> str:
    """The line of a webhook dropped on purpose (never sent)."""
    return format_result(Result(d, 0, "")).rsplit(" ", 1)[0] + " DROPPED (not sent)"


class _Sender:
    """Posts deliveries, retries through outages with backoff, keeps the summary."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        target: Target,
        options: Options,
        stop: asyncio.Event,
        on_result: Callable[[Result], None],
        warn: Callable[[str], None],
    ) -> None:
        self.client, self.target, self.options, self.stop = client, target, options, stop
        self.on_result, self.warn = on_result, warn
        self.summary = Summary()
        self._down_since: float | None = None
        self._jitter = random.Random()

    async def worker(self, queue: asyncio.Queue[Delivery | None]) -> None:
        while (delivery := await queue.get()) is not None:
            await self.deliver(delivery)

    async def deliver(self, d: Delivery) -> None:
        """Send ``d`` (signed afresh each try) until answered; once stopped, try only once."""
        failures = 0
        while True:
            last_try = self.stop.is_set()
            req = build(d, self.target, clock_ms())
            try:
                response = await self.client.request(
                    req.method, req.path, params=req.query, headers=req.headers, content=req.body
                )
            except httpx.TransportError as exc:
                self.summary.network_errors += 1
                failures += 1
                wait = self._backoff(failures)
                self._went_down(exc, None if last_try else wait)
                if last_try:
                    self.summary.undelivered += 1
                    return
                await _stopped(self.stop, wait)
                continue
            self._came_back()
            status = response.status_code
            ok = 200 <= status < 300
            self.summary.sent += 1
            self.summary.statuses[status] += 1
            if ok:
                self.summary.events += len(d.changes)
            else:
                self.summary.non_2xx += 1
            self.on_result(Result(d, status, "" if ok else _reason(response)))
            if status < 500 or last_try:
                return
            failures += 1  # 5xx: nothing was applied; a provider that retries would retry
            if failures >= self.options.max_5xx_tries:
                self.summary.undelivered += 1
                return
            await _stopped(self.stop, self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        base = min(self.options.backoff_max_s, self.options.backoff_s * 2.0 ** (failures - 1))
        return base * self._jitter.uniform(0.8, 1.2)

    def _went_down(self, exc: httpx.TransportError, wait: float | None) -> None:
        now = time.monotonic()
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        then = "giving up (stopping)" if wait is None else f"next try in {wait:.1f} s"
        if self._down_since is None:
            self._down_since = now
            self.warn(f"gateway unreachable at {self.client.base_url} ({what}); {then}")
        else:
            down = now - self._down_since
            self.warn(f"still unreachable after {down:.0f} s ({what}); {then}")

    def _came_back(self) -> None:
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self._down_since = None
            self.warn(f"gateway reachable again after {down:.1f} s")


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless ``stop`` is set first; whether it was."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run(
    sim: Simulation,
    target: Target,
    url: str = DEFAULT_URL,
    options: Options | None = None,
    *,
    stop: asyncio.Event | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_drop: Callable[[Delivery], None] | None = None,
    warn: Callable[[str], None] = _stderr,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Send ``sim``'s webhooks to the gateway at ``url`` until the duration, count or ``stop``.

    Webhooks go out at ``options.rate`` per second, up to ``options.concurrency`` at once,
    except that each ``ARRIVAL_ORDERED`` provider's go one at a time, in order (as WuKongIM
    posts its batches). A gateway that does not answer is reported through ``warn`` and
    retried with backoff; nothing raises. At the end the late deliveries still held back
    are sent too, so the gateway ends in ``sim.expected()``, unless ``options.drop`` > 0:
    each webhook is then, with that chance, never sent (reported through ``on_drop``; it
    takes its slot of the rate all the same), and the gateway is wrong for its users until
    a later webhook or reconciliation sets them right.
    """
    options = options or Options()
    dropper = Dropper(options.drop, options.drop_seed)
    stop = stop or asyncio.Event()
    report = on_result or (lambda result: None)
    started = time.monotonic()
    deadline = started + options.duration_s if options.duration_s else None
    queue: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize=options.concurrency)
    # one queue and one worker per arrival-ordered provider: its posts never overtake
    serial: dict[str, asyncio.Queue[Delivery | None]] = {
        p: asyncio.Queue(maxsize=1) for p in sorted(ARRIVAL_ORDERED)
    }

    async def put(delivery: Delivery) -> None:
        if dropper.drops(delivery):
            if on_drop is not None:
                on_drop(delivery)
            return
        await serial.get(delivery.provider, queue).put(delivery)

    timeout = httpx.Timeout(options.timeout_s)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport) as client:
        sender = _Sender(client, target, options, stop, report, warn)
        workers = [queue] * options.concurrency + list(serial.values())
        async with asyncio.TaskGroup() as group:
            for worker_queue in workers:
                group.create_task(sender.worker(worker_queue))
            try:
                # The model already counts the rest of the last step and the late ones.
                rest = await _produce(sim, options, put, stop, deadline)
                for delivery in [*rest, *sim.flush(clock_ms())]:
                    await put(delivery)
            finally:
                for worker_queue in workers:
                    await worker_queue.put(None)
    summary = sender.summary
    summary.elapsed_s = time.monotonic() - started
    summary.drop, summary.dropped = options.drop, dropper.dropped
    summary.dropped_events = dropper.dropped_events
    return summary


async def _produce(
    sim: Simulation,
    options: Options,
    put: Callable[[Delivery], Awaitable[None]],
    stop: asyncio.Event,
    deadline: float | None,
) -> list[Delivery]:
    """Queue deliveries at the rate (after a stall, resume the rate rather than burst);
    return those of the last step still unsent."""
    interval = 1.0 / options.rate
    pending: deque[Delivery] = deque()
    produced = 0
    next_at = time.monotonic()
    while not stop.is_set() and (options.count is None or produced < options.count):
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if next_at > now:
            until = next_at if deadline is None else min(next_at, deadline)
            await _stopped(stop, until - now)
            continue
        if not pending:
            pending.extend(sim.step(clock_ms()))
        await put(pending.popleft())
        produced += 1
        next_at = max(next_at + interval, time.monotonic() - interval)
    return list(pending)


# -- the command ---------------------------------------------------------------------------


def _problem(args: argparse.Namespace) -> str | None:
    if not args.url.startswith(("http://", "https://")):
        return "--url must start with http:// or https://"
    port, linger = args.serve_pull_api, args.linger
    checks = [
        (args.users >= 1, "--users must be at least 1"),
        (args.rate > 0, "--rate must be > 0"),
        (args.duration is None or args.duration >= 0, "--duration must be >= 0"),
        (args.count is None or args.count >= 1, "--count must be at least 1"),
        (args.concurrency >= 1, "--concurrency must be at least 1"),
        (0 <= args.drop <= 1, "--drop must be a fraction within [0, 1]"),
        (port is None or 0 <= port <= 65535, "--serve-pull-api must be a port (0: a free one)"),
        (args.check_every is None or args.check_every > 0, "--check-every must be > 0"),
        (linger is None or linger >= 0, "--linger must be >= 0"),
        (
            linger is None or port is not None or args.check_every is not None,
            "--linger needs --serve-pull-api or --check-every",
        ),
    ]
    return next((message for ok, message in checks if not ok), None)


def _target(args: argparse.Namespace) -> Target:
    pulled = {
        name: getattr(args, name)
        for name in ("tencent_admin", "tencent_secret_key", "openim_admin_user", "openim_secret")
        if getattr(args, name) is not None
    }
    return Target(
        app=args.app,
        tencent_sdkappid=args.tencent_sdkappid,
        tencent_token=args.tencent_token,
        rongcloud_app_key=args.rongcloud_app_key,
        rongcloud_app_secret=args.rongcloud_app_secret,
        openim_token=args.openim_token,
        standard_secret=args.standard_secret,
        easemob_appkey=args.easemob_appkey,
        easemob_secret=args.easemob_secret,
        netease_app_key=args.netease_app_key,
        netease_app_secret=args.netease_app_secret,
        wukongim_token=args.wukongim_token,
        **pulled,
    )


async def _checks(
    url: str, app: str, api_key: str, sim: Simulation, every_s: float, stop: asyncio.Event
) -> None:
    """Print the gateway against the model every ``every_s`` until ``stop`` (cancelled)."""
    from gateway.simulate_heal import CheckFailed, compare

    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while True:
            try:
                print((await compare(client, app, api_key, sim.expected())).line(), flush=True)
            except CheckFailed as exc:
                _stderr(f"check failed: {exc}")
            if await _stopped(stop, every_s):
                return


async def command(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """``simulate`` once its arguments are valid, until done or ``stop`` (no signals here)."""
    from gateway.simulate_heal import config_hint, pull_calls, serve_model, watch_all

    providers = PROVIDER_NAMES if args.provider == "mixed" else (args.provider,)
    sim = Simulation(user_ids(args.users), providers, args.seed)
    target = _target(args)
    options = Options(
        rate=args.rate,
        duration_s=args.duration or None,
        count=args.count,
        concurrency=args.concurrency,
        drop=args.drop,
        drop_seed=None if args.seed is None else args.seed + 1,
    )
    url = args.url.rstrip("/")
    limits = [f"{args.duration:g} s"] if args.duration else []
    limits += [f"{args.count} webhooks"] if args.count else []
    how_long = "for " + " or ".join(limits) if limits else "until Ctrl-C"
    dropping = f", dropping {100 * args.drop:g} % of them" if args.drop else ""
    _stderr(
        f"simulating {args.users} users ({', '.join(providers)}) at {args.rate:g} webhooks/s "
        f"{how_long}{dropping} -> {url}, app {args.app}"
    )
    if len(providers) > args.users:
        left_out = ", ".join(providers[args.users :])
        _stderr(f"note: one provider per user, so no users for {left_out}; try --users 7")

    def show(result: Result) -> None:
        if not args.quiet or not 200 <= result.status < 300:
            print(format_result(result), flush=True)

    def dropped(d: Delivery) -> None:
        if not args.quiet:
            print(format_dropped(d), flush=True)

    async with contextlib.AsyncExitStack() as stack:
        server = None
        if args.serve_pull_api is not None:
            try:
                server = await stack.enter_async_context(
                    serve_model(sim, target, args.serve_pull_api)
                )
            except OSError as exc:
                where = f"127.0.0.1:{args.serve_pull_api}"
                _stderr(f"simulate: cannot serve the pull APIs on {where}: {exc.strerror}")
                return 2
            for line in config_hint(server.url):
                _stderr(line)
            if len(providers) > 1:
                _stderr(
                    "note: reconcile one IM provider per app (a check counts every device of "
                    "a user as its provider's, gateway/reconcile/rules.py): try --provider tencent"
                )
        check_stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            if args.watch_all:
                watching = watch_all(url, args.app, user_ids(args.users), check_stop, _stderr)
                group.create_task(watching)
            checker = None
            if args.check_every is not None:
                checks = _checks(url, args.app, args.api_key, sim, args.check_every, check_stop)
                checker = group.create_task(checks)
            summary = await run(
                sim, target, url, options, stop=stop, on_result=show, on_drop=dropped
            )
            if (server or checker) and not stop.is_set():
                what = "serving the pull APIs" if server else "checking"
                until = f"for {args.linger:g} s" if args.linger is not None else "until Ctrl-C"
                _stderr(f"all webhooks sent; still {what} {until}")
                if args.linger is None:
                    await stop.wait()
                else:
                    await _stopped(stop, args.linger)
            check_stop.set()
        print(summary.line(), flush=True)
        if server is not None:
            calls = pull_calls(server.fakes)
            print(
                "pull APIs answered: " + ", ".join(f"{p} {n} calls" for p, n in calls.items()),
                flush=True,
            )
    return 0 if summary.ok else 1


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []

    def interrupted() -> None:
        _stderr("stopping (sending the late webhooks still held); Ctrl-C again to quit now")
        stop.set()
        for sig in handled:  # a second Ctrl-C raises KeyboardInterrupt
            loop.remove_signal_handler(sig)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, interrupted)
                handled.append(sig)
    try:
        return await command(args, stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def main(args: argparse.Namespace) -> int:
    """``presence-gateway simulate``: 0 when every webhook got a 2xx answer, else 1 (2: usage)."""
    if problem := _problem(args):
        _stderr(f"simulate: {problem}")
        return 2
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        _stderr("simulate: interrupted")
        return 130
