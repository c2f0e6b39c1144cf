"""paths.resolve_source: the gate from a file:// location to an open image file."""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from image_handlers.shared_fs import paths
from image_handlers.shared_fs.errors import Refused

FS_ID = 'glance-share'
GLANCE_MP = '/var/lib/glance/shared'      # where Glance mounts the share


@dataclasses.dataclass
class Share:
    root: Path                  # our mount point of the share (with its marker)
    image_id: str
    data: bytes

    @property
    def file(self) -> Path:
        return self.root / 'images' / self.image_id

    @property
    def mounts(self) -> dict[str, str]:
        return {FS_ID: str(self.root)}

    def location(self, name: str | None = None) -> str:
        return f'{GLANCE_MP}/images/{name or self.image_id}'

    def resolve(self, location=None, glance_mp=GLANCE_MP, mounts=None, fs_id=FS_ID,
                image_id=None, size=None) -> paths.SourceFile:
        return paths.resolve_source(
            location if location is not None else self.location(), glance_mp,
            self.mounts if mounts is None else mounts, fs_id,
            self.image_id if image_id is None else image_id,
            len(self.data) if size is None else size)

    def refused(self, **kwargs) -> str:
        with pytest.raises(Refused) as err:
            self.resolve(**kwargs).close()
        return err.value.reason


@pytest.fixture
def share(fs_dir, write_marker) -> Share:
    root = fs_dir('xfs')
    write_marker(root, FS_ID)
    (root / 'images').mkdir()
    s = Share(root, str(uuid.uuid4()), random.Random(5).randbytes(300_000))
    s.file.write_bytes(s.data)
    return s


def open_fds() -> set[str]:
    return set(os.listdir('/proc/self/fd'))


def test_location_with_id_and_mountpoint(share):
    with share.resolve() as src:
        assert src.path == str(share.file)
        assert os.pread(src.fd, len(share.data), 0) == share.data
        st = os.stat(share.file)
        assert src.identity() == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                  st.st_ctime_ns)
        assert src.mount.fs_type == 'xfs' and src.mount.device == st.st_dev
        assert src.fs_id == FS_ID and src.local_mountpoint == str(share.root)
        assert GLANCE_MP in src.notes[0] and str(share.root) in src.notes[0]
        assert src.changed() is None
        flags = int(Path(f'/proc/self/fdinfo/{src.fd}').read_text().split()[3], 8)
        assert flags & os.O_ACCMODE == os.O_RDONLY and flags & os.O_NONBLOCK
        with open(share.file, 'ab') as f:
            f.write(b'x')
        assert 'size' in src.changed()
    assert src.fd == -1


def test_location_with_id_without_mountpoint_is_taken_literally(share):
    with share.resolve(location=str(share.file), glance_mp=None) as src:
        assert src.path == str(share.file)
    reason = share.refused(glance_mp=None)
    assert 'no mountpoint metadata' in reason and str(share.root) in reason


def test_location_without_id_under_exactly_one_mount(share, fs_dir, write_marker):
    other = fs_dir('xfs')
    write_marker(other, 'other')
    mounts = {FS_ID: str(share.root), 'other': str(other)}
    with share.resolve(location=str(share.file), fs_id=None, mounts=mounts) as src:
        assert src.fs_id == FS_ID
        assert 'no metadata id' in src.notes[0] and 'only' in src.notes[0]
    # the metadata mountpoint alone is never trusted: without an id it maps nothing
    reason = share.refused(fs_id=None, mounts=mounts)
    assert 'no metadata id' in reason and 'none of the configured' in reason


def test_location_without_id_under_two_mounts_is_ambiguous(share):
    mounts = {FS_ID: str(share.root), 'outer': str(share.root.parent)}
    reason = share.refused(location=str(share.file), fs_id=None, mounts=mounts)
    assert 'several' in reason and "'outer'" in reason


