"""shared_fs against the lab: a real Glance 33 whose filesystem stores live on XFS,
btrfs, ext4 loop mounts and a GlusterFS volume (FUSE; it stands in for NFS, which
no kernel client here can mount), publishing ``{id, mountpoint}`` location metadata
through ``filesystem_store_metadata_file`` as production does.

What the tests show: on XFS and btrfs the disk shares extents with Glance's file
(FIEMAP) and reads back identical, and a write to it leaves the source unchanged; on
ext4 it falls to a read-only hardlink with the reason, and that base survives the
image's deletion in Glance; on Gluster a qcow2 target is an overlay backed by a pin
of ours that reads back the image and grows only with writes; a raw target off the
share steps aside for a full copy with the reason; every hostile location is refused
and nothing is created.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import time
import uuid

import pytest

from image_handlers.shared_fs import fiemap, verdicts
from tests.functional.conftest import FS_IDS, image_bytes

MiB = 1 << 20


@pytest.fixture
def fs_conf(tmp_path, glance_fs_lab, xfs_lab, btrfs_lab, ext4_lab, gluster_lab):
    """nova.conf for the glance-fs lab: every lab mount configured by its id."""
    mounts = {'xfs': xfs_lab, 'btrfs': btrfs_lab, 'ext4': ext4_lab,
              'gluster': gluster_lab}

    def write(handlers='shared_fs, stream_copy', methods=None, extra='') -> str:
        path = tmp_path / f'nova-{uuid.uuid4().hex[:6]}.conf'
        path.write_text(
            glance_fs_lab.nova_conf()
            + f'\n[image_handlers]\nstate_dir = {tmp_path / "state"}\n'
            + f'handlers = {handlers}\n'
            + (f'shared_fs_methods = {methods}\n' if methods else '')
            + 'shared_fs_mounts = ' + ', '.join(
                f'{FS_IDS[n]}:{m.mountpoint}' for n, m in mounts.items()) + '\n'
            + extra + '\n')
        return str(path)
    return write


@pytest.fixture
def fs_image(glance_fs):
    """Upload data into one of the lab's file stores; deleted after the test."""
    created = []

    def make(data: bytes, store: str, **props) -> str:
        img = glance_fs.images.create(name=f'sfs-{uuid.uuid4().hex[:8]}',
                                      disk_format=props.pop('disk_format', 'raw'),
                                      container_format='bare', **props)
        created.append(img['id'])
        glance_fs.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                backend=store)
        return img['id']
    yield make
    for image_id in created:
        try:
            glance_fs.images.delete(image_id)
        except Exception:  # already deleted by the test
            pass


def _nova_dir(svc, name: str = 'nova') -> str:
    """A directory for Nova's disks on the same mount as the Glance store."""
    path = os.path.join(svc.mountpoint, name, uuid.uuid4().hex[:8])
    os.makedirs(path)
    return path


def _glance_file(svc, image_id: str) -> str:
    return os.path.join(svc.mountpoint, 'images', image_id)


def _settle(path: str) -> None:
    """Wait until the file last changed more than the verdicts' racy window ago
    (a verdict taken sooner is not reused: shared_fs.verdicts), as for any image
    uploaded more than two seconds before its first boot."""
    st = os.stat(path)
    wait = verdicts.RACY_SECONDS + 0.05 - (time.time() - max(st.st_mtime, st.st_ctime))
    if wait > 0:
        time.sleep(wait)


def _read(path: str) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def _qemu_read(disk: str, tmp_path) -> bytes:
    out = str(tmp_path / f'read-{uuid.uuid4().hex[:6]}.raw')
    subprocess.run(['qemu-img', 'convert', '-U', '-O', 'raw', disk, out], check=True)
    data = _read(out)
    os.unlink(out)
    return data


