"""The behaviour generator (pure): users, their devices, what happens to them.

``Simulation`` decides what happens to which device of which user (logins, several devices
at once, reconnect flaps, kicks, late, repeated and reordered deliveries) and keeps its own
model of which devices are online. No I/O: ``gateway.simulate.requests`` turns its
deliveries into signed requests and ``gateway.simulate.sender`` posts them.

Every event time a user gets is later than all earlier ones of that user, and the gateway
merges each device last-writer-wins by event time, so no retry, duplicate or reordering
changes the end result: once every delivery is in, the gateway shows ``expected()``.

WuKongIM is the exception: its payload has no event time, the gateway stamps its events in
arrival order (array order inside one request). So its deliveries are never reordered,
held back or re-sent except as WuKongIM itself does (the same batch again, at once), and
they are posted one at a time; their ``Change.time`` is the model's own and is not sent.
"""

from __future__ import annotations

import heapq
import itertools
import random
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.providers import easemob, openim, wukongim
from gateway.simulate.delivery import (
    ADMIN_KICK,
    ARRIVAL_ORDERED,
    BATCHING,
    CUSTOM_STATUS,
    DISCONNECT,
    KICKED,
    LOGIN,
    LOGOUT,
    PROVIDER_NAMES,
    TIMEOUT,
    Change,
    Delivery,
)
from gateway.simulate.users import CATALOG, OWN_CHANCE, Gadget, User, device_id

RESEND_CHANCE = 0.12  # share of steps that re-send an earlier delivery
BATCH_CHANCE = 0.6  # share of batching steps that carry other users' events too


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
        self._peers: dict[str, list[User]] = {}
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

    def _new_user(self, name: str, provider: str) -> User:
        gadgets = [
            Gadget(cls, self.rng.choice(platforms), f"{self.rng.getrandbits(24):06x}")
            for cls, platforms in CATALOG[provider].items()
            if self.rng.random() < OWN_CHANCE[cls]
        ]
        return User(name, provider, gadgets)

    def _tick(self, user: User, wanted: int) -> int:
        """An event time for ``user``: ``wanted``, but later than any it had before."""
        user.clock = max(wanted, user.clock + 1)
        return user.clock

    def _key(self, user: User, gadget: Gadget) -> str:
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
            return f"{os_name}_{device_id(user.name, gadget)}"
        if user.provider == "netease":  # deviceId: one per device, kept across logins
            return device_id(user.name, gadget)
        if user.provider == "wukongim":  # {deviceFlag}:{connId}: a connId per connection
            return f"{wukongim.FLAG_OF[gadget.platform]}:{next(self._conn_ids)}"
        return f"{user.name}-{gadget.platform}-{gadget.ident}"

    def _connect(self, user: User, gadget: Gadget, t: int) -> Change:
        key = self._key(user, gadget)
        user.online[key] = gadget
        return Change(user.name, key, gadget.platform, LOGIN, t)

    def _drop(self, user: User, key: str, how: str, t: int) -> Change:
        gadget = user.online.pop(key)
        return Change(user.name, key, gadget.platform, how, t)

    def _free(self, user: User) -> list[Gadget]:
        busy = {id(g) for g in user.online.values()}
        return [g for g in user.gadgets if id(g) not in busy]

    def _pick(self, user: User) -> tuple[str, Gadget]:
        key = self.rng.choice(sorted(user.online))
        return key, user.online[key]

    # -- behaviours: each updates the model and returns what the provider sends

    def _act(self, user: User, now: int) -> list[_Part]:
        if not user.online:
            return self._login(user, now)
        options: list[tuple[float, Callable[[User, int], list[_Part]]]] = [
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

    def _login(self, user: User, now: int) -> list[_Part]:
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

    def _logout(self, user: User, now: int) -> list[_Part]:
        key, gadget = self._pick(user)
        change = self._drop(user, key, LOGOUT, self._tick(user, now))
        return [_Part((change,), f"logout {gadget.platform}")]

    def _disconnect(self, user: User, now: int) -> list[_Part]:
        key, gadget = self._pick(user)
        how = TIMEOUT if self.rng.random() < 0.3 else DISCONNECT
        change = self._drop(user, key, how, self._tick(user, now))
        note = f"{'heartbeat timeout' if how == TIMEOUT else 'connection lost'} {gadget.platform}"
        if user.provider == "rongcloud" and self.rng.random() < 0.4:
            delay = self._late()  # RongCloud: an offline after network loss can come late
            return [_Part((change,), f"{note}, {delay // 1000} s late", delay)]
        return [_Part((change,), note)]

    def _leave(self, user: User, now: int) -> list[_Part]:
        parts = []
        for key in sorted(user.online):
            how = self.rng.choice((LOGOUT, DISCONNECT))
            change = self._drop(user, key, how, self._tick(user, now))
            parts.append(_Part((change,), f"leaves: {how} {change.platform}"))
        return parts

    def _flap(self, user: User, now: int) -> list[_Part]:
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

    def _kick(self, user: User, now: int) -> list[_Part]:
        """A login on a new device of the same class kicks the old one off."""
        key, old = self._pick(user)
        new = Gadget(old.cls, self.rng.choice(CATALOG[user.provider][old.cls]), old.ident)
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

    def _admin_kick(self, user: User, now: int) -> list[_Part]:
        t = self._tick(user, now)
        changes = tuple(self._drop(user, key, ADMIN_KICK, t) for key in sorted(user.online))
        return [_Part(changes, "admin kick (OpenKickInstance): every device")]

    def _custom_status(self, user: User, now: int) -> list[_Part]:
        key, gadget = self._pick(user)
        change = Change(user.name, key, gadget.platform, CUSTOM_STATUS, self._tick(user, now))
        return [_Part((change,), "custom status (not presence)")]

    def _resync(self, user: User, now: int) -> list[_Part]:
        """OpenIM >= 3.8.2 re-sends online for every connected platform."""
        t = self._tick(user, now)
        return [
            _Part((Change(user.name, key, g.platform, LOGIN, t),), f"re-sent online {g.platform}")
            for key, g in sorted(user.online.items())
        ]

    def _brief(self, user: User, now: int) -> list[_Part]:
        """WuKongIM: a connection opens and closes within one batch (array order decides)."""
        gadget = self.rng.choice(user.gadgets)
        key = self._key(user, gadget)
        on = Change(user.name, key, gadget.platform, LOGIN, self._tick(user, now))
        off = Change(user.name, key, gadget.platform, DISCONNECT, self._tick(user, now))
        return [_Part((on, off), f"brief connection {gadget.platform}: online, then offline")]

    def _late(self) -> int:
        return self.rng.randint(2_000, max(2_000, min(30_000, self.max_lag_ms)))
