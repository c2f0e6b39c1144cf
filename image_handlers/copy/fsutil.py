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
        tidy_published(paths)
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


def tidy_published(paths: CopyPaths) -> None:
    """A copy killed while publishing leaves the partial (a second link to the
    target, before its unlink) or the checkpoint (before its removal) behind; with
    the target there neither can ever be resumed, so they go. A partial that is
    another file is left alone (found by tools/kill_trials.py)."""
    try:
        target = os.stat(paths.target, follow_symlinks=False)
        part = os.stat(paths.partial, follow_symlinks=False)
    except FileNotFoundError:
        part = None
    except OSError:
        return
    if part is not None:
        if (part.st_dev, part.st_ino) != (target.st_dev, target.st_ino):
            return
        os.unlink(paths.partial)
    for name in (paths.checkpoint, paths.checkpoint_tmp):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


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


def file_system_of(directory: str) -> str:
    """'the ext4 file system mounted at /x' (from /proc/self/mountinfo), for
    messages an operator acts on; the directory itself when not found."""
    path = os.path.realpath(directory)
    best = ('', '')
    try:
        with open('/proc/self/mountinfo', encoding='utf-8') as f:
            for line in f:
                fields = line.split()
                mount = fields[4].encode().decode('unicode_escape')
                fs_type = fields[fields.index('-') + 1]
                inside = path == mount or path.startswith(mount.rstrip('/') + '/')
                if inside and len(mount) >= len(best[0]):
                    best = (mount, fs_type)
    except (OSError, ValueError, IndexError):
        pass
    if not best[0]:
        return f'the file system of {directory}'
    return f'the {best[1]} file system mounted at {best[0]}'


def check_space(paths: CopyPaths, description: str, total: int, offset: int) -> None:
    """Refuse before writing when the file system cannot hold the rest of the
    image: its size less what the partial already holds, counted as if it had
    no holes (which ones it has is only known once read), so a copy never
    starts that could fill the disk every instance on the host writes to."""
    free = free_bytes(paths.directory)
    needed = total - offset
    if free is None or needed <= free:
        return
    kept = (f'; the partial copy {paths.partial} ({offset} bytes) is kept and the '
            f'next copy resumes from it' if offset else '')
    raise exceptions.DiskFull(
        f'not enough space for {description} in {file_system_of(paths.directory)}: '
        f'{paths.target} needs up to {needed} more bytes (the image has {total}, '
        f'holes are only known once read) and {free} are free; nothing was written '
        f'or published{kept}: free at least {needed - free} bytes there or choose '
        f'another directory')


def disk_full(paths: CopyPaths, description: str, needed: int | None,
              written: int) -> exceptions.DiskFull:
    free = free_bytes(paths.directory)
    need = (f'the image needs {needed} bytes' if needed is not None
            else 'the image size is unknown')
    have = (f'{free} bytes are free now' if free is not None
            else 'free space unknown')
    return exceptions.DiskFull(
        f'no space left in {paths.directory} ({file_system_of(paths.directory)}) '
        f'copying {description} to {paths.target}: {need}, {written} were written '
        f'when it ran out, {have}; the partial copy was deleted (a full disk hurts '
        f'every instance on this host) and nothing was published: free some space '
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
