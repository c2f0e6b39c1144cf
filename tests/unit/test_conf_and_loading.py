import subprocess
import sys

import pytest
from oslo_config import cfg

from image_handlers import chain, conf as ih_conf, exceptions
from image_handlers.handlers.stream_copy import StreamCopyHandler


@pytest.fixture
def conf():
    c = cfg.ConfigOpts()
    ih_conf.register_opts(c)
    c(args=[])
    return c


def test_per_virt_driver_order(conf):
    conf.set_override('handlers', ['stream_copy'], 'image_handlers')
    conf.set_override('virt_driver_handlers', {'vmwareapi': 'a+b', 'libvirt': 'c'},
                      'image_handlers')
    assert ih_conf.handler_order(conf, 'vmwareapi') == ['a', 'b']
    assert ih_conf.handler_order(conf, 'libvirt') == ['c']
    assert ih_conf.handler_order(conf, 'ironic') == ['stream_copy']


def test_handlers_load_through_stevedore(conf):
    assert 'stream_copy' in chain.installed_handlers()
    loaded = chain.load_handlers(conf, ['stream_copy'])
    assert [type(h) for h in loaded] == [StreamCopyHandler]


def test_unknown_handler_is_a_config_error(conf):
    with pytest.raises(exceptions.ConfigError, match="rbd_klone.*not installed.*stream_copy"):
        chain.load_handlers(conf, ['rbd_klone', 'stream_copy'])


def test_duplicate_and_empty_handler_lists(conf):
    with pytest.raises(exceptions.ConfigError, match='twice'):
        chain.load_handlers(conf, ['stream_copy', 'stream_copy'])
    with pytest.raises(exceptions.ConfigError, match='no handler enabled'):
        chain.load_handlers(conf, [])


def test_nova_registered_glance_opts_are_not_registered_again():
    """Inside Nova, [glance] is already registered: ours must not clash."""
    from keystoneauth1 import loading as ks_loading
    c = cfg.ConfigOpts()
    ks_loading.register_session_conf_options(c, 'glance')
    ks_loading.register_adapter_conf_options(c, 'glance')
    ih_conf.register_opts(c)
    c(args=[])
    assert c.glance.service_type == 'image'


def test_config_generator_documents_every_option(tmp_path):
    out = tmp_path / 'sample.conf'
    subprocess.run([sys.executable, '-m', 'oslo_config.generator',
                    '--namespace', 'image_handlers', '--output-file', str(out)], check=True)
    text = out.read_text()
    for opt in ih_conf.list_opts()[0][1]:
        assert f'#{opt.dest} =' in text, opt.dest


def test_checked_in_sample_is_current(tmp_path):
    """doc/image_handlers.conf.sample must match the options (tools/gen-config.sh)."""
    import os
    out = tmp_path / 'sample.conf'
    subprocess.run([sys.executable, '-m', 'oslo_config.generator',
                    '--namespace', 'image_handlers', '--output-file', str(out)], check=True)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(repo, 'doc', 'image_handlers.conf.sample')) as f:
        assert f.read() == out.read_text(), 'stale sample: run tools/gen-config.sh'