@pytest.mark.parametrize('fs', ['xfs', 'btrfs'])
def test_reflink_shares_extents_reads_back_and_is_independent(
        fs, request, cli, fs_conf, fs_image):
    svc = request.getfixturevalue(f'{fs}_lab')
    data = image_bytes(8 * MiB, seed=71, zero_every=100)
    image_id = fs_image(data, fs)
    target = os.path.join(_nova_dir(svc), image_id)
    conf = fs_conf()
    _settle(_glance_file(svc, image_id))

    res = cli('fetch', image_id, target, '--config-file', conf, '--json')

    assert res.rc == 0, res
    out = res.json
    assert (out['handler'], out['method'], out['bytes_copied']) == (
        'shared_fs', 'reflink', 0)
    assert out['zero_copy'] is True and out['depends_on'] is None
    assert 'file hashed now' in out['verified']
    assert _read(target) == data
    with open(target, 'rb') as f:
        assert fiemap.shared_bytes(f.fileno()) >= len(data) // 2
    with open(target, 'r+b') as f:          # the disk is independent
        f.write(b'\xff' * 4096)
    assert _read(_glance_file(svc, image_id)) == data

    second = cli('fetch', image_id, target + '.2', '--config-file', conf, '--json')
    assert second.rc == 0 and 'verdict reused' in second.json['verified'], second


def test_ext4_falls_to_a_read_only_hardlink_that_survives_image_deletion(
        cli, fs_conf, fs_image, ext4_lab, glance_fs):
    data = image_bytes(4 * MiB, seed=72)
    image_id = fs_image(data, 'ext4')
    target = os.path.join(_nova_dir(ext4_lab), image_id)
    conf = fs_conf(methods='reflink, hardlink, overlay')
    _settle(_glance_file(ext4_lab, image_id))

    explained = cli('explain', image_id, target, '--config-file', conf, '--json')
    assert explained.rc == 0, explained
    assert explained.json['method'] == 'hardlink'
    assert 'reflink' not in explained.json['attempts'][0]['reason'] or \
        'ext4' in explained.json['attempts'][0]['reason']

    res = cli('fetch', image_id, target, '--config-file', conf, '--json')
    assert res.rc == 0, res
    out = res.json
    assert (out['method'], out['bytes_copied']) == ('hardlink', 0)
    assert out['depends_on']['kind'] == 'shared_file'
    st, src = os.stat(target), os.stat(_glance_file(ext4_lab, image_id))
    assert (st.st_ino, st.st_dev) == (src.st_ino, src.st_dev)
    assert not st.st_mode & 0o222               # read-only: nobody writes the base
    # Our own link moved the inode's ctime, not its data: the verdict carries over.
    again = cli('fetch', image_id, target + '.2', '--config-file', conf, '--json')
    assert again.rc == 0 and again.json['method'] == 'hardlink', again
    assert 'verdict reused' in again.json['verified'], again

    glance_fs.images.delete(image_id)
    assert not os.path.exists(_glance_file(ext4_lab, image_id))
    assert _read(target) == data                # the link kept the data


def test_ext4_without_hardlink_steps_aside_with_the_reason(
        cli, fs_conf, fs_image, ext4_lab, caplog):
    data = image_bytes(2 * MiB, seed=73)
    image_id = fs_image(data, 'ext4')
    target = os.path.join(_nova_dir(ext4_lab), image_id)
    res = cli('fetch', image_id, target, '--config-file',
              fs_conf(methods='reflink, overlay'), '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['handler'] == 'stream_copy' and out['bytes_copied'] == len(data)
    reasons = [a['reason'] for a in out['attempts'] if a['handler'] == 'shared_fs']
    assert any('ext4' in r and 'reflink' in r and 'overlay: the target is a raw disk'
               in r for r in reasons), reasons
    assert 'FULL COPY' in res.err and 'shared_fs' in res.err
    assert _read(target) == data


def test_gluster_qcow2_target_is_an_overlay_on_a_pin(cli, fs_conf, fs_image,
                                                     gluster_lab, tmp_path):
    data = image_bytes(6 * MiB, seed=74, zero_every=100)
    image_id = fs_image(data, 'gluster')
    local = tmp_path / 'instances'          # not on the share: an overlay still works
    local.mkdir()
    disk = str(local / 'disk')
    conf = fs_conf()

    res = cli('fetch', image_id, disk, '--disk-format', 'qcow2', '--config-file',
              conf, '--json')

    assert res.rc == 0, res
    out = res.json
    assert (out['method'], out['disk_format'], out['bytes_copied']) == (
        'overlay', 'qcow2', 0)
    pin = out['depends_on']['source']
    assert pin.startswith(str(gluster_lab.mountpoint)) and image_id in pin
    assert pin != _glance_file(gluster_lab, image_id)       # never Glance's path
    info = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json', disk],
                                     capture_output=True, check=True).stdout)
    assert info['backing-filename'] == pin and info['format'] == 'qcow2'
    assert _qemu_read(disk, tmp_path)[:len(data)] == data
    before = os.stat(disk).st_blocks * 512
    assert before < 1 * MiB                                  # nothing copied
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 1M 1M', disk],
                   check=True, capture_output=True)
    grown = os.stat(disk).st_blocks * 512 - before
    assert 1 * MiB <= grown <= 3 * MiB                       # grows only with writes
    assert _read(_glance_file(gluster_lab, image_id)) == data


