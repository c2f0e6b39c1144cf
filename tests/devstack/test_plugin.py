"""The DevStack plugin (devstack/), each phase run by tests/devstack/harness.sh.

The harness sources DevStack's own ini-config and functions-common functions
(copied under devstack-funcs/), so iniset/iniget/inidelete really edit the fake
devstack's nova.conf, glance-api.conf and tempest.conf in a temporary directory.
Only pip and tools/nova-patch.sh are stubbed (recorders in the harness: they
would change Python environments); qemu-img, used to make the scenarios' RAW
image, is the real one. The files are checked after each mix of backends (Ceph
only, a shared file system, iSCSI, none), and unstack/clean must give back the
files exactly as they were.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
HARNESS = TOP / 'tests' / 'devstack' / 'harness.sh'
STACK_PHASES = ('pre-install', 'install', 'post-config', 'extra', 'test-config')

NOVA_CONF = """[DEFAULT]
debug = True
state_path = {data}/nova
instances_path = {data}/nova/instances

[libvirt]
virt_type = qemu
{libvirt}
[glance]
auth_type = password
"""
CEPH_LIBVIRT = """images_type = rbd
images_rbd_pool = vms
images_rbd_ceph_conf = /etc/ceph/ceph.conf
rbd_user = cinder
"""
GLANCE_CONF = """[DEFAULT]
show_image_direct_url = False
show_multiple_locations = False
enabled_backends = {backends}

[glance_store]
default_backend = {default}

[fast]
filesystem_store_datadir = {data}/glance/fast/
{rbd}"""
CEPH_GLANCE = """
[robust_rbd]
rbd_store_ceph_conf = /etc/ceph/ceph.conf
rbd_store_user = glance
rbd_store_pool = images
"""
TEMPEST_CONF = """[compute]
image_ref = 11111111-2222-3333-4444-555555555555
build_timeout = 196
"""


class FakeDevstack:
    """A devstack tree in a temporary directory, its config files as devstack's
    lib/nova, lib/glance and lib/tempest leave them before the plugin runs."""

    def __init__(self, root: Path, ceph: bool = False, env: dict | None = None):
        self.root = root
        self.data = root / 'opt' / 'stack' / 'data'
        self.nova_conf = root / 'etc' / 'nova' / 'nova.conf'
        self.nova_cpu_conf = root / 'etc' / 'nova' / 'nova-cpu.conf'
        self.glance_conf = root / 'etc' / 'glance' / 'glance-api.conf'
        self.tempest_conf = root / 'opt' / 'stack' / 'tempest' / 'etc' / 'tempest.conf'
        self.calls = root / 'calls.log'
        self.checkout = root / 'opt' / 'stack' / 'image_handlers'
        self.venv_python = self.data / 'venv' / 'bin' / 'python3'
        self.state_dir = self.data / 'image_handlers'
        for f in (self.nova_conf, self.glance_conf, self.tempest_conf):
            f.parent.mkdir(parents=True, exist_ok=True)
        self.nova_conf.write_text(NOVA_CONF.format(
            data=self.data, libvirt=CEPH_LIBVIRT if ceph else ''))
        self.glance_conf.write_text(GLANCE_CONF.format(
            data=self.data, backends='robust_rbd:rbd,fast:file' if ceph else 'fast:file',
            default='robust_rbd' if ceph else 'fast', rbd=CEPH_GLANCE if ceph else ''))
        self.tempest_conf.write_text(TEMPEST_CONF)
        self.env = {'GLANCE_ENABLE_MULTIPLE_STORES': 'True', **(env or {})}
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, bytes]:
        """Every config file under etc/ and tempest's, byte for byte."""
        files = {}
        for base in (self.root / 'etc', self.tempest_conf.parent):
            for p in sorted(base.rglob('*')):
                if p.is_file():
                    files[str(p.relative_to(self.root))] = p.read_bytes()
        return files

    def run(self, mode: str, *phases: str, check: bool = True):
        env = {k: v for k, v in os.environ.items() if not k.startswith('IMAGE_HANDLERS_')}
        env.update(self.env, IH_HARNESS_ROOT=str(self.root))
        proc = subprocess.run(['bash', str(HARNESS), mode, *phases], env=env,
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f'{mode} {" ".join(phases)} failed ({proc.returncode}):\n'
                                 f'{proc.stdout}\n{proc.stderr}')
        return proc

    def stack(self) -> None:
        """stack.sh's five phases, in order, in one shell."""
        self.run('stack', *STACK_PHASES)

    def ini(self, path: Path) -> configparser.RawConfigParser:
        parser = configparser.RawConfigParser(strict=True, default_section='\0none')
        parser.read_string(path.read_text())
        return parser

    def call_lines(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def section(parser: configparser.RawConfigParser, name: str) -> dict[str, str]:
    return dict(parser[name]) if parser.has_section(name) else {}


@pytest.fixture
def cirros(tmp_path) -> Path:
    """devstack's downloaded default image stand-in: a small real qcow2 in $FILES."""
    files = tmp_path / 'files'
    files.mkdir()
    image = files / 'cirros-0.6.3-x86_64-disk.img'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(image), '16M'],
                   check=True)
    return image


