"""The compressed-copy benchmark runs to the end at a tiny size and cleans up.

Only that it completes, prints its lines, and that the byte counts (not the
timings) meet their goals is checked: timings on a shared machine prove nothing
in a test (bench/bench_compressed.py measures them).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(
    not shutil.which('mkfs.ext4') or not os.path.exists('/usr/sbin/nginx'),
    reason='the benchmark builds an ext4 image (e2fsprogs) and serves it with the '
           'lab nginx (tools/install-deps.sh installs both)')


def test_bench_compressed_runs_at_a_tiny_size_and_cleans_up(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.bench_compressed', '--size-mib', '32',
         '--rounds', '1', '--no-warmup', '--frame-mib', '1', '--no-frame-table',
         '--run-dir', str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, f'{out}\n{proc.stderr}'
    assert re.search(r'32 MiB raw ext4 holding \d+ MiB of real files', out), out
    for codec in ('zstd', 'gzip'):
        # Bytes are exact, unlike times: the copy fetched the compressed file once.
        assert re.search(rf'{codec} / plain: throughput [\d.]+.*bytes sent (\d+) = '
                         rf'compressed size \1: MET', out), out
    assert re.search(r'resume after a cut at 50 % .* \[<= one frame\] MET', out), out
    assert 'every file created was removed; nginx stopped' in out, out
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
