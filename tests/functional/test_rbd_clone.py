"""rbd_clone against the lab's real Ceph cluster and Glance's real rbd store."""
from __future__ import annotations

import contextlib
import subprocess
import uuid

import pytest
import rbd

from tests.functional.conftest import image_bytes

MiB = 1 << 20


def _vms(rbd_admin) -> set[str]:
    with rbd_admin.open_ioctx('vms') as ioctx:
        return set(rbd.RBD().list(ioctx))


def _read(rbd_admin, pool, name, length, snapshot=None) -> bytes:
    with rbd_admin.open_ioctx(pool) as ioctx:
        with contextlib.closing(rbd.Image(ioctx, name, snapshot=snapshot,
                                          read_only=True)) as img:
            return img.read(0, length)


@pytest.fixture
def rbd_image(make_image, glance_lab):
    """An image uploaded through Glance into its rbd store (backend "ceph")."""
    def make(data: bytes, disk_format: str = 'raw') -> str:
        return make_image(data, disk_format=disk_format, backend='ceph')
    return make


@pytest.fixture
def disk_name(rbd_admin):
    """A fresh target name in pool vms, removed after the test."""
    name = f'disk-{uuid.uuid4().hex[:8]}'
    yield name
    with rbd_admin.open_ioctx('vms') as ioctx:
        with contextlib.suppress(rbd.ImageNotFound):
            rbd.RBD().remove(ioctx, name)


def test_glance_rbd_store_gives_rbd_locations(rbd_image, glance, ceph_lab):
    image_id = rbd_image(image_bytes(4 * MiB))
    img = glance.images.get(image_id)
    assert img['direct_url'] == f'rbd://{ceph_lab.fsid}/images/{image_id}/snap'


