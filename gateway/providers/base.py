"""What every webhook adapter shares: config, request, verdicts, ack shapes, checks.

An adapter is pure: it gets a ``WebhookRequest`` (already read off the socket) and returns
the events it carries (``Parsed``) or raises ``WebhookRejected``. ``Provider.handle`` runs
the checks in the order the contract fixes: IP allow-list (403), then verification
(signature, app identity, freshness: 401), then parsing (malformed body: 400).
"""

from __future__ import annotations

import hmac
import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar
from urllib.parse import unquote

import msgspec

from gateway.backends.base import PresenceSettings
from gateway.errors import WebhookRejected as WebhookRejected
from gateway.model import PresenceEvent
from gateway.types import MAX_USER_ID

MAX_ID_LENGTH = MAX_USER_ID
"""Longest user id or device key accepted (characters)."""

MAX_MS = 2**53 - 1
"""Largest event time accepted: an integer every JSON and Lua number holds exactly."""

Millis = Annotated[int, msgspec.Meta(ge=0, le=MAX_MS)]
"""A provider time in ms since the epoch, as decoded from a body."""

_REASON_LIMIT = 160

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProviderConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Settings shared by every provider table (``[apps.<provider>]``)."""

    allowed_ips: list[str] = []  # CIDRs or plain addresses allowed to call; empty = any
    # a device of this provider shown online with no event and no confirming check for this
    # long goes offline (reason ``silence``); 0 = off (SPEC 2; gateway.reconcile.scheduler)
    max_silence_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86_400)] = 0

    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"secret", "app_secret", "token", "callback_token", "secret_key"}
    )

    def __repr__(self) -> str:  # never show secrets, even in a debugger or a traceback
        shown = (
            f"{name}={'***' if name in self.SECRET_FIELDS else repr(getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"{type(self).__name__}({', '.join(shown)})"

    def validate(self) -> None:
        """Raise ``ValueError("key: reason")`` when a value is well typed but unusable."""
        parse_networks(self.allowed_ips)
        reconcile = getattr(self, "reconcile", None)  # [apps.<provider>.reconcile], if any
        if reconcile is not None:
            try:
                reconcile.validate()
            except ValueError as exc:
                raise ValueError(f"reconcile.{exc}") from None


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One webhook call as the route read it off the wire."""

    path: tuple[str, ...]  # percent-decoded segments after /webhooks/{provider}
    query: tuple[tuple[str, str], ...]  # raw multi-items, in order
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    client_ip: str | None
    now_ms: int


@dataclass
class Parsed:
    """What a webhook carried."""

    events: list[PresenceEvent] = field(default_factory=list)
    unused: int = 0  # commands / events acked but not used
    command: str = ""  # bounded label for metrics and logs
    # A signature that does not cover the body (RongCloud) may be replayed with another body
    # while it is fresh: the route claims ``replay_key`` with the body's sha256 for
    # ``replay_ttl_ms`` in the store, and refuses (401) a key seen with another digest.
    replay_key: str | None = None
    digest: bytes = b""
    replay_ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """An ack in the provider's own shape."""

    status: int
    body: bytes
    content_type: str | None = "application/json"


