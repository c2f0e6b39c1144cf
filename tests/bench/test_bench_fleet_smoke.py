"""The fleet benchmark runs to the end with 2 hosts and an 8 MiB image, prints its
table and the model, and leaves no namespace, service or mount behind.

Checked: byte counts (the origin sent each image once: 1.00x, the zstd file's
compressed size for the compressed run), every host's copy verified, the teardown.
Times on a shared machine prove nothing in a test (bench/bench_fleet.py measures
them). No Ceph here (--rbd-clones 0): the clone path has its own tests and bench.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which('squid') and not os.path.exists('/usr/sbin/squid'),
    reason='the fleet needs root (network namespaces, tc, tmpfs) and squid')


def _netns() -> set[str]:
    out = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_bench_fleet_runs_small_and_cleans_up(tmp_path):
    before = _netns()
    out_json = tmp_path / 'fleet.json'
    run_dir = tmp_path / 'run'
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.bench_fleet', '--hosts', '2', '--image-mib', '8',
         '--tiers', '1,2', '--rbd-clones', '0', '--calibration-mib', '8',
         '--run-dir', str(run_dir), '--json', str(out_json)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, f'{out}\n{proc.stderr}'
    runs = json.loads(out_json.read_text())['runs']
    assert [(r['layout']['tiers'], r.get('codec')) for r in runs] == [
        (1, None), (2, None), (1, None), (1, 'zstd')], runs
    for r in runs:
        assert r['errors'] == {} and len(r['per_host_s']) == 2, r
        assert r['origin_responses'] == 1, r
        assert r['origin_bytes'] == r['served_size'], r     # once, whatever the hosts
    zstd = runs[-1]
    assert zstd['served_size'] < zstd['size']                # the compressed file moved
    assert '1.00x' in out and 'ext4 zstd' in out, out
    assert 'CERN (squid tree + gzip)' in out and 'VMThunder' in out, out
    assert 'every namespace, service, tmpfs and Ceph image created was removed' in out
    assert _netns() - before == set()
    assert sorted(p.name for p in run_dir.iterdir()) == []
    with open('/proc/mounts') as mounts:
        assert 'ih-fleet-disks-' not in mounts.read()
