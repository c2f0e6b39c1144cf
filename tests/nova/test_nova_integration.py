"""The patched Nova 34 providing root disks through the handler chain, against the
lab's real Ceph, and a real Glance behind a real Keystone (see conftest: real Nova
code, no mocks): Nova's CONF as devstack writes it, images owned by alice, the
request context alice's token and catalog.

What the tests show: an RBD root disk becomes a copy-on-write clone made by
rbd_clone without a byte downloaded; a location Nova's own clone would accept
(another image's data) is refused, and Nova is then not allowed to clone it
either; a file-backed disk's _base file is written by stream_copy and still
passes through Nova's own format checks; turning nova_integration off gives back
Nova's own behaviour exactly.
"""
from __future__ import annotations

import contextlib
import logging
import os

import pytest
import rbd

from nova import exception as nova_exception
from nova.virt.libvirt import imagecache

from image_handlers.nova import hooks
from tests.functional.conftest import image_bytes
from tests.nova.conftest import CONF, GiB

MiB = 1 << 20


def _vms(rbd_admin) -> set[str]:
    with rbd_admin.open_ioctx('vms') as ioctx:
        return set(rbd.RBD().list(ioctx))


@contextlib.contextmanager
def _open(rbd_admin, pool, name, snapshot=None):
    with rbd_admin.open_ioctx(pool) as ioctx:
        with contextlib.closing(rbd.Image(ioctx, name, snapshot=snapshot,
                                          read_only=True)) as img:
            yield img


@pytest.fixture
def remove_disks(rbd_admin):
    """Remove the RBD disks a test's instances got (by name), after the test."""
    names: list[str] = []
    yield names.append
    with rbd_admin.open_ioctx('vms') as ioctx:
        for name in names:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(ioctx, name)


def _base_file(image_id: str) -> str:
    return os.path.join(CONF.instances_path, CONF.image_cache.subdirectory_name,
                        imagecache.get_cache_fname(image_id))


def test_rbd_root_disk_is_a_clone_made_by_rbd_clone(
        nova_env, make_image, instance, create_root_disk, rbd_admin, remove_disks,
        caplog):
    data = image_bytes(8 * MiB, seed=31)
    image_id = make_image(data, backend='ceph')
    inst = instance(image_id)
    remove_disks(f'{inst.uuid}_disk')
    caplog.set_level(logging.INFO)

    backend = create_root_disk(inst, image_id)

    assert backend.exists()
    with _open(rbd_admin, 'vms', backend.rbd_name) as disk:
        spec = disk.get_parent_image_spec()
        assert (spec['pool_name'], spec['image_name'], spec['snap_name']) == (
            'images', image_id, 'snap')
        assert disk.size() == 1 * GiB            # the flavor's root_gb
        assert disk.read(0, len(data)) == data
    # Nothing was downloaded: no _base file, and the chain said who did it.
    assert not os.path.exists(_base_file(image_id))
    assert f'image {image_id} provided by rbd_clone' in caplog.text


def test_nova_alone_clones_another_images_data_the_chain_refuses(
        nova_env, make_image, set_locations, instance, create_root_disk, rbd_admin,
        remove_disks, ceph_lab, caplog):
    """Glance accepts a location naming another image's RBD data (LAB-NOTES).
    Nova 34's is_cloneable checks fsid, raw and readability only, so unpatched
    behaviour (nova_integration off) clones the other image's bytes; with the
    chain, rbd_clone refuses, Nova's clone is not tried, and the download that
    follows is hash-checked, so the boot fails and no disk is made."""
    victim_data = image_bytes(4 * MiB, seed=32)
    victim = make_image(victim_data, backend='ceph')
    own_data = image_bytes(4 * MiB, seed=33)
    image_id = make_image(own_data, backend='ceph')
    set_locations(image_id, [f'rbd://{ceph_lab.fsid}/images/{victim}/snap'])

    # Nova on its own: the disk is a clone of the victim's data.
    nova_env(image_handlers={'nova_integration': False})
    alone = instance(image_id)
    remove_disks(f'{alone.uuid}_disk')
    create_root_disk(alone, image_id)
    with _open(rbd_admin, 'vms', f'{alone.uuid}_disk') as disk:
        assert disk.get_parent_image_spec()['image_name'] == victim
        assert disk.read(0, len(victim_data)) == victim_data

    # With the chain: refused with the reason, nothing cloned, nothing made.
    nova_env(image_handlers={'nova_integration': True})
    inst = instance(image_id)
    remove_disks(f'{inst.uuid}_disk')
    before = _vms(rbd_admin)
    caplog.set_level(logging.INFO)
    # Nova's own download (after the chain's) also finds the other image's bytes.
    with pytest.raises(OSError, match='Corrupt image download'):
        create_root_disk(inst, image_id)
    assert f'names RBD image {victim!r}' in caplog.text
    assert "Nova's own clone is not tried" in caplog.text
    assert 'ChecksumMismatch' in caplog.text     # the download found other bytes
    assert _vms(rbd_admin) == before
    assert not os.path.exists(_base_file(image_id))


