"""The tempest plugin in tempest 47's own machinery (.lab/venv-tempest, built by
tools/install-deps.sh): its plugin manager finds the plugin through the
``tempest.test_plugins`` entry point and registers ``[image_handlers]``, ``tempest
run --list-tests`` in a workspace lists the scenarios, and ``tempest run`` skips
each scenario, before any credentials are made, when its store or handler is not
configured. Nothing is booted here (no cloud runs in the test command); the
scenarios' storage checks are tested against the lab in
tests/functional/test_tempest_storage.py.
"""
from __future__ import annotations

import json
import re
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
VENV = TOP / '.lab' / 'venv-tempest'
SCENARIOS = 'image_handlers.tempest_plugin.tests.scenario.test_boot_paths'
CONTRACT_OPTIONS = {'enabled_handlers', 'rbd_store', 'shared_fs_store', 'ceph_conf',
                    'ceph_user', 'ceph_keyring', 'rbd_instances_pool', 'instances_path',
                    'compute_log_file', 'raw_image_file', 'boot_timeout'}


def _run(argv: list[str], cwd: Path, returncode: int = 0) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == returncode, \
        f'{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}'
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def tempest():
    if not (VENV / 'bin' / 'tempest').exists():
        pytest.fail(f'{VENV} has no tempest: run tools/install-deps.sh')
    return VENV / 'bin'


@pytest.fixture(scope='module')
def workspace(tempest, tmp_path_factory) -> Path:
    """``tempest init``: a workspace whose .stestr.conf discovers tempest's tests
    and every plugin's."""
    base = tmp_path_factory.mktemp('tempest')
    ws = base / 'ws'
    # Its own workspace registry: ~/.tempest/workspace.yaml is left alone.
    _run([str(tempest / 'tempest'), 'init', '--workspace-path',
          str(base / 'workspace.yaml'), '--name', f'image-handlers-{uuid.uuid4().hex}',
          str(ws)], cwd=base)
    return ws


def test_plugin_manager_loads_plugin_and_registers_group(tempest, tmp_path):
    script = textwrap.dedent('''
        import json
        from oslo_config import cfg
        from tempest.test_discover import plugins
        manager = plugins.TempestTestPluginManager()
        conf = cfg.ConfigOpts()
        manager.register_plugin_opts(conf)
        conf([], default_config_files=[])
        listed = {group: sorted(o.name for o in opts)
                  for group, opts in manager.get_plugin_options_list()}
        print(json.dumps({
            'tests': manager.get_plugin_load_tests_tuple(),
            'listed': listed,
            'values': {k: v for k, v in conf.image_handlers.items()},
        }))
    ''')
    out = json.loads(_run([str(tempest / 'python'), '-c', script], cwd=tmp_path))
    test_dir, top = out['tests']['image_handlers']
    assert Path(test_dir) == TOP / 'image_handlers' / 'tempest_plugin' / 'tests'
    assert Path(top) == TOP
    assert CONTRACT_OPTIONS <= set(out['listed']['image_handlers'])
    values = out['values']
    assert values['rbd_store'] == '' and values['shared_fs_store'] == ''
    assert values['ceph_user'] == 'admin' and values['rbd_instances_pool'] == 'vms'
    assert values['boot_timeout'] == 300 and values['enabled_handlers'] == []


def test_list_tests_finds_the_scenarios(tempest, workspace):
    out = _run([str(tempest / 'tempest'), 'run', '--list-tests', '--regex',
                r'^image_handlers\.'], cwd=workspace)
    found = sorted(re.sub(r'\[.*\]$', '', line) for line in out.splitlines()
                   if line.startswith('image_handlers.'))
    assert found == sorted([
        f'{SCENARIOS}.NoZeroCopyBootTest.test_no_zero_copy_reason_logged',
        f'{SCENARIOS}.RbdCloneBootTest.test_rbd_clone_root_disk',
        f'{SCENARIOS}.SharedFsBootTest.test_shared_fs_root_disk'])


def _run_scenarios(tempest, workspace: Path, ih_options: str) -> str:
    """Run the scenario module with unittest in the workspace (tempest reads
    ./etc/tempest.conf; unittest skips tempest run's discovery of all of
    tempest's own tests: seconds instead of tens of them)."""
    conf = workspace / 'etc' / 'tempest.conf'
    conf.write_text(textwrap.dedent('''
        [DEFAULT]
        log_dir = {}
        [compute]
        max_microversion = latest
        [image_handlers]
    ''').format(workspace / 'logs') + textwrap.dedent(ih_options))
    proc = subprocess.run([str(tempest / 'python'), '-m', 'unittest', '-v', SCENARIOS],
                          cwd=workspace, capture_output=True, text=True, timeout=300)
    return proc.stdout + proc.stderr


def _skips(out: str) -> dict[str, str]:
    return {cls: reason.strip('\'"') for cls, reason in re.findall(
        r'setUpClass \(\S+\.(\w+)\) \.\.\. skipped (.*)', out)}


def test_scenarios_skip_when_store_or_handler_missing(tempest, workspace, tmp_path):
    """A RAW image is there, but the RBD store's handler is not enabled, no
    shared store and no compute log are configured: each class is skipped with
    the option it misses, before any credentials are asked of Keystone."""
    raw = tmp_path / 'tiny.raw'
    raw.write_bytes(bytes(1 << 20))
    out = _run_scenarios(tempest, workspace, f'''
        raw_image_file = {raw}
        rbd_store = robust_rbd
        enabled_handlers = stream_copy
    ''')
    assert _skips(out) == {
        'RbdCloneBootTest': "rbd_clone is not in [image_handlers] enabled_handlers "
                            "(['stream_copy'])",
        'SharedFsBootTest': '[image_handlers] shared_fs_store is not set',
        'NoZeroCopyBootTest': '[image_handlers] compute_log_file is not set'}, out
    assert 'OK (skipped=3)' in out, out


def test_scenarios_skip_without_raw_image_and_run_when_configured(tempest, workspace,
                                                                  tmp_path):
    """No raw_image_file: all three skip saying so. The RBD scenario with its
    store, handler and image configured is not skipped: it goes on to make its
    credentials, which fails here (no cloud) -- so the skips are not
    unconditional."""
    out = _run_scenarios(tempest, workspace, '''
        rbd_store = robust_rbd
        enabled_handlers = rbd_clone,stream_copy
    ''')
    reason = '[image_handlers] raw_image_file is not set: no RAW image to boot'
    assert _skips(out) == dict.fromkeys(
        ['RbdCloneBootTest', 'SharedFsBootTest', 'NoZeroCopyBootTest'], reason), out
    raw = tmp_path / 'tiny.raw'
    raw.write_bytes(bytes(1 << 20))
    out = _run_scenarios(tempest, workspace, f'''
        raw_image_file = {raw}
        rbd_store = robust_rbd
        enabled_handlers = rbd_clone,stream_copy
    ''')
    assert 'RbdCloneBootTest' not in _skips(out), out
    assert re.search(r'ERROR: setUpClass \(\S+\.RbdCloneBootTest\)', out), out
    assert 'InvalidCredentials' in out, out
