"""The command's progress bar: one line on stderr, redrawn in place, only when
stderr is a terminal (``--no-progress`` turns it off there too).

``render`` makes the line from numbers alone (tested without a terminal); ``Bar``
draws it, throttled, keeps log lines (also on stderr) from landing in the middle
of it, and is fed by the copy engine's progress (``copies()``, for ``fetch`` and
``copy``) or by a job's record (``job()``, for ``jobs wait``). stdout, where the
result and ``--json`` go, is never touched.
"""
from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

# The engine's own renderings, so the bar and the progress log read alike.
from image_handlers.copy.progress import duration_text, size_text

BAR_CELLS = 20
REDRAW_INTERVAL = 0.2       # seconds between two drawings of the line


def render(done: int, total: int | None, elapsed: float, moved: int | None = None,
           label: str = '', width: int = 80) -> str:
    """The status line: ``label [####    ]  42.0% 1.2 GiB of 3.0 GiB  110.3 MiB/s
    ETA 0:00:16``; without a known total, bytes and rate only. ``moved``: bytes
    moved in ``elapsed`` seconds (default ``done``: a resumed copy's earlier bytes
    are no part of its rate). At most ``width`` characters (the label is cut)."""
    moved = done if moved is None else max(moved, 0)
    rate = moved / elapsed if elapsed > 0 else None
    speed = f'{size_text(rate)}/s' if rate is not None else '-/s'
    if total:
        fraction = min(max(done / total, 0.0), 1.0)
        filled = int(fraction * BAR_CELLS)
        if done >= total:       # how long it took, when all of it was seen
            eta = (f'done in {duration_text(elapsed)}' if elapsed > 0 and moved >= done
                   else 'done')
        elif rate:
            eta = f'ETA {duration_text((total - done) / rate)}'
        else:
            eta = 'ETA -:--:--'
        status = (f'{100 * fraction:5.1f}% {size_text(done)} of {size_text(total)}  '
                  f'{speed}  {eta}')
        bar = f'[{"#" * filled}{" " * (BAR_CELLS - filled)}] '
        if len(bar) + len(status) <= width:
            status = bar + status
    else:
        status = f'{size_text(done)}  {speed}'
    room = width - len(status) - 1
    if not label or room < 8:
        return status[:width]
    if len(label) > room:
        label = label[:room - 3] + '...'
    return f'{label} {status}'


class Bar:
    """A line on ``stream`` redrawn at most every REDRAW_INTERVAL; ``enabled``
    defaults to ``stream`` being a terminal. Use it as a context manager: the
    last state stays on screen, followed by a newline."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_tty(self.stream) if enabled is None else enabled
        self._clock = clock
        self._lock = threading.RLock()
        self._drawn_at: float | None = None
        self._last: str | None = None         # the line as last drawn
        self._showing = False                 # the line is on screen, unterminated

    def __enter__(self) -> 'Bar':
        if self.enabled:
            self._guard_log_handlers()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def show(self, label: str, done: int, total: int | None, elapsed: float,
             moved: int | None = None, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            if (not force and self._drawn_at is not None
                    and now - self._drawn_at < REDRAW_INTERVAL):
                return
            self._drawn_at = now
            self._last = render(done, total, elapsed, moved, label, _width(self.stream))
            self._draw()

    def close(self) -> None:
        with self._lock:
            if self.enabled and self._last is not None:
                self._draw()
                self.stream.write('\n')
                self.stream.flush()
            self._showing, self._last = False, None
            self._unguard_log_handlers()

    # -- feeds -------------------------------------------------------------

    @contextlib.contextmanager
    def copies(self) -> Iterator[None]:
        """Show every copy the engine runs while inside (fetch, copy)."""
        if not self.enabled:
            yield
            return
        from image_handlers.copy import progress
        seen: dict[int, tuple[float, int]] = {}   # id(Progress): (start, done then)

        def on_progress(p) -> None:
            now = self._clock()
            start, base = seen.get(id(p), (None, 0))
            if start is None or p.done < base:    # new copy, or restarted at 0
                start, base = now, p.done
                seen[id(p)] = (start, base)
            finished = p.total is not None and p.done >= p.total
            self.show(p.description, p.done, p.total, now - start, p.done - base,
                      force=finished)

        with progress.observe(on_progress):
            yield

    def job(self) -> Callable:
        """A ``runner.wait(watch=...)`` callback showing the job's record; the
        rate counts bytes done since the wait began."""
        first: list = []

        def watch(job) -> None:
            now = self._clock()
            if not first:
                first.append((now, job.done_bytes))
            start, base = first[0]
            self.show(f'{job.kind} job {job.id[:8]}', job.done_bytes, job.total_bytes,
                      now - start, job.done_bytes - base, force=job.finished)
        return watch

    # -- drawing -------------------------------------------------------------

    def _draw(self) -> None:
        self.stream.write('\r' + self._last + '\x1b[K')
        self.stream.flush()
        self._showing = True

    def _erase(self) -> None:
        """Before someone else writes to the stream: take the line away (the
        next update draws it again)."""
        with self._lock:
            if self._showing:
                self.stream.write('\r\x1b[K')
                self._showing = False

    def _guard_log_handlers(self) -> None:
        """Log handlers writing to our stream go through _Guarded, so a log line
        never lands in the middle of the bar."""
        self._guarded = []
        for handler in std_logging.getLogger().handlers:
            if (isinstance(handler, std_logging.StreamHandler)
                    and getattr(handler, 'stream', None) is self.stream):
                handler.setStream(_Guarded(self.stream, self))
                self._guarded.append(handler)

    def _unguard_log_handlers(self) -> None:
        for handler in getattr(self, '_guarded', []):
            handler.setStream(self.stream)
        self._guarded = []


class _Guarded:
    """A stream that erases the bar before each write."""

    def __init__(self, stream: TextIO, bar: Bar) -> None:
        self._stream, self._bar = stream, bar

    def write(self, text: str) -> int:
        with self._bar._lock:
            self._bar._erase()
            return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns - 1 if columns > 20 else 79      # 0: a terminal of unknown size