def test_unknown_id_names_the_configured_ones(share):
    reason = share.refused(fs_id='elsewhere')
    assert "'elsewhere'" in reason and f"'{FS_ID}'" in reason
    assert 'configured ids: none' in share.refused(mounts={})


def test_path_not_under_its_metadata_mountpoint(share):
    reason = share.refused(location=f'/srv/other/images/{share.image_id}')
    assert 'not under its metadata mountpoint' in reason
    # component-wise: /var/lib/glance/sharedX is not under /var/lib/glance/shared
    assert 'not under' in share.refused(
        location=f'{GLANCE_MP}X/images/{share.image_id}')


def test_marker_missing_says_what_to_write(share):
    os.unlink(share.root / paths.MARKER_NAME)
    reason = share.refused()
    assert 'no identity marker' in reason and 'not mounted' in reason
    assert f'{FS_ID} > {share.root}/{paths.MARKER_NAME}' in reason


def test_marker_mismatch(share, write_marker):
    write_marker(share.root, 'another-share')
    reason = share.refused()
    assert "'another-share'" in reason and f"not '{FS_ID}'" in reason
    assert 'wrong share' in reason


@pytest.mark.parametrize('kind', ['symlink', 'directory', 'binary', 'big'])
def test_marker_that_is_not_a_plain_id(share, kind, tmp_path):
    marker = share.root / paths.MARKER_NAME
    os.unlink(marker)
    if kind == 'symlink':
        (tmp_path / 'elsewhere').write_text(FS_ID)
        marker.symlink_to(tmp_path / 'elsewhere')
    elif kind == 'directory':
        marker.mkdir()
    elif kind == 'binary':
        marker.write_bytes(b'\xff\xfe' + FS_ID.encode())
    else:
        marker.write_text(FS_ID + ' ' * paths.MARKER_MAX_BYTES)
    assert 'identity marker' in share.refused()


def test_marker_bind_mounted_from_another_file_system(share, tmp_path):
    fake = tmp_path / 'marker'
    fake.write_text(FS_ID)
    marker = share.root / paths.MARKER_NAME
    subprocess.run(['mount', '--bind', str(fake), str(marker)], check=True)
    try:
        assert 'another file system' in share.refused()
    finally:
        subprocess.run(['umount', str(marker)], check=True)


def test_configured_mountpoint_missing(share):
    reason = share.refused(mounts={FS_ID: str(share.root / 'absent')})
    assert 'does not exist' in reason and 'mount the share' in reason


def test_location_outside_the_mount(share, fs_dir):
    outside = fs_dir('xfs')         # same file system, outside our mount point
    (outside / share.image_id).write_bytes(share.data)
    reason = share.refused(location=str(outside / share.image_id), glance_mp=None)
    assert 'not under' in reason


def test_symlink_escaping_the_share(share, tmp_path):
    (tmp_path / share.image_id).write_bytes(share.data)     # right name and size
    os.unlink(share.file)
    share.file.symlink_to(tmp_path / share.image_id)
    reason = share.refused()
    assert 'outside' in reason and str(tmp_path) in reason


def test_symlinked_directory_escaping_the_share(share, tmp_path):
    (tmp_path / share.image_id).write_bytes(share.data)
    os.unlink(share.file)
    os.rmdir(share.root / 'images')
    (share.root / 'images').symlink_to(tmp_path)
    assert 'outside' in share.refused()


@pytest.mark.parametrize('target', ['/etc/shadow', '/proc/self/environ',
                                    '/proc/self/mem'])
def test_symlink_to_system_files(share, target):
    os.unlink(share.file)
    share.file.symlink_to(target)
    reason = share.refused()
    assert 'outside' in reason


@pytest.mark.parametrize('location', [
    '/etc/shadow', '/proc/self/environ', '/proc/self/fd/0', '/dev/zero'])
def test_system_paths_as_locations(share, location):
    for fs_id, glance_mp in ((FS_ID, GLANCE_MP), (FS_ID, None), (None, None),
                             (FS_ID, '/')):
        share.refused(location=location, fs_id=fs_id, glance_mp=glance_mp)


