"""Which mount a path is on, as the kernel sees it (``/proc/self/mountinfo``).

The mount table says what kind of file system a path is on (xfs, btrfs, nfs4,
fuse.glusterfs) and whether it is read-only. It does not decide "same file
system": bind mounts show one file system at several mount points, btrfs
subvolumes have their own device numbers inside one mount, and a mount point
string can be stale or hidden under another mount. So ``same_filesystem`` compares
the paths' own ``st_dev``, and ``mount_of`` asks the kernel for the mount id of
the path it actually opened (``/proc/self/fdinfo``) before falling back to the
longest mount point prefix.

Hard links need more than one file system: ``link(2)`` fails with EXDEV across
two mounts even of the same file system (a bind mount), hence ``same_mount``.
"""
from __future__ import annotations

import dataclasses
import os
import re

MOUNTINFO = '/proc/self/mountinfo'

_ESCAPE = re.compile(rb'\\([0-7]{3})')


@dataclasses.dataclass(frozen=True)
class MountInfo:
    """One line of mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    device: int                 # st_dev of the mount's root (os.makedev(major, minor))
    root: str                   # the directory of the file system mounted here
    mount_point: str
    options: tuple[str, ...]    # per-mount options (rw/ro, nodev, ...)
    fs_type: str                # 'xfs', 'btrfs', 'nfs4', 'fuse.glusterfs', ...
    source: str                 # '/dev/loop0', 'server:/export', 'host:/volume'
    super_options: tuple[str, ...] = ()

    @property
    def read_only(self) -> bool:
        return 'ro' in self.options or 'ro' in self.super_options

    @property
    def is_bind(self) -> bool:
        """True when only a sub-directory of the file system is mounted here
        (a bind mount, or a btrfs subvolume other than the top one)."""
        return self.root != '/'


def unescape(field: bytes) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` space, ``\011`` tab, ``\012``
    newline, ``\134`` backslash); bytes that are not UTF-8 stay as os.fsdecode
    keeps them, so the result names the same path."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    """Parse mountinfo text; lines that do not parse are skipped (a kernel with
    a format we do not know must not break the caller)."""
    mounts = []
    for line in data.splitlines():
        fields = line.split(b' ')
        try:
            sep = fields.index(b'-', 6)
            major, minor = fields[2].split(b':')
            mounts.append(MountInfo(
                mount_id=int(fields[0]), parent_id=int(fields[1]),
                device=os.makedev(int(major), int(minor)),
                root=unescape(fields[3]), mount_point=unescape(fields[4]),
                options=tuple(unescape(fields[5]).split(',')),
                fs_type=unescape(fields[sep + 1]), source=unescape(fields[sep + 2]),
                super_options=tuple(unescape(fields[sep + 3]).split(','))
                if len(fields) > sep + 3 else ()))
        except (ValueError, IndexError):
            continue
    return mounts


def read_mounts(mountinfo: str = MOUNTINFO) -> list[MountInfo]:
    """This process's mounts, in the kernel's order (a later entry on the same
    mount point is mounted over the earlier one)."""
    with open(mountinfo, 'rb') as f:
        return parse_mountinfo(f.read())


def mount_id_of_fd(fd: int) -> int | None:
    """The mount id of an open file (``mnt_id`` in fdinfo, Linux >= 3.15)."""
    try:
        with open(f'/proc/self/fdinfo/{fd}', 'rb') as f:
            for line in f:
                if line.startswith(b'mnt_id:'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _contains(mount_point: str, path: str) -> bool:
    return (path == mount_point or mount_point == '/'
            or path.startswith(mount_point.rstrip('/') + '/'))


def mount_by_prefix(path: str, mounts: list[MountInfo]) -> MountInfo | None:
    """The mount whose mount point is the longest prefix of ``path`` (already a
    real path); of equal ones the last, i.e. the one on top."""
    best = None
    for m in mounts:
        if _contains(m.mount_point, path) and (
                best is None or len(m.mount_point) >= len(best.mount_point)):
            best = m
    return best


def mount_of_fd(fd: int, path: str | None = None,
                mountinfo: str = MOUNTINFO) -> MountInfo:
    """The mount an open file is on: by the kernel's mount id, else (no fdinfo)
    by the longest prefix of ``path``. Raises OSError when neither names one."""
    mounts = read_mounts(mountinfo)
    mnt_id = mount_id_of_fd(fd)
    if mnt_id is not None:
        for m in mounts:
            if m.mount_id == mnt_id:
                return m
    if path is not None:
        found = mount_by_prefix(os.path.realpath(path), mounts)
        if found is not None:
            return found
    raise OSError(f'no mount in {mountinfo} holds {path or f"fd {fd}"}')


def mount_of(path: str | os.PathLike) -> MountInfo:
    """The mount ``path`` (its real path; it must exist) is on."""
    path = os.fspath(path)
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return mount_of_fd(fd, path)
    finally:
        os.close(fd)


def same_filesystem(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both existing paths are on one file system (their ``st_dev``):
    what a reflink needs. Bind mounts of one file system count as one."""
    return os.stat(a).st_dev == os.stat(b).st_dev


def same_mount(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths are on one file system *and* one mount: what a hard
    link needs (link(2) returns EXDEV across two bind mounts of one file system)."""
    if not same_filesystem(a, b):
        return False
    return mount_of(a).mount_id == mount_of(b).mount_id
