"""Per-key token buckets: ``rate_per_second`` sustained, ``burst`` at once.

>>> now = [0.0]
>>> limiter = RateLimiter(rate_per_second=2, burst=2, clock=lambda: now[0])
>>> limiter.take("tenant-a"), limiter.take("tenant-a"), limiter.take("tenant-a")
(0.0, 0.0, 0.5)
>>> now[0] = 0.5
>>> limiter.take("tenant-a")
0.0
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from syntra.errors import InvalidConfig

# A bucket counts as holding n tokens when it is this close: float rounding in the refill
# must not turn the exact delay take() returned into another refusal.
_SLACK = 1e-9


class RateLimiter:
    """A token bucket per key. Each bucket holds up to ``burst`` tokens and refills at
    ``rate_per_second``; a key never seen (or forgotten while full) starts full.

    :meth:`take` costs about a microsecond and is thread-safe. Memory is bounded by
    ``max_keys``: past it, buckets that have refilled completely (indistinguishable from
    no bucket) are dropped; if every bucket is still busy, the oldest keys are dropped,
    which only ever lets them through sooner. ``rate_per_second=0`` turns limiting off.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = 100_000,
    ):
        if not _is_number(rate_per_second) or not 0 <= rate_per_second < math.inf:
            raise InvalidConfig(f"rate_per_second must be a finite number >= 0, got {rate_per_second!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise InvalidConfig(f"max_keys must be an integer >= 1, got {max_keys!r}")
        if rate_per_second > 0 and (not _is_number(burst) or not 1 <= burst < math.inf):
            raise InvalidConfig(f"burst must be a finite number >= 1, got {burst!r}")
        self.rate = float(rate_per_second)
        self.burst = float(burst) if rate_per_second > 0 else 0.0
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [tokens, when they were counted]; lists so take() updates in place.
        self._buckets: dict[str, list[float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, n: int = 1) -> float:
        """Take ``n`` tokens from ``key``'s bucket: 0.0 if they were there (and are now
        gone), else the seconds until they will be (and nothing is taken)."""
        rate = self.rate
        if rate == 0.0:
            return 0.0
        if not 0 < n <= self.burst:
            raise ValueError(f"n must be in (0, burst={self.burst:g}], got {n!r}")
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._evict(now)
                bucket = self._buckets[key] = [self.burst, now]
                tokens = self.burst
            else:
                tokens = bucket[0] + (now - bucket[1]) * rate
                if tokens > self.burst:  # noqa: PLR1730 (hot path: no min() call)
                    tokens = self.burst
            if tokens + _SLACK >= n:
                bucket[0] = max(tokens - n, 0.0)
                bucket[1] = now
                return 0.0
            bucket[0] = tokens
            bucket[1] = now
            return (n - tokens) / rate

    def _evict(self, now: float) -> None:
        """With the lock held and the table full: free an eighth of it, so sweeps stay
        rare (amortised O(1) per new key)."""
        rate, burst = self.rate, self.burst
        target = self.max_keys - max(1, self.max_keys // 8)
        full = [key for key, (tokens, seen) in self._buckets.items() if tokens + (now - seen) * rate >= burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) > target:
            # Still crowded with busy buckets: drop the oldest keys (dicts keep insertion
            # order). They restart full, so this errs towards letting traffic through.
            for key in list(self._buckets)[: len(self._buckets) - target]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
