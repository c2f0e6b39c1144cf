"""The tempest scenarios' storage-side checks (image_handlers/tempest_plugin/
storage.py) against disks the real handlers made in the lab: an rbd_clone child in
the lab's Ceph, shared_fs reflinks, hard links and overlays on the lab's XFS and
ext4 next to Glance's file stores, full copies, and the reasons the real chain
logs. Each check must tell the zero-copy disk from a copy, so the scenarios can
fail. (The scenarios themselves boot servers in a cloud: tests/tempest_plugin
only lists and skips them here.)
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid

import pytest
import rbd

from image_handlers import api, exceptions
from image_handlers.tempest_plugin import storage
from tests.functional.conftest import FS_IDS, image_bytes

MiB = 1 << 20


@pytest.fixture
def conf_for(tmp_path, glance_lab, ceph_lab, xfs_lab, ext4_lab):
    """A ConfigOpts for the lab: Nova's RBD settings and the XFS/ext4 mounts."""
    def make(handlers: str, methods: str = 'reflink, overlay'):
        path = tmp_path / f'nova-{uuid.uuid4().hex[:6]}.conf'
        path.write_text(
            glance_lab.nova_conf()
            + '\n[libvirt]\nimages_rbd_pool = vms\n'
            + f'images_rbd_ceph_conf = {ceph_lab.conf_path}\nrbd_user = admin\n'
            + f'\n[image_handlers]\nstate_dir = {tmp_path / "state"}\n'
            + f'handlers = {handlers}\nshared_fs_methods = {methods}\n'
            + f'shared_fs_mounts = {FS_IDS["xfs"]}:{xfs_lab.mountpoint}, '
            + f'{FS_IDS["ext4"]}:{ext4_lab.mountpoint}\n')
        return api.make_conf([str(path)])
    return make


@pytest.fixture
def vms_names(ceph_lab):
    """Fresh RBD image names in pool vms, removed after the test."""
    names: list[str] = []

    def new() -> str:
        names.append(f'tempest-{uuid.uuid4().hex[:8]}_disk')
        return names[-1]
    yield new
    import rados
    conn = rados.Rados(conffile=str(ceph_lab.conf_path), rados_id='admin')
    conn.connect(timeout=10)
    with conn.open_ioctx('vms') as ioctx:
        for name in names:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(ioctx, name)
    conn.shutdown()


def _instances(svc) -> str:
    """An instances_path on the mount of a Glance store, as a shared deployment has."""
    path = os.path.join(svc.mountpoint, 'nova', uuid.uuid4().hex[:8])
    os.makedirs(os.path.join(path, '_base'))
    return path


def test_rbd_parent_tells_a_clone_from_a_plain_disk(make_image, glance, ceph_lab,
                                                   conf_for, vms_names):
    image_id = make_image(image_bytes(4 * MiB, seed=91), backend='ceph')
    source = storage.parse_rbd_url(storage.location_of(glance.images.get(image_id), 'rbd'))
    assert (source.fsid, source.pool, source.image, source.snapshot) == \
        (ceph_lab.fsid, 'images', image_id, 'snap')
    clone = vms_names()
    result = api.fetch(conf_for('rbd_clone'), image_id, f'rbd:vms/{clone}')
    assert result.handler == 'rbd_clone'

    parent = storage.rbd_parent(str(ceph_lab.conf_path), 'admin', '', 'vms', clone)
    assert parent == storage.RbdSpec(pool='images', image=image_id, snapshot='snap')

    import rados
    conn = rados.Rados(conffile=str(ceph_lab.conf_path), rados_id='admin')
    conn.connect(timeout=10)
    plain = vms_names()
    with conn.open_ioctx('vms') as ioctx:
        rbd.RBD().create(ioctx, plain, 4 * MiB)
    conn.shutdown()
    assert storage.rbd_parent(str(ceph_lab.conf_path), 'admin', '', 'vms', plain) is None
    with pytest.raises(storage.NoEvidence, match='no RBD image vms/'):
        storage.rbd_parent(str(ceph_lab.conf_path), 'admin', '', 'vms', vms_names())


def test_shared_fs_evidence_reflink_hardlink_overlay_and_copy(
        make_image, glance, xfs_lab, ext4_lab, conf_for):
    data = image_bytes(4 * MiB, seed=92, zero_every=100)
    # reflink: _base on the XFS of Glance's store
    image_id = make_image(data, backend='xfs')
    glance_file = storage.location_of(glance.images.get(image_id), 'file')[len('file://'):]
    instances = _instances(xfs_lab)
    api.fetch(conf_for('shared_fs'), image_id, storage.base_path(instances, image_id))
    evidence = storage.shared_fs_evidence(instances, image_id, 'server', glance_file)
    assert evidence.startswith('reflink of ')

    # hardlink: ext4 cannot reflink
    ext_id = make_image(data, backend='ext4')
    ext_file = storage.location_of(glance.images.get(ext_id), 'file')[len('file://'):]
    ext_instances = _instances(ext4_lab)
    api.fetch(conf_for('shared_fs', 'hardlink'), ext_id,
              storage.base_path(ext_instances, ext_id))
    assert storage.shared_fs_evidence(ext_instances, ext_id, 'server',
                                      ext_file).startswith('hardlink of ')

    # overlay: Nova's qcow2 instance disk made directly, no _base (another host's
    # instances_path on the same volume)
    qcow2_instances, server = _instances(xfs_lab), uuid.uuid4().hex
    os.makedirs(os.path.join(qcow2_instances, server))
    api.fetch(conf_for('shared_fs', 'overlay'), image_id,
              os.path.join(qcow2_instances, server, 'disk'), disk_format='qcow2')
    evidence = storage.shared_fs_evidence(qcow2_instances, image_id, server, glance_file)
    assert evidence.startswith('qcow2 overlay ') and 'a hardlink of' in evidence

    # a full copy on the same XFS is not taken for zero-copy
    copy_id = make_image(data, backend='xfs')
    copy_file = storage.location_of(glance.images.get(copy_id), 'file')[len('file://'):]
    api.fetch(conf_for('stream_copy'), copy_id, storage.base_path(instances, copy_id))
    with pytest.raises(storage.NoEvidence, match='its bytes were copied'):
        storage.shared_fs_evidence(instances, copy_id, 'server', copy_file)