def test_clone_is_copy_on_write_child(rbd_image, nova_conf, cli, rbd_admin, disk_name):
    data = image_bytes(16 * MiB, seed=11)
    image_id = rbd_image(data)
    res = cli('fetch', image_id, f'rbd:vms/{disk_name}', '--config-file', nova_conf(),
              '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['handler'] == 'rbd_clone' and out['zero_copy'] is True
    assert out['bytes_copied'] == 0
    assert out['details']['parent'] == f'images/{image_id}@snap'
    with rbd_admin.open_ioctx('vms') as ioctx:
        with contextlib.closing(rbd.Image(ioctx, disk_name)) as clone:
            spec = clone.get_parent_image_spec()
            assert (spec['pool_name'], spec['image_name'], spec['snap_name']) == (
                'images', image_id, 'snap')
            assert clone.read(0, len(data)) == data
            clone.write(b'\xaa' * 4096, 0)  # a write to the clone...
    # ...leaves the parent snapshot unchanged
    assert _read(rbd_admin, 'images', image_id, len(data), 'snap') == data


def test_resize_and_flatten_for_moves(rbd_image, nova_conf, cli, rbd_admin, disk_name):
    data = image_bytes(8 * MiB, seed=12)
    image_id = rbd_image(data)
    res = cli('fetch', image_id, f'rbd:vms/{disk_name}', '--config-file', nova_conf(),
              '--purpose', 'unshelve', '--size', str(32 * MiB), '--json')
    assert res.rc == 0, res
    assert res.json['details']['flattened'] is True
    with rbd_admin.open_ioctx('vms') as ioctx:
        with contextlib.closing(rbd.Image(ioctx, disk_name, read_only=True)) as disk:
            assert disk.size() == 32 * MiB
            with pytest.raises(rbd.ImageNotFound):
                disk.get_parent_image_spec()  # flattened: no parent any more
            assert disk.read(0, len(data)) == data


def _explain_reason(cli, conf, image_id, target) -> tuple[dict, str]:
    res = cli('explain', image_id, target, '--config-file', conf, '--json')
    assert res.rc in (0, 1), res
    reasons = [a['reason'] for a in res.json['attempts'] if a['handler'] == 'rbd_clone']
    assert reasons, res
    return res.json, reasons[0]


def _refused(cli, conf, image_id, disk_name, rbd_admin) -> str:
    """explain gives rbd_clone's reason; fetch then fails (exit 1: no other handler
    makes RBD disks) and leaves the target pool exactly as it was."""
    before = _vms(rbd_admin)
    _, reason = _explain_reason(cli, conf, image_id, f'rbd:vms/{disk_name}')
    res = cli('fetch', image_id, f'rbd:vms/{disk_name}', '--config-file', conf)
    assert res.rc == 1, res
    assert reason in res.err, res      # the same words drive the run
    assert _vms(rbd_admin) == before
    return reason


def test_foreign_fsid_refused(rbd_image, set_locations, nova_conf, cli, rbd_admin,
                              disk_name):
    image_id = rbd_image(image_bytes(2 * MiB))
    forged = '00000000-1111-2222-3333-444444444444'
    set_locations(image_id, [f'rbd://{forged}/images/{image_id}/snap'])
    reason = _refused(cli, nova_conf(), image_id, disk_name, rbd_admin)
    assert f'fsid {forged} is not this cluster\'s fsid {rbd_admin.get_fsid()}' in reason


def test_other_tenants_disk_in_vms_refused(rbd_image, set_locations, nova_conf, cli,
                                           rbd_admin, disk_name, ceph_lab):
    """The OSSN attack: a location naming someone else's disk snapshot in pool vms."""
    image_id = rbd_image(image_bytes(2 * MiB))
    set_locations(image_id, [f'rbd://{ceph_lab.fsid}/vms/{image_id}/snap'])
    reason = _refused(cli, nova_conf(), image_id, disk_name, rbd_admin)
    assert "pool 'vms' is not an allowed source pool" in reason


def test_location_naming_another_images_data_refused(rbd_image, set_locations, nova_conf,
                                                     cli, disk_name, ceph_lab,
                                                     rbd_admin):
    victim = rbd_image(image_bytes(2 * MiB, seed=1))
    image_id = rbd_image(image_bytes(2 * MiB, seed=2))
    set_locations(image_id, [f'rbd://{ceph_lab.fsid}/images/{victim}/snap'])
    reason = _refused(cli, nova_conf(), image_id, disk_name, rbd_admin)
    assert f'names RBD image {victim!r}' in reason and 'other data' in reason


def test_missing_and_unprotected_snapshot(rbd_image, set_locations, nova_conf, cli,
                                          rbd_admin, disk_name, ceph_lab):
    image_id = rbd_image(image_bytes(2 * MiB))
    set_locations(image_id, [f'rbd://{ceph_lab.fsid}/images/{image_id}/nosuch'])
    reason = _refused(cli, nova_conf(), image_id, disk_name, rbd_admin)
    assert f'snapshot images/{image_id}@nosuch does not exist' in reason

    set_locations(image_id, [f'rbd://{ceph_lab.fsid}/images/{image_id}/snap'])
    with rbd_admin.open_ioctx('images') as ioctx:
        with contextlib.closing(rbd.Image(ioctx, image_id)) as img:
            img.unprotect_snap('snap')
        try:
            reason = _refused(cli, nova_conf(), image_id, disk_name, rbd_admin)
            assert f'snapshot images/{image_id}@snap is not protected' in reason
        finally:
            with contextlib.closing(rbd.Image(ioctx, image_id)) as img:
                img.protect_snap('snap')  # so Glance can delete it


def test_qcow2_image_not_cloned(rbd_image, nova_conf, cli, disk_name, tmp_path,
                                rbd_admin):
    qcow = tmp_path / 'img.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(qcow), '16M'], check=True)
    image_id = rbd_image(qcow.read_bytes(), disk_format='qcow2')
    reason = _refused(cli, nova_conf(), image_id, disk_name, rbd_admin)
    assert 'disk_format qcow2 cannot be cloned as raw' in reason


def test_malformed_rbd_url(rbd_image, set_locations, nova_conf, cli, disk_name, ceph_lab,
                           rbd_admin):
    image_id = rbd_image(image_bytes(2 * MiB))
    set_locations(image_id, [f'rbd://{ceph_lab.fsid}/images/{image_id}'])
    reason = _refused(cli, nova_conf(), image_id, disk_name, rbd_admin)
    assert 'no rbd location among the image\'s 1 location(s)' in reason
    res = cli('explain', image_id, f'rbd:vms/{disk_name}', '--config-file', nova_conf(),
              '--json')
    assert res.rc == 1, res
    star = [a for a in res.json['attempts'] if a['handler'] == '*']
    assert star and 'expected rbd://FSID/POOL/IMAGE/SNAPSHOT' in star[0]['reason']


def test_target_name_taken(rbd_image, nova_conf, cli, rbd_admin, disk_name):
    image_id = rbd_image(image_bytes(2 * MiB))
    with rbd_admin.open_ioctx('vms') as ioctx:
        rbd.RBD().create(ioctx, disk_name, 4 * MiB)
        with contextlib.closing(rbd.Image(ioctx, disk_name)) as img:
            img.write(b'customer', 0)
    before = _vms(rbd_admin)
    res = cli('fetch', image_id, f'rbd:vms/{disk_name}', '--config-file', nova_conf())
    assert res.rc == 2 and 'already exists' in res.err, res
    assert _read(rbd_admin, 'vms', disk_name, 8) == b'customer'
    with rbd_admin.open_ioctx('vms') as ioctx:
        with contextlib.closing(rbd.Image(ioctx, disk_name, read_only=True)) as img:
            assert img.size() == 4 * MiB
            with pytest.raises(rbd.ImageNotFound):
                img.get_parent_image_spec()     # still the customer's own disk
    assert _vms(rbd_admin) == before


def test_image_deleted_between_explain_and_fetch(rbd_image, glance, nova_conf, rbd_admin,
                                                 disk_name):
    """The Python API: decide with a fresh record, then the image goes away."""
    from image_handlers import api, exceptions
    from image_handlers.chain import HandlerChain
    image_id = rbd_image(image_bytes(2 * MiB))
    conf = api.make_conf([nova_conf()])
    chain = HandlerChain(conf)
    request = chain.request(image_id, f'rbd:vms/{disk_name}')
    assert chain.explain(request).handler == 'rbd_clone'
    glance.images.delete(image_id)  # Glance removes the snapshot and the RBD image
    before = _vms(rbd_admin)
    with pytest.raises(exceptions.NoHandlerAvailable) as err:
        chain.fetch(request)
    reasons = [a.reason for a in err.value.result.attempts if a.handler == 'rbd_clone']
    assert any('does not exist' in r or 'vanished' in r for r in reasons), reasons
    assert _vms(rbd_admin) == before


def test_cluster_unreachable(rbd_image, nova_conf, cli, tmp_path, disk_name, rbd_admin):
    """A dead monitor address: a bounded wait, the reason, nothing created; a file
    target then falls back to Glance's data API, verified."""
    data = image_bytes(2 * MiB, seed=21)
    image_id = rbd_image(data)
    dead = tmp_path / 'dead-ceph.conf'
    dead.write_text('[global]\nmon host = 127.0.0.1:1\nauth supported = none\n')
    conf = nova_conf(f'rbd_ceph_conf = {dead}\nrbd_connect_timeout = 2')
    before = _vms(rbd_admin)
    res = cli('fetch', image_id, f'rbd:vms/{disk_name}', '--config-file', conf, '--json')
    assert res.rc == 1, res
    reasons = [a['reason'] for a in res.json['attempts'] if a['handler'] == 'rbd_clone']
    assert reasons and 'cannot connect to Ceph' in reasons[0] and 'within 2 s' in reasons[0]
    assert _vms(rbd_admin) == before

    target = tmp_path / 'disk.raw'
    res = cli('fetch', image_id, str(target), '--config-file', conf, '--json')
    assert res.rc == 0, res
    rbd_verdicts = [a for a in res.json['attempts']
                    if a['handler'] == 'stream_copy' and a['location'].startswith('rbd:')]
    assert rbd_verdicts[0]['outcome'] == 'skipped'
    assert 'cannot connect to Ceph' in rbd_verdicts[0]['reason']
    assert res.json['location'].startswith(f'glance:{image_id}')
    assert target.read_bytes() == data


def test_file_target_explains_rbd_clone_does_not_serve_it(rbd_image, nova_conf, cli,
                                                          tmp_path):
    data = image_bytes(4 * MiB, seed=3)
    image_id = rbd_image(data)
    res = cli('fetch', image_id, str(tmp_path / 'disk'), '--config-file', nova_conf(),
              '--json')
    assert res.rc == 0, res
    skipped = [a for a in res.json['attempts'] if a['handler'] == 'rbd_clone']
    assert 'cannot produce a file target' in skipped[0]['reason']
    assert (tmp_path / 'disk').read_bytes() == data