def test_gluster_raw_target_off_the_share_is_a_symlink_to_a_pin(
        cli, fs_conf, fs_image, gluster_lab, glance_fs, tmp_path):
    """A raw target off the share, symlinks allowed: a symbolic link to a pin,
    which keeps the data when Glance deletes the image."""
    data = image_bytes(3 * MiB, seed=79)
    image_id = fs_image(data, 'gluster')
    target = str(tmp_path / 'base')
    res = cli('fetch', image_id, target, '--config-file',
              fs_conf(methods='reflink, symlink, overlay'), '--json')
    assert res.rc == 0, res
    out = res.json
    assert (out['method'], out['disk_format'], out['bytes_copied']) == (
        'symlink', 'raw', 0)
    pin = out['depends_on']['source']
    assert os.readlink(target) == pin and pin != _glance_file(gluster_lab, image_id)
    assert os.stat(pin).st_ino == os.stat(_glance_file(gluster_lab, image_id)).st_ino
    glance_fs.images.delete(image_id)
    assert _read(target) == data


def test_gluster_raw_target_without_symlinks_is_a_full_copy_with_the_reason(
        cli, fs_conf, fs_image, tmp_path):
    data = image_bytes(2 * MiB, seed=75)
    image_id = fs_image(data, 'gluster')
    target = str(tmp_path / 'base')
    conf = fs_conf(methods='reflink, hardlink, overlay')
    res = cli('explain', image_id, target, '--config-file', conf, '--json')
    assert res.rc == 0, res
    reason = next(a['reason'] for a in res.json['attempts']
                  if a['handler'] == 'shared_fs')
    assert 'fuse.glusterfs' in reason and 'reflink: target' in reason
    assert 'hardlink: target' in reason
    assert 'overlay: the target is a raw disk' in reason
    assert res.json['handler'] == 'stream_copy'
    assert not os.path.exists(target)
    res = cli('fetch', image_id, target, '--config-file', conf, '--json')
    assert res.rc == 0 and res.json['bytes_copied'] == len(data), res
    assert 'FULL COPY' in res.err


# -- hostile locations, through the real Glance record ------------------------


@pytest.fixture
def set_fs_locations(glance_fs_lab):
    """Rewrite an image's location rows in glance-fs's database (as the
    set_locations fixture does for the main lab Glance)."""
    def rewrite(image_id: str, entries: list[tuple[str, dict]]) -> None:
        db = sqlite3.connect(glance_fs_lab.workdir / 'glance.sqlite')
        with db:
            row = db.execute('select status, created_at, deleted from image_locations '
                             'where image_id = ? and deleted = 0',
                             (image_id,)).fetchone()
            db.execute('delete from image_locations where image_id = ?', (image_id,))
            for url, meta in entries:
                db.execute('insert into image_locations (image_id, value, meta_data, '
                           'status, created_at, deleted) values (?, ?, ?, ?, ?, ?)',
                           (image_id, url, json.dumps(meta), *row))
        db.close()
    return rewrite