def test_a_root_metadata_mountpoint_still_maps_into_our_share(share):
    # Glance "mountpoint" / : the path is read below our mount point, never at /
    with share.resolve(location=f'/images/{share.image_id}', glance_mp='/') as src:
        assert src.path == str(share.file)
    assert 'outside' not in share.refused(location=f'/etc/{share.image_id}',
                                          glance_mp='/')


def test_dotdot_is_refused(share):
    location = f'{GLANCE_MP}/images/../../../../etc/{share.image_id}'
    assert '".."' in share.refused(location=location)
    assert '".."' in share.refused(glance_mp='/var/lib/../lib/glance/shared')


def test_symlink_inside_the_share_to_the_image_file_is_followed(share):
    store = share.root / 'store'
    store.mkdir()
    os.rename(share.file, store / share.image_id)
    share.file.symlink_to(f'../store/{share.image_id}')
    with share.resolve() as src:
        assert src.path == str(store / share.image_id)


def test_link_to_another_images_file(share):
    other = str(uuid.uuid4())
    os.rename(share.file, share.root / 'images' / other)
    share.file.symlink_to(other)
    reason = share.refused()
    assert other in reason and 'another image' in reason


def test_location_naming_another_images_file(share):
    other = str(uuid.uuid4())
    (share.root / 'images' / other).write_bytes(share.data)
    reason = share.refused(location=share.location(other))
    assert f"names file '{other}'" in reason and share.image_id in reason


def test_wrong_size(share):
    reason = share.refused(size=len(share.data) - 1)
    assert str(len(share.data)) in reason and str(len(share.data) - 1) in reason


def test_directory(share):
    os.unlink(share.file)
    share.file.mkdir()
    assert 'is a directory' in share.refused()


def test_fifo_is_refused_without_blocking(share):
    os.unlink(share.file)
    os.mkfifo(share.file)
    with _no_hang():
        assert 'is a FIFO' in share.refused()


def test_fifo_swapped_in_after_the_check_is_refused_by_the_open_fd(share, monkeypatch):
    """The lstat before opening is a courtesy to devices; what decides is fstat of
    the descriptor, opened O_NONBLOCK so a FIFO cannot block it."""
    regular = os.stat(share.file)
    os.unlink(share.file)
    os.mkfifo(share.file)
    fifo = os.stat(share.file)
    fake = os.stat_result((stat.S_IFREG | 0o644, fifo.st_ino, fifo.st_dev)
                          + tuple(regular)[3:])
    monkeypatch.setattr(paths, '_entry_stat', lambda name, dir_fd: fake)
    with _no_hang():
        assert 'is a FIFO' in share.refused()


@pytest.mark.parametrize('kind, mode, name', [
    ('char', stat.S_IFCHR, 'a character device'),
    ('block', stat.S_IFBLK, 'a block device')])
def test_device_node(share, kind, mode, name):
    os.unlink(share.file)
    os.mknod(share.file, mode | 0o600, os.makedev(1, 3) if kind == 'char'
             else os.makedev(7, 250))
    assert f'is {name}' in share.refused()


def test_socket(share):
    import socket
    os.unlink(share.file)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(share.file))
        assert 'is a socket' in share.refused()


def test_nested_mount_with_another_st_dev(share, tmp_mounts):
    os.unlink(share.file)
    os.rmdir(share.root / 'images')
    inner = tmp_mounts(share.root / 'images')
    (inner / share.image_id).write_bytes(share.data)
    reason = share.refused()
    assert 'another file system' in reason and 'mount inside the share' in reason


def test_nested_mount_deeper_down(share, tmp_mounts):
    inner = tmp_mounts(share.root / 'images' / 'sub')
    (inner / share.image_id).write_bytes(share.data)
    location = f'{GLANCE_MP}/images/sub/{share.image_id}'
    assert 'another file system' in share.refused(location=location)