def test_ceph_only(tmp_path, cirros):
    """devstack-plugin-ceph's layout (images_type rbd, Glance store robust_rbd):
    rbd_clone first, Glance shows locations, tempest gets the RBD store."""
    ds = FakeDevstack(tmp_path, ceph=True)
    ds.stack()
    nova = section(ds.ini(ds.nova_conf), 'image_handlers')
    assert nova == {'handlers': 'rbd_clone,stream_copy', 'nova_integration': 'True',
                    'state_dir': str(ds.state_dir), 'rbd_allowed_source_pools': 'images'}
    glance = ds.ini(ds.glance_conf)
    assert glance['DEFAULT']['show_image_direct_url'] == 'True'
    assert glance['DEFAULT']['show_multiple_locations'] == 'True'
    assert glance['DEFAULT']['enabled_backends'] == 'robust_rbd:rbd,fast:file'
    tempest = section(ds.ini(ds.tempest_conf), 'image_handlers')
    raw = ds.state_dir / 'tempest-image.raw'
    assert tempest == {
        'enabled_handlers': 'rbd_clone,stream_copy', 'rbd_store': 'robust_rbd',
        'ceph_conf': '/etc/ceph/ceph.conf', 'ceph_user': 'admin',
        'rbd_instances_pool': 'vms', 'fallback_store': 'fast',
        'instances_path': f'{ds.data}/nova/instances', 'boot_timeout': '196',
        'raw_image_file': str(raw)}
    info = json.loads(subprocess.run(['qemu-img', 'info', '--output=json', str(raw)],
                                     check=True, capture_output=True).stdout)
    assert info['format'] == 'raw' and info['virtual-size'] == 16 * 2**20
    assert ds.ini(ds.tempest_conf)['compute']['image_ref'].startswith('1111')
    ds.run('unstack')
    assert ds.snapshot() == ds.before
    ds.run('unstack')                          # twice: nothing left to do
    assert ds.snapshot() == ds.before


def test_install_pip_and_nova_patch_arguments(tmp_path):
    """install: pip -e of the checkout into Nova's venv with devstack's
    constraints, then nova-patch.sh with Nova's python; a second stack finds the
    patches applied and does not apply them twice."""
    ds = FakeDevstack(tmp_path)
    ds.stack()
    req = ds.root / 'opt' / 'stack' / 'requirements' / 'upper-constraints.txt'
    assert ds.call_lines() == [
        f'pip install -c {req} -e {ds.checkout}',
        f'nova-patch.sh applied {ds.venv_python}',
        f'nova-patch.sh apply {ds.venv_python}']
    ds.run('unstack')
    ds.stack()
    assert ds.call_lines()[3:] == [
        f'pip install -c {req} -e {ds.checkout}',
        f'nova-patch.sh applied {ds.venv_python}']
    ds.run('unstack')
    ds.run('clean')
    assert ds.call_lines()[5:] == [
        f'nova-patch.sh applied {ds.venv_python}',
        f'nova-patch.sh revert {ds.venv_python}',
        'pip uninstall -y image_handlers']
    assert not ds.state_dir.exists()


def test_no_nova_patch(tmp_path):
    """IMAGE_HANDLERS_PATCH_NOVA=False: the package is installed, Nova left alone."""
    ds = FakeDevstack(tmp_path, env={'IMAGE_HANDLERS_PATCH_NOVA': 'False'})
    ds.run('stack', 'install')
    assert [c.split(' -c ')[0] for c in ds.call_lines()] == ['pip install']


