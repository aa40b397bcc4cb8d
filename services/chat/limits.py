"""Per-sender send rates: a token bucket per user (per client address in anonymous mode),
on this node. A sender over its rate is answered 429 / a ``rate_limited`` frame with
when to retry; nothing is published, and its socket stays open."""

import math
import time
from collections import Counter, OrderedDict

from servicekit.errors import ServiceError

MAX_SENDERS = 100_000
"""Buckets kept; the least recently used goes first (it would be full again anyway
after ``burst / rate`` seconds, so dropping it forgives little)."""


class RateLimited(ServiceError):
    def __init__(self, retry_after: float, rate: float) -> None:
        super().__init__(
            429, "rate_limited",
            f"more than {rate:g} sends/s from this sender on this node; retry in "
            f"{retry_after:.2f}s (SEND_RATE, SEND_BURST)",
            {"Retry-After": str(math.ceil(retry_after))},
        )  # fmt: skip
        self.retry_after = retry_after


class SendLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused: Counter[str] = Counter()

    def take(self, sender: str) -> None:
        """One send by ``sender`` now, or RateLimited."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.pop(sender, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[sender] = (tokens, now)
            self.refused["send_rate"] += 1
            raise RateLimited((1.0 - tokens) / self.rate, self.rate)
        self._buckets[sender] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_SENDERS:
            self._buckets.popitem(last=False)
