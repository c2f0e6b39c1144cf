"""The patched Nova 34 with Glance's filesystem store on a shared mount: real Nova
code (``_create_and_inject_local_root``, its Flat and Qcow2 image backends,
``fetch_to_raw`` with its format inspection, the libvirt image cache manager)
against the lab's real Glance and its XFS / GlusterFS mounts.

What the tests show: with ``_base`` on the share (XFS) Nova's base file is a reflink
of Glance's file; with the instances on a local disk and the store on Gluster,
Nova's Qcow2 disk is itself an overlay backed by our pin of the shared file (no
_base at all), and a Flat _base is never a symbolic link (Nova's "cp -r" would
carry the link into the instance disk); Nova's own safety checks still refuse a
qcow2 image with a backing file; the image cache manager removes only our links,
never Glance's file, and a pin is released only once no disk uses it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sqlite3
import subprocess
import time
import uuid

import pytest

from nova import exception as nova_exception
from nova.virt.libvirt import imagecache

from image_handlers.shared_fs import fiemap, verdicts
from image_handlers.shared_fs.pins import PinStore
from tests.functional.conftest import GLANCE_FS_DATADIR, image_bytes
from tests.nova.conftest import CONF

MiB = 1 << 20


@pytest.fixture
def fs_image(glance_fs):
    created = []

    def make(data: bytes, store: str) -> str:
        img = glance_fs.images.create(name=f'nova-sfs-{uuid.uuid4().hex[:6]}',
                                      disk_format='raw', container_format='bare')
        created.append(img['id'])
        glance_fs.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                backend=store)
        return img['id']
    yield make
    for image_id in created:
        try:
            glance_fs.images.delete(image_id)
        except Exception:
            pass


def _base_file(image_id: str) -> str:
    return os.path.join(CONF.instances_path, CONF.image_cache.subdirectory_name,
                        imagecache.get_cache_fname(image_id))


def _glance_file(svc, image_id: str) -> str:
    return os.path.join(svc.mountpoint, GLANCE_FS_DATADIR, image_id)


def _settle(path: str) -> None:
    """Past the verdicts' racy window (see tests/functional/test_shared_fs.py)."""
    st = os.stat(path)
    wait = verdicts.RACY_SECONDS + 0.05 - (time.time() - max(st.st_mtime, st.st_ctime))
    if wait > 0:
        time.sleep(wait)


def _qemu_read(disk: str, out: str) -> bytes:
    subprocess.run(['qemu-img', 'convert', '-U', '-O', 'raw', disk, out], check=True)
    with open(out, 'rb') as f:
        return f.read()


def test_flat_base_on_the_share_is_a_reflink_of_glances_file(
        nova_fs_env, fs_image, xfs_lab, instance, create_root_disk, caplog):
    data = image_bytes(6 * MiB, seed=81, zero_every=100)
    image_id = fs_image(data, 'xfs')
    nova_fs_env(xfs_lab.mountpoint / f'nova-{uuid.uuid4().hex[:6]}', 'flat')
    caplog.set_level(logging.INFO)

    backend = create_root_disk(instance(image_id), image_id)

    base = _base_file(image_id)
    assert os.path.isfile(base) and not os.path.islink(base)
    with open(base, 'rb') as f:
        assert f.read() == data
        assert fiemap.shared_bytes(f.fileno()) >= len(data) // 2
    assert f'image {image_id} provided by shared_fs (reflink)' in caplog.text
    with open(backend.path, 'rb') as f:          # Nova's Flat disk, copied from _base
        assert f.read(len(data)) == data
    assert not os.path.exists(base + '.part')


def test_qcow2_disk_is_an_overlay_on_the_shared_file_without_a_copy(
        nova_fs_env, fs_image, gluster_lab, instance, create_root_disk, tmp_path,
        caplog):
    """images_type = qcow2, instances on a local disk, the store on Gluster: the
    instance disk itself is a qcow2 overlay backed by our pin of Glance's file; no
    _base file is fetched at all."""
    data = image_bytes(6 * MiB, seed=82, zero_every=100)
    image_id = fs_image(data, 'gluster')
    nova_fs_env(tmp_path / 'instances', 'qcow2')        # _base on a local disk
    caplog.set_level(logging.INFO)

    backend = create_root_disk(instance(image_id), image_id)

    assert not os.path.lexists(_base_file(image_id))
    info = json.loads(subprocess.run(
        ['qemu-img', 'info', '-U', '--output=json', backend.path],
        capture_output=True, check=True).stdout)
    pin = info['backing-filename']
    assert info['format'] == 'qcow2' and info['backing-filename-format'] == 'raw'
    assert pin.startswith(str(gluster_lab.mountpoint))
    assert pin != _glance_file(gluster_lab, image_id)
    assert os.stat(pin).st_ino == os.stat(_glance_file(gluster_lab, image_id)).st_ino
    assert info['virtual-size'] == 1 << 30                 # the flavor's root disk
    assert _qemu_read(backend.path, str(tmp_path / 'read.raw'))[:len(data)] == data
    assert f'instance disk {backend.path} made by shared_fs (overlay)' in caplog.text
    assert os.stat(backend.path).st_blocks * 512 < 2 * MiB    # nothing copied in