def test_an_image_without_a_hash_is_refused_not_downloaded_unverified(
        nova_env, glance, instance, create_root_disk, rbd_admin, ceph_lab,
        make_image):
    """A location added without validation data leaves the image hash-less. Its
    location here names another image; rbd_clone refuses it, and the download
    that would follow could not be verified: refused, instead of handing it to
    Nova's download, which would import the other image's bytes unchecked."""
    victim = make_image(image_bytes(2 * MiB, seed=36), backend='ceph')
    image_id = make_image(None)                     # queued, no data, no hash
    glance.images.add_location(image_id,
                               f'rbd://{ceph_lab.fsid}/images/{victim}/snap',
                               {'store': 'ceph'})
    before = _vms(rbd_admin)
    with pytest.raises(nova_exception.ImageUnacceptable) as err:
        create_root_disk(instance(image_id), image_id)
    assert 'neither os_hash_value nor checksum' in str(err.value)
    assert 'allow_unverified_copies' in str(err.value)
    assert _vms(rbd_admin) == before
    assert not os.path.exists(_base_file(image_id))


def test_never_download_workaround_refuses_instead(
        nova_env, make_image, set_locations, instance, create_root_disk, rbd_admin,
        ceph_lab):
    image_id = make_image(image_bytes(2 * MiB, seed=34), backend='ceph')
    forged = '00000000-1111-2222-3333-444444444444'
    set_locations(image_id, [f'rbd://{forged}/images/{image_id}/snap'])
    nova_env(workarounds={'never_download_image_if_on_rbd': True})
    before = _vms(rbd_admin)
    with pytest.raises(nova_exception.ImageUnacceptable) as err:
        create_root_disk(instance(image_id), image_id)
    assert 'never_download_image_if_on_rbd' in str(err.value)
    assert _vms(rbd_admin) == before


def test_flat_backend_base_file_is_written_by_stream_copy(
        nova_env, make_image, instance, create_root_disk, caplog):
    """A file-backed disk: the chain writes Nova's _base file (verified), then
    Nova's fetch_to_raw inspects it and Flat copies it to the instance disk."""
    data = image_bytes(8 * MiB, seed=35)
    image_id = make_image(data)                  # Glance's file store
    nova_env(libvirt={'images_type': 'flat'})
    caplog.set_level(logging.INFO)
    inst = instance(image_id)

    backend = create_root_disk(inst, image_id)

    base = _base_file(image_id)
    with open(base, 'rb') as f:
        assert f.read() == data
    with open(backend.path, 'rb') as f:
        assert f.read(len(data)) == data
    assert os.path.getsize(backend.path) == 1 * GiB     # resized to root_gb
    assert f'image {image_id} provided by stream_copy' in caplog.text
    assert 'sha512 verified' in caplog.text       # the copy engine's last word


def test_nova_format_checks_still_run_on_what_the_chain_wrote(
        nova_env, http_image, instance, create_root_disk, tmp_path, caplog):
    """A qcow2 image backed by a host file. Glance's upload checks refuse it; as a
    location (http store) it gets through Glance. The chain copies the bytes (the
    hash matches: they are the image's) and Nova's fetch_to_raw, which still runs
    after the chain, refuses the backing file."""
    import subprocess
    qcow = tmp_path / 'evil.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                    '/etc/hostname', str(qcow)], check=True)
    image_id, _url = http_image(qcow.read_bytes(), disk_format='qcow2')
    nova_env(libvirt={'images_type': 'flat'})
    caplog.set_level(logging.INFO)
    with pytest.raises(nova_exception.ImageUnacceptable) as err:
        create_root_disk(instance(image_id), image_id)
    assert f'image {image_id} provided by stream_copy' in caplog.text
    assert 'safety check' in str(err.value)
    assert 'Safety checks failed: backing_file' in caplog.text   # Nova's inspector
    assert not os.path.exists(_base_file(image_id))
    assert not os.path.exists(_base_file(image_id) + '.part')


def test_signatures_required_refuse_an_unsigned_image_on_every_path(
        nova_env, make_image, instance, create_root_disk, rbd_admin, context,
        tmp_path, caplog):
    """verify_glance_signatures on, an unsigned image: refused by the chain with
    the reason, and never handed to Nova's own clone or download instead."""
    data = image_bytes(4 * MiB, seed=39)
    image_id = make_image(data, backend='ceph')
    nova_env(glance={'verify_glance_signatures': True})
    caplog.set_level(logging.INFO)
    before = _vms(rbd_admin)
    with pytest.raises(nova_exception.ImageUnacceptable) as err:
        create_root_disk(instance(image_id), image_id)
    assert 'is not signed' in str(err.value)
    assert _vms(rbd_admin) == before
    with pytest.raises(nova_exception.ImageUnacceptable):
        hooks.download(context, image_id, str(tmp_path / 'x.part'))
    assert not os.path.exists(tmp_path / 'x.part')


def test_integration_off_changes_nothing(nova_env, make_image, instance,
                                        create_root_disk, remove_disks, context,
                                        caplog, tmp_path):
    """nova_integration off: the patched driver runs Nova's own code alone. The same
    spawn as the first test makes its disk (Nova's own clone), but the chain is never
    built, nothing of image_handlers logs, and download() leaves the file to Nova."""
    data = image_bytes(4 * MiB, seed=37)
    image_id = make_image(data, backend='ceph')
    nova_env(image_handlers={'nova_integration': False})
    hooks.reset()
    inst = instance(image_id)
    remove_disks(f'{inst.uuid}_disk')
    caplog.set_level(logging.DEBUG)

    backend = create_root_disk(inst, image_id)

    assert backend.exists()
    assert not hooks._chains
    assert not [r for r in caplog.records if r.name.startswith('image_handlers')]
    part = tmp_path / 'x.part'
    assert hooks.download(context, image_id, str(part)) is False
    assert not part.exists()