def test_shared_fs(tmp_path, cirros):
    """A shared mount: its marker written once, a Glance file store on it with
    glance_store's location metadata, Nova's shared_fs_mounts; clean removes
    the marker it wrote."""
    mount = tmp_path / 'mnt' / 'shared'
    mount.mkdir(parents=True)
    ds = FakeDevstack(tmp_path, env={'IMAGE_HANDLERS_SHARED_FS_MOUNT': str(mount),
                                     'IMAGE_HANDLERS_SHARED_FS_ID': 'gluster-images'})
    ds.stack()
    marker = mount / '.image_handlers_fs_id'
    assert marker.read_text() == 'gluster-images\n'
    nova = section(ds.ini(ds.nova_conf), 'image_handlers')
    assert nova['handlers'] == 'shared_fs,stream_copy'
    assert nova['shared_fs_mounts'] == f'gluster-images:{mount}'
    assert 'rbd_allowed_source_pools' not in nova
    glance = ds.ini(ds.glance_conf)
    assert glance['DEFAULT']['enabled_backends'] == 'fast:file,shared_fs:file'
    assert glance['shared_fs']['filesystem_store_datadir'] == f'{mount}/glance/shared_fs/'
    meta = Path(glance['shared_fs']['filesystem_store_metadata_file'])
    assert meta.parent == ds.glance_conf.parent
    assert json.loads(meta.read_text()) == {'id': 'gluster-images', 'mountpoint': str(mount)}
    tempest = section(ds.ini(ds.tempest_conf), 'image_handlers')
    assert tempest['shared_fs_store'] == 'shared_fs'
    assert tempest['fallback_store'] == 'fast'
    assert 'rbd_store' not in tempest
    ds.run('unstack')
    assert ds.snapshot() == ds.before          # the metadata file is gone too
    assert marker.exists()                     # unstack keeps the volume's marker
    ds.run('clean')
    assert not marker.exists()


def test_shared_fs_marker_of_another_volume_stops_the_stack(tmp_path):
    """A marker with another id is never overwritten: post-config dies naming
    both ids, and nova.conf is not touched."""
    mount = tmp_path / 'mnt'
    mount.mkdir()
    marker = mount / '.image_handlers_fs_id'
    marker.write_text('other-volume\n')
    ds = FakeDevstack(tmp_path, env={'IMAGE_HANDLERS_SHARED_FS_MOUNT': str(mount)})
    ds.run('stack', 'pre-install')
    proc = ds.run('stack', 'post-config', check=False)
    assert proc.returncode != 0
    assert "holds 'other-volume', not IMAGE_HANDLERS_SHARED_FS_ID=devstack-images" \
        in proc.stderr
    assert marker.read_text() == 'other-volume\n'
    assert ds.nova_conf.read_bytes() == ds.before['etc/nova/nova.conf']


def test_shared_fs_needs_multiple_stores(tmp_path):
    mount = tmp_path / 'mnt'
    mount.mkdir()
    ds = FakeDevstack(tmp_path, env={'IMAGE_HANDLERS_SHARED_FS_MOUNT': str(mount),
                                     'GLANCE_ENABLE_MULTIPLE_STORES': 'False'})
    proc = ds.run('stack', 'pre-install', check=False)
    assert proc.returncode != 0 and 'GLANCE_ENABLE_MULTIPLE_STORES=True' in proc.stderr


def test_iscsi(tmp_path):
    ds = FakeDevstack(tmp_path, env={
        'IMAGE_HANDLERS_ISCSI_PORTALS': '127.0.0.1:3260',
        'IMAGE_HANDLERS_ISCSI_CHAP_SECRETS': 'images:/etc/nova/chap-images'})
    ds.stack()
    nova = section(ds.ini(ds.nova_conf), 'image_handlers')
    assert nova['handlers'] == 'iscsi_cor,stream_copy'
    assert nova['iscsi_allowed_portals'] == '127.0.0.1:3260'
    assert nova['iscsi_chap_secrets'] == 'images:/etc/nova/chap-images'
    assert section(ds.ini(ds.tempest_conf), 'image_handlers')['enabled_handlers'] == \
        'iscsi_cor,stream_copy'


def test_bad_portal_refused(tmp_path):
    ds = FakeDevstack(tmp_path, env={'IMAGE_HANDLERS_ISCSI_PORTALS': '127.0.0.1'})
    proc = ds.run('stack', 'pre-install', check=False)
    assert proc.returncode != 0 and "'127.0.0.1' is not HOST:PORT" in proc.stderr