def test_flat_base_off_the_share_is_never_a_symlink_even_when_allowed(
        nova_fs_env, fs_image, gluster_lab, instance, create_root_disk, tmp_path,
        caplog):
    """Nova copies a _base file with "cp -r", which copies a symbolic link as a
    link; its Flat disk would then be a link to Glance's data, resized through it.
    So with symlinks allowed, Nova's _base is still a regular file: a full copy
    here (no reflink or link across file systems), with the reason."""
    data = image_bytes(3 * MiB, seed=87)
    image_id = fs_image(data, 'gluster')
    nova_fs_env(tmp_path / 'instances', 'flat', image_handlers={
        'shared_fs_methods': ['reflink', 'symlink', 'overlay']})
    caplog.set_level(logging.INFO)
    backend = create_root_disk(instance(image_id), image_id)
    base = _base_file(image_id)
    assert os.path.isfile(base) and not os.path.islink(base)
    assert not os.path.islink(backend.path)
    assert 'symlink: the caller needs a regular file' in caplog.text
    assert 'as a FULL COPY' in caplog.text
    with open(_glance_file(gluster_lab, image_id), 'rb') as f:
        assert f.read() == data                  # Glance's file is untouched


def test_nova_still_refuses_a_qcow2_with_a_backing_file_on_the_share(
        nova_fs_env, fs_image, glance_fs_lab, xfs_lab, instance, create_root_disk,
        tmp_path, caplog):
    """A qcow2 whose backing file is a host file, planted in Glance's store with a
    record whose hash matches it (what a compromised or careless uploader could
    leave): shared_fs verifies the hash (it matches) and links the file, and
    Nova's own inspection in fetch_to_raw still refuses it."""
    image_id = fs_image(image_bytes(1 * MiB, seed=83), 'xfs')
    evil = tmp_path / 'evil.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                    '/etc/hostname', str(evil)], check=True)
    body = evil.read_bytes()
    glance_path = _glance_file(xfs_lab, image_id)
    with open(glance_path, 'r+b') as f:
        f.truncate(0)
        f.write(body)
    db = sqlite3.connect(glance_fs_lab.workdir / 'glance.sqlite')
    with db:
        db.execute('update images set size = ?, checksum = ?, os_hash_algo = ?, '
                   'os_hash_value = ?, disk_format = ? where id = ?',
                   (len(body), hashlib.md5(body).hexdigest(), 'sha512',
                    hashlib.sha512(body).hexdigest(), 'qcow2', image_id))
    db.close()
    nova_fs_env(xfs_lab.mountpoint / f'nova-{uuid.uuid4().hex[:6]}', 'flat')
    caplog.set_level(logging.INFO)

    with pytest.raises(nova_exception.ImageUnacceptable) as err:
        create_root_disk(instance(image_id), image_id)

    assert f'image {image_id} provided by shared_fs (reflink)' in caplog.text
    assert 'safety check' in str(err.value)
    assert 'Safety checks failed: backing_file' in caplog.text   # Nova's inspector
    assert not os.path.exists(_base_file(image_id))
    assert not os.path.exists(_base_file(image_id) + '.part')
    with open(glance_path, 'rb') as f:
        assert f.read() == body                      # Glance's file untouched


def test_image_cache_manager_removes_only_our_links_and_pins_outlive_their_users(
        nova_fs_env, fs_image, ext4_lab, gluster_lab, instance, create_root_disk,
        context, tmp_path):
    """A Flat instance on the ext4 share gets a hardlinked _base; a Qcow2 instance
    off the share an overlay on a pin. Nova's cache manager's removal pass (its
    listing of running instances reads Nova's database, which this lab has not: it
    is given them as ``_list_running_instances`` would) removes the unused _base
    link and never Glance's file; the pin goes only once its disk is gone."""
    data = image_bytes(2 * MiB, seed=84)
    linked = fs_image(data, 'ext4')
    instances = ext4_lab.mountpoint / f'nova-{uuid.uuid4().hex[:6]}'
    nova_fs_env(instances, 'flat', image_cache={
        'remove_unused_original_minimum_age_seconds': 0}, image_handlers={
        'shared_fs_methods': ['reflink', 'hardlink', 'overlay']})
    flat = instance(linked)
    flat_disk = create_root_disk(flat, linked)
    base = _base_file(linked)
    assert os.stat(base).st_ino == os.stat(_glance_file(ext4_lab, linked)).st_ino

    def cache_pass(running):
        manager = imagecache.ImageCacheManager()
        base_dir = manager._get_base()
        manager._reset_state()
        manager._scan_base_images(base_dir)
        manager.used_images = {i.image_ref: (1, 0, [i.name]) for i in running}
        manager.instance_names = {n for i in running for n in (i.name, i.uuid)}
        manager._age_and_verify_cached_images(context, running, base_dir)

    cache_pass([flat])
    assert os.path.exists(base)                      # in use: kept
    os.unlink(flat_disk.path)                        # the instance is deleted
    cache_pass([])
    assert not os.path.lexists(base)                 # Nova removed its _base link
    with open(_glance_file(ext4_lab, linked), 'rb') as f:
        assert f.read() == data                      # ... and never Glance's file

    pinned = fs_image(image_bytes(2 * MiB, seed=88), 'gluster')
    nova_fs_env(tmp_path / 'instances', 'qcow2')
    disk = create_root_disk(instance(pinned), pinned)
    pin = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json',
                                     disk.path], capture_output=True,
                                    check=True).stdout)['backing-filename']
    store = PinStore(os.path.dirname(pin), CONF.image_handlers.state_dir,
                     host=CONF.image_handlers.host)
    assert store.release_unused() == [] and os.path.exists(pin)   # its disk exists
    os.unlink(disk.path)
    assert [p.path for p in store.release_unused()] == [pin]
    assert not os.path.exists(pin)
    assert os.path.exists(_glance_file(gluster_lab, pinned))
