"""The webhook bodies the Python peers accept: Tencent single events and RongCloud batches.

No signature check, no freshness window, no merge: each provider event becomes one state
``{"user", "status", "since", "v"}`` with ``since`` and ``v`` the provider's event time.
"""

from __future__ import annotations

import gc
import time

import msgspec

TENCENT_ACK = b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'
RONGCLOUD_ACK = b'{"code":200}'


class State(msgspec.Struct):
    user: str
    status: str
    since: int
    v: int


class _TencentInfo(msgspec.Struct):
    Action: str
    To_Account: str


class _Tencent(msgspec.Struct):
    EventTime: int
    Info: _TencentInfo


class _RongCloud(msgspec.Struct):
    userid: str
    status: str
    time: int


_tencent = msgspec.json.Decoder(_Tencent).decode
_rongcloud = msgspec.json.Decoder(list[_RongCloud] | _RongCloud).decode
encode = msgspec.json.Encoder().encode


def parse(provider: str, body: bytes) -> list[State]:
    """The states a webhook body carries (raises ``msgspec.DecodeError``/``KeyError``)."""
    if provider == "tencent":
        ev = _tencent(body)
        status = "online" if ev.Info.Action == "Login" else "offline"
        return [State(ev.Info.To_Account, status, ev.EventTime, ev.EventTime)]
    if provider == "rongcloud":
        got = _rongcloud(body)
        events = got if isinstance(got, list) else [got]
        return [
            State(e.userid, "online" if e.status == "0" else "offline", e.time, e.time)
            for e in events
        ]
    raise KeyError(provider)


def ack(provider: str) -> bytes:
    return TENCENT_ACK if provider == "tencent" else RONGCLOUD_ACK


class GcPauses:
    """The longest and total cyclic-GC pause of this process, per generation (``/metrics``)."""

    def __init__(self) -> None:
        self.max_s = [0.0, 0.0, 0.0]
        self.total_s = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        gen = info["generation"]
        took = time.perf_counter() - self._t0
        self.count[gen] += 1
        self.total_s[gen] += took
        self.max_s[gen] = max(self.max_s[gen], took)

    def metrics(self) -> bytes:
        """Prometheus text; the bench's ``conns`` scenario shows every name with ``gc`` in it."""
        lines = [f"bench_gc_pause_max_seconds {max(self.max_s):.6f}"]
        for gen in range(3):
            lines += [
                f"bench_gc_pause_max_seconds_gen{gen} {self.max_s[gen]:.6f}",
                f"bench_gc_pause_seconds_total_gen{gen} {self.total_s[gen]:.6f}",
                f"bench_gc_collections_gen{gen} {self.count[gen]}",
            ]
        return ("\n".join(lines) + "\n").encode()
