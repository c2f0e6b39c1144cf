"""The bandwidth limit: a token bucket, shared by every copy of the host.

The clock and the sleep are injectable: the engine passes a sleep that wakes
on cancel, and tests drive the bucket with a fake clock instead of timing.
``host_bucket`` is what the copy engine uses: one limit for the whole host.
"""
from __future__ import annotations

import fcntl
import os
import struct
import threading
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


# -- the host's limit ---------------------------------------------------------------
# An operator who sets bandwidth_limit means "this host's image traffic": sixteen
# copies at once must share it, whether they run in threads of one nova-compute or
# in several processes (nova workers, the CLI). So every copy's bucket is a view on
# one shared state: a GCRA "theoretical arrival time" (TAT), kept in a small file
# under the state directory and updated under flock (threads of this process also
# take a threading lock first). Admitting n bytes moves the TAT n/rate later; a
# reader waits until TAT - burst/rate. Whatever the number of copies and processes,
# the bytes admitted by time t are then at most rate * (t - t0) + burst.

STATE_FILE = '.bandwidth-limit'
MAX_DEBT = 3600.0   # seconds: a TAT further ahead is stale (e.g. from before a
                    # reboot, when the monotonic clock restarted) and is reset

_process_lock = threading.Lock()
_process_tat = [0.0]        # the shared state when no state directory is known


class HostBucket(TokenBucket):
    """One copy's view on the host-wide bucket (``host_bucket``); ``slept`` is this
    copy's own waiting, ``sleep`` its own (cancellable) sleep."""

    def __init__(self, rate: float, state_path: str | None, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        super().__init__(rate, burst, clock, sleep)
        self.state_path = state_path

    def consume(self, n: int) -> float:
        with _process_lock:
            if self.state_path is None:
                delay = self._admit(_process_tat, n)
            else:
                delay = self._admit_shared(n)
        if delay <= 0:
            return 0.0
        self._sleep(delay)
        self.slept += delay
        return delay

    def _admit(self, state: list[float], n: int) -> float:
        now = self._clock()
        tat = state[0]
        if tat > now + MAX_DEBT:
            tat = now
        tat = max(tat, now) + n / self.rate
        state[0] = tat
        return tat - now - self.burst / self.rate

    def _admit_shared(self, n: int) -> float:
        fd = _open_state(self.state_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 8, 0)
            state = [struct.unpack('=d', raw)[0] if len(raw) == 8 else 0.0]
            delay = self._admit(state, n)
            os.pwrite(fd, struct.pack('=d', state[0]), 0)
        finally:
            os.close(fd)        # releases the flock
        return delay


def _open_state(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def host_bucket(rate: float, state_dir: str | None,
                sleep: Callable[[float], object] = time.sleep) -> HostBucket:
    """The bucket a copy limited to ``rate`` bytes/s takes: shared with every copy
    of this host that uses ``state_dir`` (the engine passes its lock directory), or
    with every copy of this process when ``state_dir`` is None."""
    path = os.path.join(os.path.abspath(state_dir), STATE_FILE) if state_dir else None
    return HostBucket(rate, path, sleep=sleep)
