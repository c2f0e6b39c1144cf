"""The shared_fs benchmark runs to the end at a tiny size and cleans up after itself.

Only that it completes and prints its ratio lines is checked: timings on a shared
machine prove nothing in a test (bench/bench_shared_fs.py measures them).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which('losetup') or not shutil.which('qemu-img'),
    reason='the benchmark mounts an XFS on a loop device (root, losetup, qemu-img)')


def test_bench_shared_fs_runs_at_a_tiny_size_and_cleans_up(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.bench_shared_fs', '--sizes-mib', '8,16',
         '--rounds', '1', '--verify-rounds', '1', '--copy-rounds', '1',
         '--run-dir', str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, f'{out}\n{proc.stderr}'
    for method, bare in (('reflink', 'bare FICLONE'), ('hardlink', 'bare link(2)'),
                         ('overlay', 'bare qemu-img create')):
        for size in ('8 MiB', '16 MiB'):
            assert any(line.lstrip().startswith(method) and size in line
                       and f'handler decide+act / {bare} =' in line
                       and 'whole fetch / bare =' in line
                       for line in out.splitlines()), (method, size, out)
    assert 'flatness, t(16 MiB) / t(8 MiB)' in out, out
    assert 'first verification' in out and 'full stream_copy' in out, out
    assert 'every disk, pin, image and file created was removed' in out, out
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
