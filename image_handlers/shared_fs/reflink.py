"""Copy-on-write clones (FICLONE): a new, independent disk that shares the source's
blocks until either is written -- O(1) whatever the size, no dependency on the
source afterwards.

``reflink_support`` answers from the file system's type and, for XFS, its
geometry (``mkfs.xfs -m reflink=0`` is still possible), without writing a byte:
``explain`` must not create files. ``reflink_file`` makes the clone under a
temporary name beside the target and publishes it by hard link, so a failed
clone leaves nothing (``cp --reflink=always`` leaves an empty file on ext4).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import secrets
import stat
import struct

from oslo_log import log as logging

from image_handlers import exceptions
from image_handlers.copy import fsutil
from image_handlers.shared_fs import mounts
from image_handlers.shared_fs.errors import ReflinkError, ReflinkUnsupported

LOG = logging.getLogger(__name__)

# <linux/fs.h>: #define FICLONE _IOW(0x94, 9, int)
FICLONE = 0x40049409


def _ior(kind: str, number: int, size: int) -> int:
    """The kernel's _IOR(type, nr, size) as x86 and arm encode it (2 direction
    bits, 14 size bits; FICLONE above is that encoding of _IOW too)."""
    return (2 << 30) | (size << 16) | (ord(kind) << 8) | number


# <xfs/xfs_fs.h> (xfslibs-dev): struct xfs_fsop_geom is 256 bytes (v5, Linux >= 5.1),
# struct xfs_fsop_geom_v4 112 bytes; both start with 8 __u32, 4 __u64, a 16-byte
# uuid, then __u32 sunit, swidth, __s32 version, __u32 flags: ``flags`` at byte 92.
XFS_GEOM_SIZE = 256
XFS_GEOM_V4_SIZE = 112
XFS_IOC_FSGEOMETRY = _ior('X', 126, XFS_GEOM_SIZE)         # 0x8100587e
XFS_IOC_FSGEOMETRY_V4 = _ior('X', 124, XFS_GEOM_V4_SIZE)   # 0x8070587c
XFS_GEOM_FLAGS_OFFSET = 92
XFS_FSOP_GEOM_FLAGS_REFLINK = 1 << 20

# File systems that never clone with FICLONE (the reason is said to the operator).
_NO_REFLINK = {
    'ext2': 'ext2/3/4 have no shared extents',
    'ext3': 'ext2/3/4 have no shared extents',
    'ext4': 'ext2/3/4 have no shared extents',
    'tmpfs': 'tmpfs has no shared extents',
    'ramfs': 'ramfs has no shared extents',
    'devtmpfs': 'devtmpfs has no shared extents',
    'vfat': 'FAT has no shared extents',
    'exfat': 'exFAT has no shared extents',
    'f2fs': 'f2fs has no FICLONE',
    'squashfs': 'squashfs is read-only',
    'iso9660': 'iso9660 is read-only',
    'proc': 'not a data file system',
    'sysfs': 'not a data file system',
}
# File systems that always can (given both files on it).
_REFLINK = {
    'btrfs': 'btrfs always shares extents (FICLONE)',
    'ocfs2': 'ocfs2 supports reflink',
    'bcachefs': 'bcachefs supports reflink',
}


@dataclasses.dataclass(frozen=True)
class Support:
    """``verdict``: True (it will clone), False (it cannot), None (unknown: try
    it, a failure costs nothing). ``reason`` says which and why."""

    verdict: bool | None
    reason: str


def clone_fd(src_fd: int, dst_fd: int) -> None:
    """Make ``dst_fd``'s file share all of ``src_fd``'s blocks (FICLONE).

    Raises ReflinkUnsupported for the file system's "cannot" (EOPNOTSUPP, EXDEV,
    EINVAL, ENOTTY, ENOSYS) and ReflinkError for anything else (ENOSPC, EIO,
    EPERM, EBADF...), both with ``errno``.
    """
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        error = ReflinkError(f'FICLONE failed: {exc.strerror}', exc.errno)
        if error.unsupported:
            raise ReflinkUnsupported(str(error), exc.errno) from exc
        raise error from exc


def xfs_geometry_flags(fd: int) -> int:
    """The XFS geometry ``flags`` of the file system of ``fd`` (OSError if not XFS)."""
    for request, size in ((XFS_IOC_FSGEOMETRY, XFS_GEOM_SIZE),
                          (XFS_IOC_FSGEOMETRY_V4, XFS_GEOM_V4_SIZE)):
        buf = bytearray(size)
        try:
            fcntl.ioctl(fd, request, buf, True)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL) and size != XFS_GEOM_V4_SIZE:
                continue        # a kernel before 5.1: only the v4 structure
            raise
        return struct.unpack_from('=I', buf, XFS_GEOM_FLAGS_OFFSET)[0]
    raise AssertionError('unreachable')


def reflink_support(path: str | os.PathLike) -> Support:
    """Can a clone be made on the file system of ``path`` (a file or directory)?
    Reads only: the mount table and, for XFS, the geometry ioctl."""
    path = os.fspath(path)
    try:
        # Only files and directories reach the file system's ioctls (a FIFO's
        # or device's go to its driver): ask about anything else's directory.
        st = os.stat(path)
        probe = (path if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
                 else os.path.dirname(os.path.realpath(path)))
        fd = os.open(probe, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return Support(None, f'cannot open {path} ({exc.strerror}): will try')
    try:
        try:
            mount = mounts.mount_of_fd(fd, path)
        except OSError as exc:
            return Support(None, f'mount of {path} unknown ({exc}): will try')
        where = f'{path} is on {mount.fs_type} {mount.source} at {mount.mount_point}'
        if mount.read_only:
            return Support(False, f'{where}, mounted read-only')
        fs_type = mount.fs_type
        if fs_type in _REFLINK:
            return Support(True, f'{where}: {_REFLINK[fs_type]}')
        if fs_type in _NO_REFLINK:
            return Support(False, f'{where}: {_NO_REFLINK[fs_type]}')
        if fs_type == 'fuse' or fs_type.startswith(('fuse.', 'fuseblk')):
            return Support(False, f'{where}: FUSE has no FICLONE (GlusterFS, '
                                  f'CephFS-fuse, sshfs...)')
        if fs_type == 'xfs':
            try:
                flags = xfs_geometry_flags(fd)
            except OSError as exc:
                return Support(None, f'{where}; its geometry cannot be read '
                                     f'({exc.strerror}): will try')
            if flags & XFS_FSOP_GEOM_FLAGS_REFLINK:
                return Support(True, f'{where}, formatted with reflink=1')
            return Support(False, f'{where}, formatted without reflink (made by '
                                  f'mkfs.xfs -m reflink=0, or before xfsprogs 5.1 '
                                  f'made reflink=1 the default)')
        if fs_type in ('nfs', 'nfs4'):
            return Support(None, f'{where}: NFS 4.2 clones when the server can '
                                 f'(CLONE operation): will try')
        return Support(None, f'{where}: unknown whether it clones: will try')
    finally:
        os.close(fd)


def clone_possible(source: str | os.PathLike, target_dir: str | os.PathLike) -> Support:
    """``reflink_support`` for a clone of ``source`` into ``target_dir``: both on
    one file system first (FICLONE never crosses file systems)."""
    try:
        same = mounts.same_filesystem(source, target_dir)
    except OSError as exc:
        return Support(False, f'cannot stat {exc.filename}: {exc.strerror}')
    if not same:
        return Support(False, f'{os.fspath(source)} and {os.fspath(target_dir)} are '
                              f'on different file systems: a reflink cannot cross them')
    return reflink_support(target_dir)


def reflink_file(src: int | str | os.PathLike, dst_path: str | os.PathLike,
                 mode: int = 0o644) -> str:
    """Clone ``src`` (an open fd, or a path opened without following a final
    symlink) as the new file ``dst_path``; return the published path.

    Never overwrites (TargetExists) and on any failure -- unsupported, disk
    full, interrupted -- leaves nothing: not the temporary file, not the target.
    """
    dst_path = os.path.abspath(os.fspath(dst_path))
    directory, name = os.path.split(dst_path)
    if os.path.lexists(dst_path):
        raise exceptions.TargetExists(
            f'target {dst_path} already exists; image_handlers never overwrites a '
            f'file: remove it yourself or choose another path')
    own_fd = not isinstance(src, int)
    if own_fd:
        try:
            src_fd = os.open(os.fspath(src), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ReflinkError(f'cannot open the clone source {os.fspath(src)}: '
                               f'{exc.strerror}', exc.errno) from exc
    else:
        src_fd = src
    tmp = os.path.join(directory, f'.{name}.reflink-{secrets.token_hex(4)}')
    dst_fd = -1
    published = False
    try:
        try:
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o600)
        except OSError as exc:
            raise ReflinkError(f'cannot create {tmp} to clone into: {exc.strerror}',
                               exc.errno) from exc
        try:
            clone_fd(src_fd, dst_fd)
        except ReflinkError as exc:
            raise type(exc)(f'cannot clone into {dst_path}: {exc}', exc.errno) from exc
        try:
            src_size = os.fstat(src_fd).st_size
            dst_size = os.fstat(dst_fd).st_size
            if dst_size != src_size:
                raise ReflinkError(f'the clone {tmp} has {dst_size} bytes where the '
                                   f'source has {src_size}')
            os.fchmod(dst_fd, mode)
            os.fsync(dst_fd)
            os.link(tmp, dst_path)      # EEXIST where rename would overwrite
            published = True
            os.unlink(tmp)
            fsutil.fsync_dir(directory)
        except FileExistsError:
            raise exceptions.TargetExists(
                f'target {dst_path} appeared while the clone was made; it was left '
                f'untouched and the clone discarded') from None
        except OSError as exc:
            raise ReflinkError(f'cannot publish the clone {dst_path}: {exc.strerror}',
                               exc.errno) from exc
    except BaseException:
        _discard(tmp, dst_path if published else None, dst_fd)
        raise
    finally:
        if dst_fd >= 0:
            os.close(dst_fd)
        if own_fd:
            os.close(src_fd)
    LOG.debug('cloned %s', dst_path)
    return dst_path


def _discard(tmp: str, published: str | None, fd: int) -> None:
    """Remove what a failed reflink_file made: the temporary file, and the target
    only when it still is our clone (never a file that replaced it)."""
    if published is not None and fd >= 0:
        try:
            if os.path.samestat(os.lstat(published), os.fstat(fd)):
                os.unlink(published)
        except OSError:
            pass
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning('could not remove the temporary clone %s: %s', tmp, exc.strerror)

