"""fiemap: extents as the kernel maps them."""
from __future__ import annotations

import errno
import os

import pytest

from image_handlers.shared_fs import fiemap

MiB = 1 << 20


def test_sparse_file_extents_skip_holes(fs_dir):
    d = fs_dir('ext4')
    fd = os.open(d / 'sparse', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b'a' * 65536, 0)
        os.pwrite(fd, b'b' * 65536, 4 * MiB)
        found = fiemap.extents(fd)
        assert [e.logical for e in found] == [0, 4 * MiB]
        assert all(e.length == 65536 for e in found)
        assert found[-1].last and not found[0].last
        assert fiemap.shared_bytes(fd) == 0
    finally:
        os.close(fd)


def test_many_extents_are_read_in_batches(fs_dir):
    d = fs_dir('ext4')
    fd = os.open(d / 'holes', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        count = fiemap.BATCH * 2 + 7
        for i in range(count):
            os.pwrite(fd, b'x' * 4096, i * 65536)
        found = fiemap.extents(fd)
    finally:
        os.close(fd)
    assert len(found) >= count > 2 * fiemap.BATCH       # more than one batch
    assert sum(e.length for e in found) == count * 4096
    ends = [(e.logical, e.logical + e.length) for e in found]
    assert ends == sorted(ends)
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))    # no overlap
    assert all(any(s <= i * 65536 and i * 65536 + 4096 <= e for s, e in ends)
               for i in range(count))
    assert found[-1].last and not any(e.last for e in found[:-1])


def test_empty_file_has_no_extents(fs_dir):
    d = fs_dir('btrfs')
    fd = os.open(d / 'empty', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert fiemap.extents(fd) == []
    finally:
        os.close(fd)


def test_tmpfs_has_no_fiemap(tmp_mounts, tmp_path):
    where = tmp_mounts(tmp_path / 't')
    fd = os.open(where / 'f', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b'x')
        with pytest.raises(OSError) as err:
            fiemap.extents(fd)
        assert err.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
