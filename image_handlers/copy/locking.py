"""One transfer per image per host, and one writer per partial file.

The per-image lock is an flock on ``.<lock_name>.lock`` (between processes)
plus a threading lock (between threads of one process, whatever the
platform's flock semantics). The partial file is flocked too, so two copies
to one target without a common lock name cannot interleave their writes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy import fsutil
from image_handlers.copy.cancel import CancelToken
from image_handlers.copy.checkpoint import CopyPaths

LOG = logging.getLogger(__name__)
POLL_SECONDS = 0.1

_registry_lock = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


def lock_path(lock_dir: str, lock_name: str) -> str:
    if (not lock_name or '/' in lock_name or '\x00' in lock_name
            or lock_name in ('.', '..')):
        raise exceptions.BadInput(
            f'invalid lock name {lock_name!r}: use a non-empty name without "/" '
            f'(e.g. the image id)')
    return os.path.join(os.path.abspath(lock_dir), f'.{lock_name}.lock')


@contextlib.contextmanager
def image_lock(path: str, cancel: CancelToken, description: str) -> Iterator[bool]:
    """Hold the per-image lock at ``path``; yields True when it had to wait."""
    with _registry_lock:
        thread_lock = _thread_locks.setdefault(path, threading.Lock())
    waited = False
    start = time.monotonic()
    while not thread_lock.acquire(timeout=POLL_SECONDS):
        waited = _note_wait(waited, path, description)
        cancel.check(description)
    try:
        try:
            # The lock directory is ours (a state directory): create it if needed.
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise exceptions.InvalidTarget(
                f'cannot open the lock file {path}: {exc.strerror}: make its '
                f'directory writable or set another lock directory') from exc
        try:
            while not _try_flock(fd):
                waited = _note_wait(waited, path, description)
                cancel.check(description)
                cancel.sleep(POLL_SECONDS)
            if waited:
                LOG.info('%s: got lock %s after %.1fs', description, path,
                         time.monotonic() - start)
            yield waited
        finally:
            os.close(fd)        # releases the flock
    finally:
        thread_lock.release()


def _note_wait(waited: bool, path: str, description: str) -> bool:
    if not waited:
        LOG.info('%s: waiting for lock %s (another transfer of this image runs '
                 'on this host)', description, path)
    return True


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def open_partial(paths: CopyPaths) -> tuple[int, bool]:
    """Open (creating if needed) and flock the partial file.

    Returns ``(fd, created)``. Re-checks after locking that the path still
    names the locked file: a copy that just finished unlinks its partial.
    """
    for _attempt in range(10):
        created = False
        try:
            try:
                fd = os.open(paths.partial, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = os.open(paths.partial,
                             os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                created = True
        except FileExistsError:
            continue
        except OSError as exc:
            if fsutil.is_not_writable(exc):
                raise fsutil.not_writable(paths) from exc
            raise
        if not _try_flock(fd):
            os.close(fd)
            raise exceptions.TargetBusy(
                f'another copy to {paths.target} is in progress (its partial file '
                f'{paths.partial} is locked): wait for it, or give both the same '
                f'lock name')
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(paths.partial))
        except FileNotFoundError:
            same = False
        if same:
            return fd, created
        os.close(fd)
    raise OSError(errno.EAGAIN, f'cannot lock {paths.partial}: it keeps being replaced')
