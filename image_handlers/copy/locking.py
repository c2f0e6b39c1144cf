"""One transfer per image per host, and one writer per partial file.

The lock file also records the last file a transfer of the image published, so a
copy of the same image to another target reads that file, not the source again.

The per-image lock is an flock on ``.<lock_name>.lock`` (between processes)
plus a threading lock (between threads of one process, whatever the
platform's flock semantics). The partial file is flocked too, so two copies
to one target without a common lock name cannot interleave their writes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy import file_source, fsutil
from image_handlers.copy.cancel import CancelToken
from image_handlers.copy.checkpoint import CopyPaths

LOG = logging.getLogger(__name__)
POLL_SECONDS = 0.1

_registry_lock = threading.Lock()
# path -> [the threading lock, how many threads hold or wait for it]: an entry
# lives only while someone uses it, so a long-lived nova-compute does not keep one
# per image and per clone target it ever saw (found by bench/soak.py: ~230 bytes
# per rbd_clone disk, for ever).
_thread_locks: dict[str, list] = {}


def lock_path(lock_dir: str, lock_name: str) -> str:
    if (not lock_name or '/' in lock_name or '\x00' in lock_name
            or lock_name in ('.', '..')):
        raise exceptions.BadInput(
            f'invalid lock name {lock_name!r}: use a non-empty name without "/" '
            f'(e.g. the image id)')
    return os.path.join(os.path.abspath(lock_dir), f'.{lock_name}.lock')


@contextlib.contextmanager
def _thread_lock(path: str, cancel: CancelToken, description: str,
                 waited: list[bool]) -> Iterator[None]:
    """This process's lock for ``path`` (flock alone does not exclude threads on
    every platform), dropped from the registry once nobody uses it."""
    with _registry_lock:
        entry = _thread_locks.setdefault(path, [threading.Lock(), 0])
        entry[1] += 1
    try:
        while not entry[0].acquire(timeout=POLL_SECONDS):
            waited[0] = _note_wait(waited[0], path, description)
            cancel.check(description)
        try:
            yield
        finally:
            entry[0].release()
    finally:
        with _registry_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _thread_locks[path]


@contextlib.contextmanager
def image_lock(path: str, cancel: CancelToken, description: str,
               remove: bool = False) -> Iterator[bool]:
    """Hold the per-image lock at ``path``; yields True when it had to wait.

    ``remove``: unlink the lock file on release (for locks named after something
    short-lived, e.g. a clone target, so they do not pile up); every user of such
    a path must pass it. The file is removed while still locked, and a taker
    checks after locking that the path still names its file."""
    waited = [False]
    start = time.monotonic()
    with _thread_lock(path, cancel, description, waited):
        fd = _lock_file(path, cancel, description, waited, remove)
        try:
            if waited[0]:
                LOG.info('%s: got lock %s after %.1fs', description, path,
                         time.monotonic() - start)
            yield waited[0]
        finally:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            os.close(fd)        # releases the flock


def _lock_file(path: str, cancel: CancelToken, description: str,
               waited: list[bool], remove: bool) -> int:
    """Open and flock the lock file; with ``remove``, retry until the locked file
    is the one the path names (the holder before may have unlinked it)."""
    while True:
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
                waited[0] = _note_wait(waited[0], path, description)
                cancel.check(description)
                cancel.sleep(POLL_SECONDS)
            if not remove or _names(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _names(path: str, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


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


# -- one transfer per image, whatever the targets ------------------------------------
# The lock makes a second copy of the image wait; when the first published the same
# target, the second reuses it (engine._reuse). When it published another one (16
# requests, 16 disks), the second reads that file instead of the source: the copy
# that published records it IN the lock file, while it still holds the lock, and
# only a holder of the lock reads it (so no reader sees half a record).

def record_published(lock: str, target: str, checksum: str | None) -> None:
    """Note (holding the lock) the file a transfer of the image just published."""
    if checksum is None:
        return              # nothing would prove a local file's bytes: never reused
    try:
        st = os.stat(target, follow_symlinks=False)
        doc = json.dumps({'target': target, 'checksum': checksum,
                          'stat_key': list(file_source.stat_key(st))}).encode()
        fd = os.open(lock, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, doc, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        LOG.warning('cannot record the copy published at %s in lock %s (the next '
                    'copy of this image to another target will transfer it again): '
                    '%s', target, lock, exc)


def published_copy(lock: str, checksum: str | None, target: str,
                   description: str) -> file_source.LocalFileSource | None:
    """The file of this image another transfer published, as a source, when it is
    still that very file and of the same checksum; else None (hold the lock)."""
    if checksum is None:
        return None
    try:
        with open(lock, 'rb') as f:
            raw = f.read(64 << 10)
        doc = json.loads(raw) if raw else None
    except (OSError, ValueError) as exc:
        LOG.warning('%s: ignoring the record in lock %s: %s', description, lock, exc)
        return None
    if not isinstance(doc, dict) or doc.get('checksum') != checksum:
        return None
    path, key = doc.get('target'), doc.get('stat_key')
    if (not isinstance(path, str) or path == target or not isinstance(key, list)
            or len(key) != 4 or not all(type(k) is int for k in key)):
        return None
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if tuple(key) != file_source.stat_key(st):
        return None             # removed, replaced or written since
    return file_source.LocalFileSource(
        path, tuple(key), f'{description} (from {path}, published by another '
                          f'transfer of this image on this host)')