def _hostile(request, fs_image, xfs_lab, other_id):
    mp = str(xfs_lab.mountpoint)
    meta = {'id': FS_IDS['xfs'], 'mountpoint': mp, 'store': 'xfs'}
    return {
        'outside every mount': ('file:///etc/shadow', meta),
        'another image': (f'file://{mp}/images/{other_id}', meta),
        'dot-dot': (f'file://{mp}/images/../../../etc/passwd', meta),
        'proc': ('file:///proc/self/environ', meta),
        'unknown fs id': (f'file://{mp}/images/IMAGE', {**meta, 'id': 'nope'}),
        'symlink escape': (f'file://{mp}/images/link/IMAGE', meta),
    }


@pytest.mark.parametrize('case', ['outside every mount', 'another image', 'dot-dot',
                                  'proc', 'unknown fs id', 'symlink escape'])
def test_hostile_file_locations_are_refused_and_nothing_is_created(
        case, request, cli, fs_conf, fs_image, xfs_lab, set_fs_locations, tmp_path):
    data = image_bytes(1 * MiB, seed=76)
    image_id = fs_image(data, 'xfs')
    other_id = fs_image(image_bytes(1 * MiB, seed=77), 'xfs')
    link_dir = os.path.join(xfs_lab.mountpoint, 'images', 'link')
    if not os.path.lexists(link_dir):
        os.symlink('/etc', link_dir)
    url, meta = _hostile(request, fs_image, xfs_lab, other_id)[case]
    set_fs_locations(image_id, [(url.replace('IMAGE', image_id), meta)])
    target_dir = _nova_dir(xfs_lab)
    target = os.path.join(target_dir, 'disk')

    res = cli('fetch', image_id, target, '--config-file',
              fs_conf(handlers='shared_fs'), '--json')

    assert res.rc == 1, res
    reasons = ' '.join(a['reason'] for a in res.json['attempts'])
    assert 'shared_fs' in reasons or 'malformed' in reasons, reasons
    assert os.listdir(target_dir) == []


def test_a_file_changed_after_its_verdict_is_verified_again_and_refused(
        cli, fs_conf, fs_image, xfs_lab):
    data = image_bytes(2 * MiB, seed=78)
    image_id = fs_image(data, 'xfs')
    conf = fs_conf(handlers='shared_fs')
    first = cli('fetch', image_id, os.path.join(_nova_dir(xfs_lab), 'a'),
                '--config-file', conf, '--json')
    assert first.rc == 0, first
    with open(_glance_file(xfs_lab, image_id), 'r+b') as f:   # same size, new bytes
        f.seek(MiB)
        f.write(b'evil')
    target_dir = _nova_dir(xfs_lab)
    res = cli('fetch', image_id, os.path.join(target_dir, 'b'), '--config-file', conf,
              '--json')
    assert res.rc == 1, res
    failed = [a for a in res.json['attempts'] if a['outcome'] == 'failed']
    assert failed and 'not the image' in failed[0]['reason'], res.json['attempts']
    assert os.listdir(target_dir) == []


def test_a_pin_is_released_once_its_disks_are_gone_never_before(
        cli, fs_conf, fs_image, gluster_lab, tmp_path):
    """Making a disk on a volume releases that volume's pins no disk uses."""
    conf = fs_conf()
    first = fs_image(image_bytes(1 * MiB, seed=85), 'gluster')
    second = fs_image(image_bytes(1 * MiB, seed=86), 'gluster')
    disk_a = str(tmp_path / 'a.qcow2')
    res = cli('fetch', first, disk_a, '--disk-format', 'qcow2', '--config-file', conf,
              '--json')
    assert res.rc == 0, res
    pin_a = res.json['depends_on']['source']

    keep = cli('fetch', second, str(tmp_path / 'b.qcow2'), '--disk-format', 'qcow2',
               '--config-file', conf, '--json')
    assert keep.rc == 0, keep
    assert os.path.exists(pin_a)                 # disk a still uses it

    os.unlink(disk_a)
    again = cli('fetch', second, str(tmp_path / 'c.qcow2'), '--disk-format', 'qcow2',
                '--config-file', conf, '--json')
    assert again.rc == 0, again
    assert not os.path.exists(pin_a)             # released: no disk left on it
    assert os.path.exists(again.json['depends_on']['source'])
    assert os.path.exists(_glance_file(gluster_lab, first))   # Glance's file stays
