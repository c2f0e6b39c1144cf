"""mounts: the mount table parsed, and the kernel's own view of a path."""
from __future__ import annotations

import os
import subprocess

import pytest

from image_handlers.shared_fs import mounts

SAMPLE = (
    b'27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n'
    b'43 27 0:39 / /srv/glance\\040images rw,relatime shared:5 master:1 - btrfs '
    b'/dev/loop0 rw,subvolid=5,subvol=/\n'
    b'44 27 7:1 /sub/dir /mnt/tab\\011and\\134back ro,nodev - xfs /dev/loop1 rw\n'
    b'garbage line\n'
    b'45 27 0:50 / /mnt/nfs rw - nfs4 server:/export\\040x rw,vers=4.2\n'
)


def test_parse_mountinfo_unescapes_and_skips_what_it_cannot_read():
    found = mounts.parse_mountinfo(SAMPLE)
    assert [m.mount_id for m in found] == [27, 43, 44, 45]
    btrfs = found[1]
    assert btrfs.mount_point == '/srv/glance images'
    assert btrfs.fs_type == 'btrfs' and btrfs.source == '/dev/loop0'
    assert btrfs.device == os.makedev(0, 39) and btrfs.parent_id == 27
    assert 'subvol=/' in btrfs.super_options and not btrfs.read_only
    bind = found[2]
    assert bind.mount_point == '/mnt/tab\tand\\back' and bind.root == '/sub/dir'
    assert bind.is_bind and bind.read_only and 'nodev' in bind.options
    assert found[3].source == 'server:/export x' and found[3].fs_type == 'nfs4'


def test_longest_prefix_is_component_wise_and_the_top_mount_wins():
    found = mounts.parse_mountinfo(SAMPLE + b'46 43 0:51 / /srv/glance\\040images '
                                            b'rw - tmpfs tmpfs rw\n')
    assert mounts.mount_by_prefix('/srv/glance images/x', found).mount_id == 46
    assert mounts.mount_by_prefix('/srv/glance imagesX/x', found).mount_id == 27
    assert mounts.mount_by_prefix('/mnt/nfs', found).mount_id == 45


def test_mount_of_a_loop_file_system(xfs):
    (xfs / 'f').write_bytes(b'x')
    m = mounts.mount_of(xfs / 'f')
    assert m.fs_type == 'xfs'
    assert m.mount_point == str(xfs)
    assert m.device == os.stat(xfs / 'f').st_dev
    assert m.source.startswith('/dev/loop')
    assert mounts.mount_of('/').mount_point == '/'


def test_mount_point_with_a_space(fs_dir, tmp_mounts):
    where = tmp_mounts(fs_dir('ext4') / 'with space\tand tab')
    m = mounts.mount_of(where)
    assert m.fs_type == 'tmpfs' and m.mount_point == str(where)


def test_symlink_resolves_to_the_mount_of_its_target(fs_dir, tmp_path):
    d = fs_dir('btrfs')
    link = tmp_path / 'link'
    link.symlink_to(d)
    assert mounts.mount_of(link).fs_type == 'btrfs'


def test_bind_mount_same_file_system_but_not_same_mount(fs_dir, tmp_path):
    src = fs_dir('xfs')
    (src / 'sub').mkdir()
    target = tmp_path / 'bind'
    target.mkdir()
    subprocess.run(['mount', '--bind', str(src / 'sub'), str(target)], check=True)
    try:
        m = mounts.mount_of(target)
        assert m.fs_type == 'xfs' and m.is_bind and m.mount_point == str(target)
        assert m.root.endswith('/sub')
        assert mounts.same_filesystem(src, target)
        assert not mounts.same_mount(src, target)
        # what same_mount predicts: link(2) refuses across the two mounts
        (src / 'f').write_bytes(b'x')
        with pytest.raises(OSError) as err:
            os.link(src / 'f', target / 'f')
        assert err.value.errno == 18    # EXDEV
    finally:
        subprocess.run(['umount', str(target)], check=True)


def test_same_filesystem_across_file_systems(xfs, ext4, fs_dir):
    a = fs_dir('xfs')
    assert mounts.same_filesystem(a, xfs) and mounts.same_mount(a, xfs)
    assert not mounts.same_filesystem(a, ext4)
    assert not mounts.same_mount(a, ext4)
