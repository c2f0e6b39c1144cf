"""A token bucket so one copy cannot take all of a host's network or disk.

The clock and the sleep are injectable: the engine passes a sleep that wakes
on cancel, and tests drive the bucket with a fake clock instead of timing.
"""
from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``consume(n)`` returns once ``n`` more bytes fit under ``rate`` bytes/s.

    Up to ``burst`` bytes (default: one second's worth) may pass at once
    after an idle period; beyond that the average rate is exactly ``rate``.
    """

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f'rate must be positive, got {rate!r}')
        self.rate = float(rate)
        self.burst = float(rate if burst is None else burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self.slept = 0.0            # total seconds waited, for tests and logs

    def consume(self, n: int) -> float:
        """Take ``n`` tokens, sleeping off any debt; return the seconds slept."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / self.rate
        self._sleep(delay)
        self.slept += delay
        return delay

    def slice_size(self, buffer_size: int) -> int:
        """Bytes to read between two ``consume`` calls: about 1/10 s of traffic,
        so the rate is smooth instead of one burst per large buffer."""
        return max(64 << 10, min(buffer_size, int(self.rate / 10)))
