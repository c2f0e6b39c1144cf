"""Handlers chosen per Nova image backend ([libvirt] images_type) as well as per
virt driver (issue 10): precedence, "default" resolved as Nova does, and the
chain's order (the command's --images-type: test_cli_habits.py)."""
from __future__ import annotations

import pytest
from oslo_config import cfg

from image_handlers import chain, conf as ih_conf
from image_handlers.handlers.shared_fs import SharedFsHandler
from image_handlers.handlers.stream_copy import StreamCopyHandler


@pytest.fixture
def conf():
    c = cfg.ConfigOpts()
    ih_conf.register_opts(c)
    c(args=[])
    return c


def test_images_type_order_and_precedence(conf):
    conf.set_override('handlers', ['stream_copy'], 'image_handlers')
    conf.set_override('images_type_handlers',
                      {'qcow2': 'iscsi_cor+shared_fs+stream_copy',
                       'rbd': 'rbd_clone+stream_copy', 'flat': 'shared_fs'},
                      'image_handlers')
    order = ih_conf.handler_order
    assert order(conf, 'libvirt', 'qcow2') == ['iscsi_cor', 'shared_fs', 'stream_copy']
    assert order(conf, 'libvirt', 'rbd') == ['rbd_clone', 'stream_copy']
    assert order(conf, 'libvirt', 'raw') == ['shared_fs']        # raw is flat
    assert order(conf, 'libvirt', 'lvm') == ['stream_copy']      # not listed
    assert order(conf, 'libvirt') == ['stream_copy']             # unknown backend
    conf.set_override('virt_driver_handlers', {'libvirt': 'rbd_clone'}, 'image_handlers')
    assert order(conf, 'libvirt', 'qcow2') == ['rbd_clone']      # the driver wins
    assert order(conf, 'ironic', 'qcow2') == ['iscsi_cor', 'shared_fs', 'stream_copy']


def test_images_type_default_is_resolved_as_nova_does(conf):
    assert conf.libvirt.images_type == 'default'
    assert ih_conf.effective_images_type(conf) == 'qcow2'
    conf.set_override('use_cow_images', False)
    assert ih_conf.effective_images_type(conf) == 'flat'
    conf.set_override('images_type', 'rbd', 'libvirt')
    assert ih_conf.effective_images_type(conf) == 'rbd'
    assert ih_conf.effective_images_type(conf, 'raw') == 'raw'


def test_images_type_unknown_when_nova_options_are_absent():
    c = cfg.ConfigOpts()
    c(args=[])
    assert ih_conf.effective_images_type(c) is None


def test_chain_loads_the_order_of_its_images_type(conf):
    conf.set_override('images_type_handlers', {'qcow2': 'shared_fs+stream_copy'},
                      'image_handlers')
    loaded = chain.HandlerChain(conf, images_type='qcow2')
    assert loaded.images_type == 'qcow2'
    assert [type(h) for h in loaded.handlers] == [SharedFsHandler, StreamCopyHandler]
    conf.set_override('handlers', ['stream_copy'], 'image_handlers')
    assert [type(h) for h in chain.HandlerChain(conf, images_type='rbd').handlers] == [
        StreamCopyHandler]
