"""Aggregate image pre-caching (compute API 2.81) on the patched Nova 34: Nova's own
``ComputeManager.cache_images`` calling the libvirt driver's ``cache_image``, in the
lab's Keystone cloud with its Ceph and Glance. An RBD host gets no ``_base`` file:
the chain makes the image ready in the cluster (a signed image's snapshot is
verified now, so the first boot is O(1)); a file host gets its ``_base`` through
the chain's download; Nova's answers keep their meaning."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import uuid

import pytest
import rbd

from nova.compute import manager as compute_manager
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import imagecache

from tests.functional.conftest import image_bytes
from tests.nova.conftest import CONF
from tools.lab import nova_env as lab_nova
from tools.lab import signing

MiB = 1 << 20


def _cache_images(context, image_ids: list[str]) -> dict[str, str]:
    """Nova's own ComputeManager.cache_images over the (patched) LibvirtDriver,
    which is not initialised: the image path never touches libvirtd."""
    manager = compute_manager.ComputeManager.__new__(compute_manager.ComputeManager)
    manager.driver = libvirt_driver.LibvirtDriver.__new__(libvirt_driver.LibvirtDriver)
    return manager.cache_images(context, image_ids)


def _base_file(image_id: str) -> str:
    return os.path.join(CONF.instances_path, CONF.image_cache.subdirectory_name,
                        imagecache.get_cache_fname(image_id))


@pytest.fixture
def signed_ceph_image(glance_lab, keystone_lab, barbican_lab):
    client = glance_lab.keystone_client('alice', 'alpha')
    ca, ca_key = signing.make_ca('alice precache CA')
    cert, key = signing.make_signing_cert(ca, ca_key)
    cert_uuid = signing.store_certificate(
        cert, signing.request_context(keystone_lab, 'alice', 'alpha'),
        signing.private_conf(keystone_lab))
    made = []

    def make(data: bytes) -> str:
        img = client.images.create(name=f'precache-{uuid.uuid4().hex[:6]}',
                                   disk_format='raw', container_format='bare')
        made.append(img['id'])
        client.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                             backend='ceph')
        client.images.update(img['id'], **signing.sign(data, key,
                                                       certificate_uuid=cert_uuid))
        return img['id']
    yield make
    for image_id in made:
        client.images.delete(image_id)


def test_rbd_host_verifies_a_signed_image_ahead_so_the_first_boot_is_o1(
        nova_env, alice, signed_ceph_image, rbd_admin, caplog, tmp_path):
    nova_env(glance={'verify_glance_signatures': True})
    image_id = signed_ceph_image(image_bytes(4 * MiB, seed=71))
    caplog.set_level(logging.INFO)
    assert _cache_images(alice, [image_id]) == {image_id: 'cached'}
    assert caplog.text.count('read once') == 1
    assert not os.path.exists(_base_file(image_id))         # nothing in _base
    assert _cache_images(alice, [image_id]) == {image_id: 'existing'}
    caplog.clear()
    inst = lab_nova.make_instance(alice, image_id)
    try:
        lab_nova.create_root_disk(alice, inst, image_id)
        assert f'image {image_id} provided by rbd_clone' in caplog.text
        assert 'read once' not in caplog.text               # verified ahead: O(1)
    finally:
        with rbd_admin.open_ioctx('vms') as ioctx, contextlib.suppress(rbd.ImageNotFound):
            rbd.RBD().remove(ioctx, f'{inst.uuid}_disk')


def test_rbd_host_has_nothing_to_do_for_an_image_its_cluster_holds(
        nova_env, alice, make_image, caplog):
    image_id = make_image(image_bytes(2 * MiB, seed=72), backend='ceph')
    caplog.set_level(logging.INFO)
    assert _cache_images(alice, [image_id]) == {image_id: 'existing'}
    assert 'ready for rbd disks through rbd_clone' in caplog.text
    assert not os.path.exists(_base_file(image_id))


def test_an_image_this_host_cannot_use_is_an_error_with_the_reason(
        nova_env, alice, make_image, caplog):
    """In no store of this cluster (only Glance's file store), and no handler
    that could bring it here: Nova reports 'error', and the log says why."""
    image_id = make_image(image_bytes(1 * MiB, seed=73))          # fs store
    nova_env(image_handlers={'handlers': ['rbd_clone', 'stream_copy']})
    caplog.set_level(logging.INFO)
    assert _cache_images(alice, [image_id]) == {image_id: 'error'}
    assert 'cannot be pre-cached for RBD disks on this host' in caplog.text
    assert 'rbd_clone' in caplog.text


def test_file_host_gets_its_base_file_through_the_chain(nova_env, alice, make_image,
                                                        caplog):
    data = image_bytes(3 * MiB, seed=74)
    image_id = make_image(data)
    nova_env(libvirt={'images_type': 'flat'})
    caplog.set_level(logging.INFO)
    assert _cache_images(alice, [image_id]) == {image_id: 'cached'}
    assert f'image {image_id} provided by stream_copy' in caplog.text
    with open(_base_file(image_id), 'rb') as f:
        assert f.read() == data
    assert _cache_images(alice, [image_id]) == {image_id: 'existing'}


def test_the_image_cache_manager_pass_removes_partials_nobody_will_resume(
        nova_env, alice, make_image, glance, caplog):
    """What Nova's ImageCacheManager.update calls at its end (the patch), with
    alice's context: a partial _base copy of an image deleted from Glance goes;
    one of a live image stays. (The pass itself is not run whole: its query of
    the running instances needs Nova's database, which the lab does not run.)"""
    import inspect
    from image_handlers.nova import hooks
    assert 'cache_manager_pass' in inspect.getsource(
        imagecache.ImageCacheManager.update)
    from image_handlers.copy import checkpoint
    from image_handlers.copy.checkpoint import Checkpoint, CopyPaths
    nova_env(libvirt={'images_type': 'flat'})
    os.makedirs(os.path.dirname(_base_file('x')), exist_ok=True)
    deleted = make_image(image_bytes(1 * MiB, seed=75))
    live = make_image(image_bytes(1 * MiB, seed=76))
    partials = {}
    for image_id in (deleted, live):
        paths = CopyPaths.for_target(_base_file(image_id) + '.part')
        with open(paths.partial, 'wb') as f:
            f.write(b'\1' * 65536)
        checkpoint.save(paths, Checkpoint(65536, 1 * MiB, None, {'url': 'x'},
                                          image_id))
        partials[image_id] = paths
    glance.images.delete(deleted)
    caplog.set_level(logging.INFO)
    hooks.cache_manager_pass(alice, os.path.dirname(_base_file(deleted)))
    assert not os.path.exists(partials[deleted].partial)
    assert not os.path.exists(partials[deleted].checkpoint)
    assert os.path.exists(partials[live].partial)
    assert 'partial copies in' in caplog.text and '1 removed' in caplog.text
    assert f'image {deleted} no longer exists in Glance' in caplog.text


def test_the_image_cache_manager_pass_removes_partial_rbd_clones_no_request_works_on(
        nova_env, alice, rbd_admin, caplog, monkeypatch, tmp_path):
    """On an RBD host the same pass looks in the target pool (vms) for partial
    clones failed requests left (rbd/partials): one made a moment ago is kept for
    its request; past MIN_AGE (set to 0 here instead of waiting a minute) and
    with nobody holding it open, it goes, and the pass's log names it."""
    from image_handlers.nova import hooks
    from image_handlers.rbd import partials
    nova_env(image_handlers={'handlers': ['rbd_clone', 'stream_copy']})
    name = f'disk-{os.urandom(4).hex()}{partials.SUFFIX}'
    caplog.set_level(logging.INFO)
    with rbd_admin.open_ioctx('vms') as ioctx:
        rbd.RBD().create(ioctx, name, 1 * MiB)
        try:
            hooks.cache_manager_pass(alice, str(tmp_path / '_base'))
            assert f'rbd:vms/{name}: made' in caplog.text, caplog.text
            assert name in rbd.RBD().list(ioctx)
            caplog.clear()
            monkeypatch.setattr(partials, 'MIN_AGE', 0.0)
            hooks.cache_manager_pass(alice, str(tmp_path / '_base'))
            assert name not in rbd.RBD().list(ioctx)
            assert f'rbd:vms/{name}: a clone no request is working on' in caplog.text
        finally:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(ioctx, name)
