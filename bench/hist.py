"""A mergeable latency histogram (microseconds, HDR-style buckets, under 0.8 % error)."""

from __future__ import annotations

from array import array

_SUB_BITS = 7
_SUB = 1 << _SUB_BITS  # 128 sub-buckets per power of two
_LINEAR = 2 * _SUB  # values below this are exact
_MAX_EXP = 34  # 2**41 us: far beyond any run
SIZE = _LINEAR + _MAX_EXP * _SUB


def bucket(value: int) -> int:
    """The bucket index of ``value`` (us, clamped to >= 0)."""
    if value < _LINEAR:
        return value if value > 0 else 0
    e = value.bit_length() - _SUB_BITS - 1
    if e > _MAX_EXP:
        return SIZE - 1
    return _LINEAR + (e - 1) * _SUB + (value >> e) - _SUB


def upper(index: int) -> int:
    """The largest value that falls in bucket ``index``."""
    if index < _LINEAR:
        return index
    e, m = divmod(index - _LINEAR, _SUB)
    return ((m + _SUB + 1) << (e + 1)) - 1


class Histogram:
    """Counts per bucket plus exact count, sum and max."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * SIZE))
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, value: int) -> None:
        self.counts[bucket(value)] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        if not other.count:
            return
        mine = self.counts
        for i, n in enumerate(other.counts):
            if n:
                mine[i] += n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0-100): a bucket's upper bound, capped at the max."""
        if not self.count:
            return 0
        rank = max(1, int(self.count * p / 100.0 + 0.999999))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(upper(i), self.max)
        return self.max

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary_ms(self) -> dict[str, float]:
        """p50/p90/p99/p99.9/max/mean in milliseconds, for reports."""
        return {
            "p50": self.percentile(50) / 1000,
            "p90": self.percentile(90) / 1000,
            "p99": self.percentile(99) / 1000,
            "p999": self.percentile(99.9) / 1000,
            "max": self.max / 1000,
            "mean": round(self.mean() / 1000, 3),
        }

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.counts.tobytes(), self.count, self.total, self.max))


def _rebuild(counts: bytes, count: int, total: int, maximum: int) -> Histogram:
    h = Histogram()
    h.counts = array("q")
    h.counts.frombytes(counts)
    h.count, h.total, h.max = count, total, maximum
    return h
