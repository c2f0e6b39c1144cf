"""File system steps of a copy: refuse bad targets, fsync, publish without
ever overwriting, and explain a full disk."""
from __future__ import annotations

import errno
import os

from image_handlers import exceptions
from image_handlers.copy.checkpoint import CopyPaths

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def check_target_path(target: str) -> None:
    """``check_target`` for a path: what callers outside the engine use."""
    check_target(CopyPaths.for_target(target))


def check_target(paths: CopyPaths) -> None:
    """Raise TargetExists or InvalidTarget, with what to do, before any write."""
    if os.path.lexists(paths.target):
        raise exceptions.TargetExists(
            f'target {paths.target} already exists; image_handlers never overwrites '
            f'a file: remove it yourself or choose another path')
    directory = paths.directory
    if not os.path.exists(directory):
        raise exceptions.InvalidTarget(
            f'target directory {directory} does not exist: create it first')
    if not os.path.isdir(directory):
        raise exceptions.InvalidTarget(
            f'{directory} (the directory of target {paths.target}) is not a '
            f'directory: choose a path inside a directory')
    if not os.access(directory, os.W_OK | os.X_OK) or read_only(directory):
        raise not_writable(paths)


def not_writable(paths: CopyPaths) -> exceptions.InvalidTarget:
    return exceptions.InvalidTarget(
        f'target directory {paths.directory} is not writable (read-only mount or '
        f'permissions): make it writable or choose another directory')


def read_only(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def is_not_writable(exc: OSError) -> bool:
    return exc.errno in _NOT_WRITABLE_ERRNOS


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def free_bytes(directory: str) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full(paths: CopyPaths, description: str, needed: int | None,
              written: int) -> exceptions.DiskFull:
    free = free_bytes(paths.directory)
    need = (f'the image needs {needed} bytes' if needed is not None
            else 'the image size is unknown')
    have = (f'{free} bytes are free now' if free is not None
            else 'free space unknown')
    return exceptions.DiskFull(
        f'no space left in {paths.directory} copying {description} to '
        f'{paths.target}: {need}, {written} were written when it ran out, {have}; '
        f'the partial copy was deleted and nothing was published: free some space '
        f'or choose another directory')


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(paths: CopyPaths) -> None:
    """Give the complete, synced partial file its final name, atomically and
    without overwriting: a hard link fails with EEXIST where rename would
    silently replace a file that appeared meanwhile."""
    try:
        os.link(paths.partial, paths.target)
    except FileExistsError:
        raise exceptions.TargetExists(
            f'target {paths.target} appeared while the copy ran; it was left '
            f'untouched and the copy discarded') from None
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise exceptions.InvalidTarget(
                f'cannot publish {paths.target}: the file system of '
                f'{paths.directory} refused a hard link ({exc.strerror}), which is '
                f'how a copy is published without overwriting: choose a directory '
                f'on a POSIX file system') from exc
        raise
    os.unlink(paths.partial)
    fsync_dir(paths.directory)


def publish_new(path: str, kind: str, make) -> None:
    """Make a file with ``make(tmp)`` under a temporary name beside ``path``, then
    give it its name by link(2) of that very file (a symlink is linked, not
    followed): never overwrites, and nothing is left behind on failure."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f'.{name}.{kind}-{os.getpid()}')
    try:
        make(tmp)
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise exceptions.TargetExists(
            f'target {path} appeared meanwhile; left untouched') from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