def test_nested_mount_over_the_file(share, tmp_path):
    fake = tmp_path / share.image_id
    fake.write_bytes(share.data)
    subprocess.run(['mount', '--bind', str(fake), str(share.file)], check=True)
    try:
        assert 'another file system' in share.refused()
    finally:
        subprocess.run(['umount', str(share.file)], check=True)


@pytest.mark.parametrize('kwargs', [
    dict(location='images/x'), dict(location=''), dict(location=None),
    dict(location=b'/x'), dict(location='/a\x00b'), dict(glance_mp='relative'),
    dict(image_id=''), dict(image_id='../x'), dict(image_id='.'),
    dict(size=-1), dict(size=True), dict(size='300000'), dict(fs_id=''),
    dict(mounts={FS_ID: 'relative/dir'}), dict(mounts={FS_ID: None}),
])
def test_malformed_inputs_are_refused(share, kwargs):
    if kwargs.get('location', '') is None:
        with pytest.raises(Refused):
            paths.resolve_source(None, GLANCE_MP, share.mounts, FS_ID,
                                 share.image_id, len(share.data))
        return
    share.refused(**kwargs)


def test_image_size_unknown(share):
    with pytest.raises(Refused) as err:
        paths.resolve_source(share.location(), GLANCE_MP, share.mounts, FS_ID,
                             share.image_id, None)
    assert 'size' in err.value.reason


def test_unexpected_errors_are_refusals_and_close_what_was_opened(share, monkeypatch):
    def broken(fd, path=None):
        raise RuntimeError('surprise')
    monkeypatch.setattr(paths, 'mount_of_fd', broken)
    before = open_fds()
    reason = share.refused()
    assert 'RuntimeError: surprise' in reason
    assert open_fds() == before


def test_refusal_totality_over_generated_locations(share, tmp_path):
    """Without hypothesis (not a dependency): a seeded generator of hostile
    paths. Every outcome is a refusal or the image's own file; no fd leaks."""
    images = share.root / 'images'
    other = str(uuid.uuid4())
    (images / other).write_bytes(share.data)
    (images / 'link-out').symlink_to('/etc')
    (images / 'loop').symlink_to('loop')
    (images / 'dir').mkdir()
    os.mkfifo(images / 'dir' / share.image_id)
    parts = ['images', share.image_id, other, '..', '.', '', 'link-out', 'loop',
             'dir', 'etc', 'proc', 'self', 'shadow', '\x00', 'x' * 300]
    prefixes = [GLANCE_MP, str(share.root), '/', '/proc', GLANCE_MP + '/images',
                f'{GLANCE_MP}/images/{share.image_id}', str(share.file)]
    rng = random.Random(20240601)
    before = open_fds()
    served = 0
    with _no_hang():
        for _ in range(600):
            location = rng.choice(prefixes) + '/' + '/'.join(
                rng.choice(parts) for _ in range(rng.choice([0, 0, 1, 2, 3, 5])))
            fs_id = rng.choice([FS_ID, None, 'other'])
            glance_mp = rng.choice([GLANCE_MP, None, '/', str(share.root)])
            try:
                src = paths.resolve_source(location, glance_mp, share.mounts, fs_id,
                                           share.image_id, len(share.data))
            except Refused as exc:
                assert exc.reason
                continue
            with src:
                assert src.path == str(share.file)
                assert os.pread(src.fd, 16, 0) == share.data[:16]
                served += 1
    assert open_fds() == before
    assert served      # the generator does reach the real file


class _no_hang:
    """Turn a blocked open into a test failure instead of a stuck run."""

    def __enter__(self):
        def expire(signum, frame):
            raise AssertionError('resolve_source blocked')
        self.previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(60)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


def test_the_marker_is_the_one_the_lab_and_operators_write():
    from tools.lab import loopfs
    assert paths.MARKER_NAME == loopfs.FS_MARKER
