"""A file's extents (FS_IOC_FIEMAP): the proof that a clone shares its source's
blocks, for tests and for ``explain``/``--json`` ("shared_bytes": N).

FIEMAP_EXTENT_SHARED is set on an extent another file (or snapshot) also uses,
on XFS and btrfs; ext4 supports FIEMAP but never sets it; tmpfs has no FIEMAP
(OSError EOPNOTSUPP).
"""
from __future__ import annotations

import dataclasses
import fcntl
import struct

# <linux/fs.h>: #define FS_IOC_FIEMAP _IOWR('f', 11, struct fiemap)
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1              # flush delayed allocation first: real extents
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_SHARED = 0x2000
FIEMAP_MAX_OFFSET = (1 << 64) - 1

# struct fiemap: __u64 fm_start, fm_length; __u32 fm_flags, fm_mapped_extents,
# fm_extent_count, fm_reserved (32 bytes), then struct fiemap_extent[]:
# __u64 fe_logical, fe_physical, fe_length, fe_reserved64[2]; __u32 fe_flags,
# fe_reserved[3] (56 bytes each).
_HEAD = struct.Struct('=QQIIII')
_EXTENT = struct.Struct('=QQQ16xI12x')
BATCH = 256


@dataclasses.dataclass(frozen=True)
class Extent:
    logical: int            # offset in the file, bytes
    physical: int           # offset on the device, bytes
    length: int
    flags: int              # FIEMAP_EXTENT_*

    @property
    def shared(self) -> bool:
        return bool(self.flags & FIEMAP_EXTENT_SHARED)

    @property
    def last(self) -> bool:
        return bool(self.flags & FIEMAP_EXTENT_LAST)


def extents(fd: int, sync: bool = True) -> list[Extent]:
    """Every extent of the open file ``fd``, in file order (holes are absent).
    Raises OSError (EOPNOTSUPP) where the file system has no FIEMAP."""
    found: list[Extent] = []
    start = 0
    while True:
        buf = bytearray(_HEAD.size + BATCH * _EXTENT.size)
        _HEAD.pack_into(buf, 0, start, FIEMAP_MAX_OFFSET - start,
                        FIEMAP_FLAG_SYNC if sync else 0, 0, BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = _HEAD.unpack_from(buf, 0)[3]
        batch = [Extent(*_EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size))
                 for i in range(mapped)]
        found.extend(batch)
        if not batch or batch[-1].last:
            return found
        start = batch[-1].logical + batch[-1].length


def shared_bytes(fd: int) -> int:
    """How many bytes of the file are in extents shared with another file."""
    return sum(e.length for e in extents(fd) if e.shared)
