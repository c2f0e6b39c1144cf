"""rbd_import's image source inside Nova: copy-image through Nova's own image API
(``copy_image_to_store``) and Glance's stores through Nova's service-auth session,
against the real Keystone and the two-cluster Glance of test_rbd_import."""
from __future__ import annotations

import pytest

from image_handlers import glance_import as gi
from tests.functional.test_rbd_import import (  # noqa: F401
    _copy_tasks, gc, glance_import, host_ceph, make_image)
from tests.functional.conftest import image_bytes
from tools.lab import nova_env as lab_nova

MiB = 1 << 20


@pytest.fixture
def nova_glance(tmp_path, keystone_lab, glance_import, host_ceph):
    conf = lab_nova.NovaConf()
    overrides = lab_nova.keystone_overrides(
        keystone_lab, instances_path=str(tmp_path / 'instances'),
        ceph_conf=str(host_ceph.conf_path), state_dir=str(tmp_path / 'state'))
    overrides['glance']['endpoint_override'] = glance_import.endpoint
    conf.set(overrides)
    yield
    conf.clear()


def _source(keystone_lab, user, project):
    from image_handlers.nova.image_source import NovaImageSource
    return NovaImageSource(lab_nova.keystone_context(keystone_lab, user, project))


def test_copy_through_nova(nova_glance, keystone_lab, make_image, gc):
    image_id = make_image(image_bytes(2 * MiB), visibility='public')
    admin = _source(keystone_lab, 'nova', 'service')
    info = admin.glance_info()
    assert 'local' in gi.store_ids(info['stores'])
    assert 'copy-image' in gi.import_methods(info['import'])
    # alice may read the image but not copy it (copy_image: admin only by default)
    with pytest.raises(gi.CopyRefused, match='copy_image'):
        _source(keystone_lab, 'alice', 'alpha').copy_to_store(image_id, 'local')
    with pytest.raises(gi.CopyRefused, match='nope'):
        admin.copy_to_store(image_id, 'nope')
    assert admin.copy_to_store(image_id, 'local') == gi.STARTED
    # Glance checks its import lock before the store: busy, whatever is asked
    assert admin.copy_to_store(image_id, 'local') == gi.BUSY
    assert len(_copy_tasks(gc, image_id)) == 1
