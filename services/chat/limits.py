"""Rates: a token bucket per sender (a user; a client address in anonymous mode) on this
node for sends, and one per socket for joins. Over its rate, a sender is answered 429 / a
``rate_limited`` frame with when to retry; nothing is published or joined, and its socket
stays open."""

import math
import time
from collections import Counter, OrderedDict

from servicekit.errors import ServiceError

MAX_SENDERS = 100_000
"""Buckets kept; the least recently used goes first (it would be full again anyway
after ``burst / rate`` seconds, so dropping it forgives little)."""


class RateLimited(ServiceError):
    def __init__(self, retry_after: float, what: str, names: str) -> None:
        super().__init__(
            429, "rate_limited", f"more than {what}; retry in {retry_after:.2f}s ({names})",
            {"Retry-After": str(math.ceil(retry_after))},
        )  # fmt: skip
        self.retry_after = retry_after


def refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """A bucket's tokens at ``now``: what it held at ``last`` plus what ``rate`` added."""
    return min(burst, tokens + (now - last) * rate)


class SendLimiter:
    def __init__(self, rate: float, burst: int, refused: Counter[str]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = refused

    def take(self, sender: str) -> None:
        """One send by ``sender`` now, or RateLimited."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.pop(sender, (self.burst, now))
        tokens = refill(tokens, last, now, self.rate, self.burst)
        if tokens < 1.0:
            self._buckets[sender] = (tokens, now)
            self.refused["send_rate"] += 1
            raise RateLimited(
                (1.0 - tokens) / self.rate,
                f"{self.rate:g} sends/s from this sender on this node",
                "SEND_RATE, SEND_BURST",
            )
        self._buckets[sender] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_SENDERS:
            self._buckets.popitem(last=False)
