"""Progress of a copy: read by ``CopyTask.progress``, logged every few seconds
so an operator watching nova-compute's log sees a long copy move, and shown to
``observe()`` callbacks (the command's progress bar) as it changes."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# Called with the Progress on every start and update, on the copy's thread; a
# tuple, replaced whole, so a copy never sees it change under its feet.
_observers: tuple[Callable[['Progress'], None], ...] = ()


@contextlib.contextmanager
def observe(callback: Callable[['Progress'], None]) -> Iterator[None]:
    """Call ``callback(progress)`` on every copy's progress while inside; it must
    be quick (it runs on the copy's thread, once per buffer)."""
    global _observers
    _observers += (callback,)
    try:
        yield
    finally:
        _observers = tuple(o for o in _observers if o is not callback)


class Progress:
    def __init__(self, description: str, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description = description
        self.interval = interval
        self.done = 0
        self.total: int | None = None
        self._clock = clock
        self._started = clock()
        self._received_at_start = 0
        self._last_log = self._started

    def snapshot(self) -> tuple[int, int | None]:
        return self.done, self.total

    def start(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        self._started = self._last_log = self._clock()
        for observer in _observers:
            observer(self)

    def update(self, done: int, received: int) -> None:
        """Record ``done`` bytes in the file, ``received`` from the source in
        this run; log when ``interval`` has passed since the last line."""
        self.done = done
        for observer in _observers:
            observer(self)
        now = self._clock()
        if now - self._last_log < self.interval:
            return
        self._last_log = now
        LOG.info('%s', self.line(now, received))

    def line(self, now: float, received: int) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = received / elapsed
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (f'ETA {duration_text((self.total - self.done) / rate)}' if rate
                   else 'ETA unknown')
            where = f'{size_text(self.done)} of {size_text(self.total)} ({pct:.1f}%)'
        else:
            where, eta = f'{size_text(self.done)} of unknown size', ''
        return f'{self.description}: {where} at {size_text(rate)}/s {eta}'.rstrip()


def size_text(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.1f} TiB'


def duration_text(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f'{h}:{m:02d}:{s:02d}'