def test_base_path_is_novas():
    image_id = str(uuid.uuid4())
    assert storage.base_path('/i', image_id) == \
        f'/i/_base/{hashlib.sha1(image_id.encode()).hexdigest()}'


def test_logged_path_reads_the_chains_reasons(make_image, tmp_path, conf_for, caplog):
    """The chain's own log lines for an image shared_fs cannot serve here (a raw
    target off the share) and one no handler can make into an RBD disk."""
    image_id = make_image(image_bytes(2 * MiB, seed=93), backend='xfs')
    with caplog.at_level(logging.INFO, logger='image_handlers'):
        result = api.fetch(conf_for('shared_fs, stream_copy'), image_id,
                           str(tmp_path / 'base'))
        assert result.handler == 'stream_copy'
        with pytest.raises(exceptions.NoHandlerAvailable):
            api.fetch(conf_for('rbd_clone'), image_id, f'rbd:vms/x-{uuid.uuid4().hex[:6]}')
    path = storage.logged_path(caplog.text, image_id)
    assert set(path.refusals) == {'shared_fs', 'rbd_clone'}
    assert all(reason for reasons in path.refusals.values() for reason in reasons)
    assert 'no rbd location' in path.refusals['rbd_clone'][0]
    assert path.provided_by == ['stream_copy'] and path.full_copy
    other = storage.logged_path(caplog.text, str(uuid.uuid4()))
    assert other.lines == [] and not other.full_copy


UPLOAD_SCRIPT = '''
import json, sys
from tempest.lib import auth
from tempest.lib.services.image.v2 import images_client
from image_handlers.tempest_plugin import images
auth_url, raw, member_pw, admin_pw, *stores = sys.argv[1:]

def client(user, project, password):
    creds = auth.get_credentials(auth_url, identity_version='v3', username=user,
                                 password=password, project_name=project,
                                 user_domain_name='Default',
                                 project_domain_name='Default')
    return images_client.ImagesClient(auth.KeystoneV3AuthProvider(creds, auth_url),
                                      'image', 'RegionOne')

member, admin = client('alice', 'alpha', member_pw), client('admin', 'admin', admin_pw)
results = []
for store in stores:
    created, out = [], {}
    try:
        out['record'] = images.upload_raw(member, admin, raw, store, 'ih-tempest-upload',
                                          on_created=created.append)
    except Exception as exc:
        out['error'] = f'{type(exc).__name__}: {exc}'
    finally:
        for image_id in created:
            admin.delete_image(image_id)
            admin.wait_for_resource_deletion(image_id)
        out['created'] = created
    results.append(out)
print(json.dumps(results))
'''

VENV_TEMPEST = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), '.lab', 'venv-tempest', 'bin', 'python')


def _tempest_uploads(keystone_lab, raw: str, *stores: str) -> list[dict]:
    """Each store's upload by tempest's client in .lab/venv-tempest (one process)."""
    import json
    import subprocess
    from tools.lab.keystone import password_of
    proc = subprocess.run([VENV_TEMPEST, '-c', UPLOAD_SCRIPT, keystone_lab.auth_url, raw,
                           password_of('alice'), password_of('admin'), *stores],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_scenario_upload_with_tempests_client_into_each_store(
        keystone_lab, glance_lab, ceph_lab, xfs_lab, tmp_path):
    """The scenarios' upload (images.upload_raw) with tempest 47's own image
    client, as a member, through the lab's Keystone and Glance 33: into the rbd
    store and a file store on XFS, with the locations the checks read; an unknown
    store is an error and the image is deleted anyway."""
    raw = tmp_path / 'tiny.raw'
    raw.write_bytes(image_bytes(2 * MiB, seed=94))
    rbd_out, fs_out, bad = _tempest_uploads(keystone_lab, str(raw), 'ceph', 'xfs',
                                            'no-such-store')
    record = rbd_out['record']
    assert record['stores'] == 'ceph' and record['size'] == 2 * MiB
    spec = storage.parse_rbd_url(storage.location_of(record, 'rbd'))
    assert (spec.fsid, spec.pool, spec.image, spec.snapshot) == \
        (ceph_lab.fsid, 'images', record['id'], 'snap')

    path = storage.location_of(fs_out['record'], 'file')[len('file://'):]
    assert path.startswith(str(xfs_lab.mountpoint)) and path.endswith(fs_out['record']['id'])
    assert not os.path.exists(path)             # deleted after the upload

    assert 'record' not in bad and 'no-such-store' in bad['error'], bad
    assert len(bad['created']) == 1             # made, then deleted
