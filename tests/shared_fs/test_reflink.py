"""reflink: real clones on XFS and btrfs, refusals that leave nothing behind."""
from __future__ import annotations

import errno
import hashlib
import os
import random

import pytest

from image_handlers import exceptions
from image_handlers.shared_fs import fiemap, mounts, reflink
from image_handlers.shared_fs.errors import ReflinkError, ReflinkUnsupported

MiB = 1 << 20


def write_data(path, size=4 * MiB + 12345, seed=3) -> bytes:
    data = random.Random(seed).randbytes(size)
    with open(path, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def listing(d):
    return sorted(os.listdir(d))


@pytest.mark.parametrize('fs_type', ['xfs', 'btrfs'])
def test_clone_shares_extents_and_is_independent(fs_type, fs_dir):
    d = fs_dir(fs_type)
    data = write_data(d / 'src')
    src_fd = os.open(d / 'src', os.O_RDONLY)
    try:
        assert fiemap.shared_bytes(src_fd) == 0

        published = reflink.reflink_file(src_fd, d / 'clone')

        assert published == str(d / 'clone')
        assert listing(d) == ['clone', 'src']           # no temporary left
        assert (d / 'clone').read_bytes() == data
        clone_fd = os.open(d / 'clone', os.O_RDWR)
        try:
            clone_extents = fiemap.extents(clone_fd)
            assert clone_extents and all(e.shared for e in clone_extents)
            assert fiemap.shared_bytes(clone_fd) >= len(data)
            assert fiemap.shared_bytes(src_fd) >= len(data)
            assert (os.fstat(clone_fd).st_ino != os.fstat(src_fd).st_ino)

            os.pwrite(clone_fd, b'\xff' * 4096, MiB)
            os.fsync(clone_fd)
        finally:
            os.close(clone_fd)
    finally:
        os.close(src_fd)
    assert hashlib.sha256((d / 'src').read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    changed = (d / 'clone').read_bytes()
    assert changed[MiB:MiB + 4096] == b'\xff' * 4096
    assert changed[:MiB] == data[:MiB] and changed[MiB + 4096:] == data[MiB + 4096:]


def test_clone_from_a_path_and_mode(fs_dir):
    d = fs_dir('btrfs')
    data = write_data(d / 'src', size=70000)
    reflink.reflink_file(d / 'src', d / 'clone', mode=0o440)
    assert (d / 'clone').read_bytes() == data
    assert os.stat(d / 'clone').st_mode & 0o777 == 0o440


@pytest.mark.parametrize('fs_type, verdict, words', [
    ('xfs', True, 'reflink=1'),
    ('btrfs', True, 'btrfs'),
    ('ext4', False, 'ext2/3/4'),
    ('xfs_noreflink', False, 'without reflink'),
])
def test_reflink_support_writes_nothing(fs_type, verdict, words, request):
    root = request.getfixturevalue(fs_type)
    before = listing(root), os.stat(root).st_mtime_ns
    support = reflink.reflink_support(root)
    assert support.verdict is verdict, support
    assert words in support.reason and str(root) in support.reason
    assert (listing(root), os.stat(root).st_mtime_ns) == before


def test_reflink_support_of_tmpfs_fifo_and_missing(fs_dir, tmp_mounts, tmp_path):
    assert reflink.reflink_support(tmp_mounts(tmp_path / 't')).verdict is False
    d = fs_dir('xfs')
    os.mkfifo(d / 'fifo')
    assert reflink.reflink_support(d / 'fifo').verdict is True      # never blocks
    missing = reflink.reflink_support(d / 'missing')
    assert missing.verdict is None and 'cannot open' in missing.reason


def test_xfs_geometry_flags(xfs, xfs_noreflink, ext4):
    for root, has in ((xfs, True), (xfs_noreflink, False)):
        fd = os.open(root, os.O_RDONLY)
        try:
            flags = reflink.xfs_geometry_flags(fd)
        finally:
            os.close(fd)
        assert bool(flags & reflink.XFS_FSOP_GEOM_FLAGS_REFLINK) is has
        assert flags & (1 << 15)        # V5SB: the structure was read where expected
    fd = os.open(ext4, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            reflink.xfs_geometry_flags(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize('fs_type', ['ext4', 'xfs_noreflink'])
def test_unsupported_clone_leaves_nothing(fs_type, request):
    root = request.getfixturevalue(fs_type)
    d = root / f'u-{os.getpid()}'
    d.mkdir()
    write_data(d / 'src', size=100000)
    with pytest.raises(ReflinkUnsupported) as err:
        reflink.reflink_file(d / 'src', d / 'clone')
    assert err.value.errno == errno.EOPNOTSUPP and err.value.unsupported
    assert str(d / 'clone') in str(err.value)
    assert listing(d) == ['src']


def test_clone_across_file_systems_is_unsupported(fs_dir):
    a, b = fs_dir('xfs'), fs_dir('btrfs')
    write_data(a / 'src', size=10000)
    with pytest.raises(ReflinkUnsupported) as err:
        reflink.reflink_file(a / 'src', b / 'clone')
    assert err.value.errno == errno.EXDEV
    assert listing(b) == []
    assert reflink.clone_possible(a / 'src', b).verdict is False
    assert reflink.clone_possible(a / 'src', a).verdict is True


def test_other_errors_are_not_unsupported_and_leave_nothing(fs_dir):
    d = fs_dir('xfs')
    write_data(d / 'src', size=10000)
    fd = os.open(d / 'src', os.O_WRONLY)        # FICLONE needs a readable source
    try:
        with pytest.raises(ReflinkError) as err:
            reflink.reflink_file(fd, d / 'clone')
    finally:
        os.close(fd)
    assert not isinstance(err.value, ReflinkUnsupported)
    assert err.value.errno == errno.EBADF and not err.value.unsupported
    assert listing(d) == ['src']


def test_existing_target_is_untouched(fs_dir):
    d = fs_dir('btrfs')
    write_data(d / 'src', size=1000)
    (d / 'clone').write_bytes(b'precious')
    with pytest.raises(exceptions.TargetExists):
        reflink.reflink_file(d / 'src', d / 'clone')
    assert (d / 'clone').read_bytes() == b'precious' and listing(d) == ['clone', 'src']


def test_failure_while_syncing_leaves_nothing(fs_dir, monkeypatch):
    d = fs_dir('xfs')
    write_data(d / 'src', size=10000)

    def fail(fd):
        raise OSError(errno.EIO, 'Input/output error')
    monkeypatch.setattr(reflink.os, 'fsync', fail)
    with pytest.raises(ReflinkError) as err:
        reflink.reflink_file(d / 'src', d / 'clone')
    assert err.value.errno == errno.EIO
    assert listing(d) == ['src']


def test_failure_after_publishing_removes_the_target(fs_dir, monkeypatch):
    d = fs_dir('xfs')
    write_data(d / 'src', size=10000)

    def fail(directory):
        raise OSError(errno.EIO, 'Input/output error')
    monkeypatch.setattr(reflink.fsutil, 'fsync_dir', fail)
    with pytest.raises(ReflinkError):
        reflink.reflink_file(d / 'src', d / 'clone')
    assert listing(d) == ['src']


def test_interrupt_leaves_nothing(fs_dir, monkeypatch):
    d = fs_dir('btrfs')
    write_data(d / 'src', size=10000)

    def interrupt(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(reflink, 'clone_fd', interrupt)
    with pytest.raises(KeyboardInterrupt):
        reflink.reflink_file(d / 'src', d / 'clone')
    assert listing(d) == ['src']


def test_clone_fd_error_types(fs_dir, ext4):
    d = fs_dir('xfs')
    write_data(d / 'src', size=1000)
    src = os.open(d / 'src', os.O_RDONLY)
    dst = os.open(ext4 / f'dst-{os.getpid()}', os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(ReflinkUnsupported) as err:
            reflink.clone_fd(src, dst)
        assert err.value.errno == errno.EXDEV
    finally:
        os.close(src)
        os.close(dst)
        os.unlink(ext4 / f'dst-{os.getpid()}')


@pytest.mark.parametrize('fs_type, options, verdict, words', [
    ('fuse.glusterfs', ('rw',), False, 'FUSE'),
    ('fuse', ('rw',), False, 'FUSE'),
    ('tmpfs', ('rw',), False, 'tmpfs'),
    ('nfs4', ('rw',), None, 'will try'),
    ('zfs', ('rw',), None, 'will try'),
    ('btrfs', ('ro',), False, 'read-only'),
    ('ocfs2', ('rw',), True, 'ocfs2'),
])
def test_reflink_support_by_file_system_type(fs_type, options, verdict, words,
                                             tmp_path, monkeypatch):
    """What the mount table alone decides (a file system this lab cannot mount)."""
    fake = mounts.MountInfo(mount_id=1, parent_id=0, device=0, root='/',
                            mount_point=str(tmp_path), options=options,
                            fs_type=fs_type, source='server:/volume')
    monkeypatch.setattr(reflink.mounts, 'mount_of_fd', lambda fd, path=None: fake)
    support = reflink.reflink_support(tmp_path)
    assert support.verdict is verdict and words in support.reason
    assert 'server:/volume' in support.reason