class Provider(ABC):
    """One provider's webhook: checks, parsing and ack shapes.

    Subclasses set ``name``, ``config_type`` and narrow ``config`` to their config class.
    """

    name: ClassVar[str]
    config_type: ClassVar[type[ProviderConfig]]
    takes_path: ClassVar[bool] = False  # whether segments after the provider name mean anything
    config: ProviderConfig

    def __init__(self, config: ProviderConfig, settings: PresenceSettings) -> None:
        if not isinstance(config, self.config_type):
            raise TypeError(f"{type(self).__name__} needs a {self.config_type.__name__}")
        config.validate()
        self.config = config
        self.settings = settings
        self._networks = parse_networks(config.allowed_ips)

    def check_source(self, client_ip: str | None) -> None:
        """Raise a 403 ``WebhookRejected`` for an address not allowed (before any body read)."""
        if self._networks and not ip_allowed(client_ip, self._networks):
            raise WebhookRejected(403, "client address not allowed")

    def handle(self, req: WebhookRequest) -> Parsed:
        """Check, verify and parse ``req``; raise ``WebhookRejected`` to refuse it."""
        self.check_source(req.client_ip)
        if not self.takes_path and any(req.path):
            raise WebhookRejected(404, "not found")
        self.verify(req)
        return self.parse(req)

    @abstractmethod
    def verify(self, req: WebhookRequest) -> None:
        """Check signature, app identity and freshness; raise a 401 ``WebhookRejected``."""

    @abstractmethod
    def parse(self, req: WebhookRequest) -> Parsed:
        """Turn a verified request into events; raise a 400 ``WebhookRejected``."""

    @abstractmethod
    def ok(self) -> Reply:
        """The ack of a request whose events were all applied."""

    @abstractmethod
    def error(self, status: int, reason: str) -> Reply:
        """The provider's failure shape, for any status (400, 401, 403, 413, 503...)."""


def parse_networks(allowed: list[str]) -> tuple[Network, ...]:
    """Parse an allow-list; raise ``ValueError("allowed_ips: ...")`` on a bad entry."""
    networks = []
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"allowed_ips: {entry[:64]!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)


def ip_allowed(client_ip: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether ``client_ip`` is inside one of ``networks`` (an unknown address never is)."""
    if not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two strings (any characters)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def parse_query(raw: bytes) -> tuple[tuple[str, str], ...]:
    """A raw query string as Starlette's ``QueryParams(raw).multi_items()`` reads it.

    Latin-1, ``&``-separated, blank values kept, ``+`` as space, percent-escapes decoded as
    UTF-8 (errors replaced): ``urllib.parse.parse_qsl`` exactly, without its cost per call.
    """
    items = []
    for piece in raw.decode("latin-1").split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if "+" in piece:
            name, value = name.replace("+", " "), value.replace("+", " ")
        if "%" in piece:
            name, value = unquote(name), unquote(value)
        items.append((name, value))
    return tuple(items)


_folded: dict[tuple[str, ...], frozenset[str]] = {}  # query_value's names, lower-cased


def query_value(req: WebhookRequest, *names: str, fold: bool = False) -> str | None:
    """The first query value under any of ``names`` (case-insensitive with ``fold``)."""
    if not fold:
        for key, value in req.query:
            if key in names:
                return value
        return None
    wanted = _folded.get(names)
    if wanted is None:
        wanted = _folded[names] = frozenset(n.lower() for n in names)
    for key, value in req.query:
        if key.lower() in wanted:
            return value
    return None


def clip(text: str, limit: int = _REASON_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, so a reason never echoes a large input."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode(body: bytes, type_: Any) -> Any:
    """Decode JSON ``body`` as ``type_``; raise a 400 ``WebhookRejected`` when it does not fit."""
    try:
        return msgspec.json.decode(body, type=type_)
    except UnicodeDecodeError:
        raise WebhookRejected(400, "malformed body: invalid UTF-8") from None
    except msgspec.MsgspecError as exc:
        raise WebhookRejected(400, clip(f"malformed body: {exc}")) from None
    except RecursionError:  # msgspec's own depth limit (~1000 nested arrays or objects)
        raise WebhookRejected(400, "malformed body: nested too deeply") from None


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a usable user id or device key, else raise a 400."""
    if not value:
        raise WebhookRejected(400, f"malformed body: empty {what}")
    if len(value) > MAX_ID_LENGTH:
        raise WebhookRejected(400, f"malformed body: {what} longer than {MAX_ID_LENGTH}")
    return value


def event(
    user: str, device: str, platform: str, online: bool, time: int, reason: str = ""
) -> PresenceEvent:
    """A validated ``PresenceEvent`` (400 on an empty or overlong user or device)."""
    return PresenceEvent(
        user=check_id(user, "user"),
        device=check_id(device, "device"),
        platform=platform,
        online=online,
        time=time,
        reason=reason,
    )


json_encoder = msgspec.json.Encoder()
