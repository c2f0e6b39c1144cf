import os
import subprocess

import pytest

from image_handlers import exceptions
from image_handlers.targets import FileTarget, RbdTarget, parse_target


def test_parse_rbd_and_file_targets(tmp_path):
    assert parse_target('rbd:vms/disk-1') == RbdTarget(kind='rbd', pool='vms', name='disk-1')
    t = parse_target(str(tmp_path / 'x.raw'))
    assert isinstance(t, FileTarget) and t.path == str(tmp_path / 'x.raw')


@pytest.mark.parametrize('spec', ['', 'rbd:', 'rbd:vms', 'rbd:/x', 'rbd:vms/', 'rbd:a/b/c',
                                  'rbd:vms/x@snap', '/tmp/dir/'])
def test_malformed_targets(spec):
    with pytest.raises(exceptions.InvalidTarget):
        parse_target(spec)


def test_existing_target_is_refused_and_untouched(tmp_path):
    path = tmp_path / 'disk'
    path.write_bytes(b'precious')
    with pytest.raises(exceptions.TargetExists, match='never overwrites'):
        parse_target(str(path)).check_writable()
    assert path.read_bytes() == b'precious'


def test_missing_directory(tmp_path):
    with pytest.raises(exceptions.InvalidTarget, match='does not exist'):
        parse_target(str(tmp_path / 'nope' / 'disk')).check_writable()


def test_read_only_directory(tmp_path):
    """Root ignores permission bits, so use a real read-only mount."""
    mnt = tmp_path / 'ro'
    mnt.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(mnt)], check=True)
    try:
        with pytest.raises(exceptions.InvalidTarget, match='not writable'):
            parse_target(str(mnt / 'disk')).check_writable()
    finally:
        subprocess.run(['umount', str(mnt)], check=True)
    assert not os.path.ismount(mnt)
