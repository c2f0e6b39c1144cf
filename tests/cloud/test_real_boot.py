"""A real boot on a small real cloud, driven by tempest's own runner (issue 12).

The plugin's scenarios (image_handlers.tempest_plugin) run with ``tempest run``
from .lab/venv-tempest against the lab cloud: a server boots (networks 'none')
from an image in Glance's rbd store while the compute's disks are RBD (the root
disk must be a clone of ``<image>@snap``), then, with nova-compute restarted on
qcow2 disks under the XFS shared mount, from an image in Glance's file store there
(``_base`` a reflink/hardlink of Glance's file, or the disk an overlay on a pin of
it). The scenarios check the storage side themselves; this test checks that tempest
ran them (not skipped) and passed, and what nova-compute logged for each image.
Two boots; the whole set (with the reason scenario) is ``tools/cloud.sh tempest``.
"""
from __future__ import annotations

import os
import re
import subprocess

from tools.lab.service import LAB_DIR

TEMPEST = LAB_DIR / 'venv-tempest' / 'bin' / 'tempest'
SCENARIOS = 'image_handlers.tempest_plugin.tests.scenario.test_boot_paths'


def _tempest(workspace, *args: str) -> str:
    proc = subprocess.run([str(TEMPEST), *args], cwd=workspace, capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1'))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'tempest {" ".join(args)} failed:\n{out[-6000:]}'
    return out


def _run_one(workspace, test_class: str) -> str:
    """Run one scenario class with tempest's runner; its output. The scenario must
    have run and passed (a skip is a failure here: the cloud is configured for it)."""
    out = _tempest(workspace, 'run', '--serial', '--config-file',
                   str(workspace / 'etc' / 'tempest.conf'),
                   '--regex', rf'^{re.escape(SCENARIOS)}\.{test_class}\.')
    ok = re.findall(rf'{re.escape(SCENARIOS)}\.{test_class}\.(\w+) \[[\d.]+s\] \.\.\. ok',
                    out)
    assert ok, f'{test_class} did not pass:\n{out[-4000:]}'
    assert re.search(r'- Passed: 1\b', out) and re.search(r'- Failed: 0\b', out), out
    assert 'SKIPPED' not in out, out
    return out


def test_tempest_boots_rbd_clone_then_shared_fs(cloud, tmp_path):
    assert TEMPEST.exists(), f'{TEMPEST} missing: run tools/install-deps.sh'
    workspace = tmp_path / 'tempest'
    # --workspace-path: tempest's workspace registry here, not in ~/.tempest.
    _tempest(tmp_path, 'init', '--workspace-path', str(tmp_path / 'workspaces.yaml'),
             '--name', 'lab-cloud', str(workspace))

    cloud.set_images_type('rbd')
    cloud.tempest_conf(workspace / 'etc' / 'tempest.conf')
    _run_one(workspace, 'RbdCloneBootTest')
    log = cloud.compute_log.read_text(errors='replace')
    assert re.search(r'provided by rbd_clone \(clone\) from rbd://[0-9a-f-]+/images/'
                     r'[0-9a-f-]+/snap: 0 bytes copied', log), log[-3000:]

    cloud.set_images_type('qcow2')
    cloud.tempest_conf(workspace / 'etc' / 'tempest.conf')
    _run_one(workspace, 'SharedFsBootTest')
    log = cloud.compute_log.read_text(errors='replace')
    assert re.search(r'made by shared_fs \((overlay|reflink|hardlink)\)', log), log[-3000:]
    assert 'FULL COPY' not in log, log[-3000:]
