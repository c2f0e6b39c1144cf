"""The iscsi_cor benchmark runs to the end at tiny sizes and cleans up after itself.

Only that it completes and prints its goal lines is checked: timings on a shared
machine prove nothing in a test (bench/bench_iscsi_cor.py measures them).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ('qemu-img', 'qemu-io', 'qemu-nbd', 'iscsi-inq')

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists('/usr/sbin/tgtd')
    or not all(shutil.which(t) for t in TOOLS),
    reason='the benchmark runs the lab\'s tgt and Glance (root, tgt, qemu-utils, '
           'libiscsi-bin)')


def test_bench_iscsi_cor_runs_at_tiny_sizes_and_cleans_up(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.bench_iscsi_cor', '--sizes-mib', '8,16',
         '--rounds', '1', '--copy-rounds', '1', '--run-dir', str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, f'{out}\n{proc.stderr}'
    verdict = r'(MET|MISSED)'
    for size in ('8 MiB', '16 MiB'):
        assert re.search(rf'readable disk +{size}: whole fetch / bare qemu-img create '
                         rf'-u = [\d.]+ \[<= 2\] {verdict}; handler decide\+act / bare '
                         rf'create -u = [\d.]+ \[<= 2\] {verdict}', out), (size, out)
        for name in ('verified fill', 'fill with verdict'):
            assert re.search(rf'fill +{size}: {name} / qemu-img convert -> qcow2 = '
                             rf'[\d.]+ \[>= 0.9\] {verdict}', out), (size, name, out)
    assert re.search(rf'flatness, t\(16 MiB\) / t\(8 MiB\) .*whole fetch [\d.]+ '
                     rf'{verdict}; handler [\d.]+ {verdict}', out), out
    assert 'first and second touch' in out and 'where a verified fill' in out, out
    assert 'every disk, job, image, export and file created was removed' in out, out
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