def test_no_backend(tmp_path):
    """Nothing zero-copy configured: stream_copy alone, no RBD or shared options,
    no RAW image to boot (the scenarios then skip)."""
    ds = FakeDevstack(tmp_path)
    ds.stack()
    nova = section(ds.ini(ds.nova_conf), 'image_handlers')
    assert nova == {'handlers': 'stream_copy', 'nova_integration': 'True',
                    'state_dir': str(ds.state_dir)}
    tempest = section(ds.ini(ds.tempest_conf), 'image_handlers')
    assert tempest == {'enabled_handlers': 'stream_copy',
                       'instances_path': f'{ds.data}/nova/instances',
                       'boot_timeout': '196', 'fallback_store': 'fast'}
    ds.run('unstack')
    assert ds.snapshot() == ds.before


def test_all_backends_and_compute_log(tmp_path):
    """Ceph, a shared mount and iSCSI at once: the README's order; the compute
    log comes from nova-cpu.conf's log_file."""
    mount = tmp_path / 'mnt'
    mount.mkdir()
    ds = FakeDevstack(tmp_path, ceph=True, env={
        'IMAGE_HANDLERS_SHARED_FS_MOUNT': str(mount),
        'IMAGE_HANDLERS_ISCSI_PORTALS': '10.0.0.5:3260',
        'IMAGE_HANDLERS_TEMPEST_RAW_IMAGE': '/opt/images/tiny.raw'})
    ds.nova_cpu_conf.write_text('[DEFAULT]\nlog_file = /opt/stack/logs/n-cpu.log\n')
    ds.before = ds.snapshot()
    ds.stack()
    assert section(ds.ini(ds.nova_conf), 'image_handlers')['handlers'] == \
        'rbd_clone,iscsi_cor,shared_fs,stream_copy'
    tempest = section(ds.ini(ds.tempest_conf), 'image_handlers')
    assert tempest['compute_log_file'] == '/opt/stack/logs/n-cpu.log'
    assert tempest['raw_image_file'] == '/opt/images/tiny.raw'
    assert tempest['rbd_store'] == 'robust_rbd'
    assert tempest['shared_fs_store'] == 'shared_fs'
    ds.run('unstack')
    assert ds.snapshot() == ds.before


def test_rbd_required_but_nova_not_on_ceph(tmp_path):
    ds = FakeDevstack(tmp_path, env={'IMAGE_HANDLERS_RBD': 'True'})
    proc = ds.run('stack', 'post-config', check=False)
    assert proc.returncode != 0
    assert "images_type is '' in" in proc.stderr and 'ENABLE_CEPH_NOVA' in proc.stderr


def test_unstack_keeps_changes_made_after_ours(tmp_path):
    """Someone (another plugin) edits nova.conf after us: unstack removes only
    our options and the section we added, and keeps theirs."""
    ds = FakeDevstack(tmp_path, ceph=True)
    ds.stack()
    text = ds.nova_conf.read_text().replace('[libvirt]\n', '[libvirt]\ncpu_mode = none\n')
    ds.nova_conf.write_text(text)
    proc = ds.run('unstack')
    assert 'was changed after image_handlers configured it' in proc.stdout
    expected = ds.before['etc/nova/nova.conf'].decode().replace(
        '[libvirt]\n', '[libvirt]\ncpu_mode = none\n')
    assert ds.nova_conf.read_text() == expected
    assert ds.glance_conf.read_bytes() == ds.before['etc/glance/glance-api.conf']


def test_restack_after_devstack_rewrote_the_files(tmp_path):
    """stack twice without unstack, devstack having written nova.conf anew in
    between (its create_nova_conf does): unstack gives back the new file, not
    the first stack's."""
    ds = FakeDevstack(tmp_path, ceph=True)
    ds.stack()
    rewritten = ds.before['etc/nova/nova.conf'].decode().replace(
        'debug = True', 'debug = False')
    ds.nova_conf.write_text(rewritten)
    ds.stack()
    assert section(ds.ini(ds.nova_conf), 'image_handlers')['handlers'] == \
        'rbd_clone,stream_copy'
    proc = ds.run('unstack')
    assert 'was changed after' not in proc.stdout
    assert ds.nova_conf.read_text() == rewritten
    assert ds.glance_conf.read_bytes() == ds.before['etc/glance/glance-api.conf']


def test_shellcheck_clean():
    """shellcheck (Debian's, installed by tools/install-deps.sh) on the plugin's
    files and the harness, following their sourced files."""
    shellcheck = shutil.which('shellcheck')
    assert shellcheck, 'shellcheck is missing: run tools/install-deps.sh'
    files = ['devstack/settings', 'devstack/plugin.sh', 'devstack/lib/image_handlers',
             'tests/devstack/harness.sh']
    proc = subprocess.run([shellcheck, '-x', '-P', 'SCRIPTDIR', '-s', 'bash', *files],
                          cwd=TOP, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
