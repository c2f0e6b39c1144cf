"""Cancellation that also wakes a thread blocked on the network."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from image_handlers import exceptions


class CancelToken:
    """Set once by ``cancel()``; registered abort callables (e.g. a socket
    shutdown) run at that moment so a blocked read returns at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._aborts: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            aborts = list(self._aborts)
        for abort in aborts:
            abort()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when cancelled meanwhile."""
        return self._event.wait(timeout)

    def sleep(self, seconds: float) -> None:
        self._event.wait(seconds)

    def check(self, description: str) -> None:
        if self._event.is_set():
            raise exceptions.CopyCancelled(f'copy of {description} was cancelled')

    @contextlib.contextmanager
    def aborting(self, abort: Callable[[], None]) -> Iterator[None]:
        """Call ``abort`` if cancelled while the block runs."""
        with self._lock:
            self._aborts.append(abort)
            already = self._event.is_set()
        try:
            if already:
                abort()
            yield
        finally:
            with self._lock:
                self._aborts.remove(abort)
