"""Fixtures for the Nova integration tests: the real, patched Nova 34 from PyPI
in the lab's cloud: a real Keystone (Nova's CONF as devstack writes it, the
request context alice's token and catalog), Barbican, Glance behind Keystone, and
Ceph (tools/lab/nova_env.py says what differs from a compute host: nothing of
Nova is mocked).

These tests run under the Nova virtualenv's interpreter (tools/run-tests.sh):
    .lab/venv-nova/bin/python -m pytest tests/nova
"""
from __future__ import annotations

import pytest

# The lab fixtures (real Ceph, real Glance, nginx) are shared with the functional tests.
from tests.functional.conftest import (  # noqa: F401
    FS_IDS, barbican_lab, btrfs_lab, ceph_lab, ext4_lab, glance_fs,
    glance_fs_lab, glance_ks_lab, glance_lab, gluster_lab, http_image, keystone_lab,
    make_image, nginx_lab, rbd_admin, set_locations, xfs_lab)
from tools.lab import nova_env as lab_nova

CONF = lab_nova.CONF
GiB = 1 << 30


@pytest.fixture
def nova_fs_env(tmp_path, keystone_lab, barbican_lab, glance_lab, xfs_lab,
                btrfs_lab, ext4_lab, gluster_lab):
    """Nova's CONF in the lab's Keystone cloud against the lab's Glance (file stores
    on the lab's shared mounts), the chain being shared_fs then stream_copy;
    ``nova_fs_env(instances_path, images_type, **groups)``."""
    conf = lab_nova.NovaConf()
    mounts = {'xfs': xfs_lab, 'btrfs': btrfs_lab, 'ext4': ext4_lab,
              'gluster': gluster_lab}

    def configure(instances_path, images_type, **groups):
        overrides = lab_nova.keystone_overrides(
            keystone_lab, instances_path=str(instances_path), ceph_conf='',
            state_dir=str(tmp_path / 'state'))
        overrides['libvirt'] = {'images_type': images_type}
        overrides['image_handlers'].update(
            handlers=['shared_fs', 'stream_copy'],
            shared_fs_mounts={FS_IDS[n]: str(m.mountpoint) for n, m in mounts.items()})
        for group, values in groups.items():
            overrides.setdefault(group, {}).update(values)
        conf.set(overrides)
    yield configure
    conf.clear()


@pytest.fixture
def nova_env(tmp_path, keystone_lab, barbican_lab, glance_lab, ceph_lab):
    """Nova's CONF in the lab's Keystone cloud, as devstack writes it
    (lab_nova.keystone_overrides: catalog, service user, Barbican; RBD disks in
    pool vms, the chain on); ``configure(group={opt: value}, ...)`` changes more.
    Every override is cleared and the hooks' chain forgotten afterwards."""
    conf = lab_nova.NovaConf()
    conf.set(lab_nova.keystone_overrides(
        keystone_lab, instances_path=str(tmp_path / 'instances'),
        ceph_conf=str(ceph_lab.conf_path), state_dir=str(tmp_path / 'state')))
    yield lambda **groups: conf.set(groups)
    conf.clear()


@pytest.fixture
def alice(keystone_lab):
    """alice's request context as nova-compute gets it: her Keystone token and
    the service catalog (project alpha)."""
    return lab_nova.keystone_context(keystone_lab, 'alice', 'alpha')


@pytest.fixture(scope='session')
def glance(glance_lab):
    """glanceclient as alice (project alpha): the images her instances boot."""
    return glance_lab.keystone_client('alice', 'alpha')


@pytest.fixture
def context(alice):
    return alice


@pytest.fixture
def instance(context):
    return lambda image_id, **fields: lab_nova.make_instance(context, image_id,
                                                             **fields)


@pytest.fixture
def create_root_disk(context):
    return lambda instance, image_id: lab_nova.create_root_disk(context, instance,
                                                                image_id)
