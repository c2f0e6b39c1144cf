"""The signature benchmark runs to the end at a tiny size and cleans up after itself.

Only that it completes and prints its goal lines is checked: timings on a shared
machine prove nothing in a test (bench/bench_signatures.py measures them).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason='the benchmark runs the lab\'s Ceph, Keystone, Barbican and Glance (root)')


def test_bench_signatures_runs_at_a_tiny_size_and_cleans_up(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.bench_signatures', '--size-mib', '8',
         '--rounds', '1', '--run-dir', str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, f'{out}\n{proc.stderr}'
    verdict = r'(MET|MISSED)'
    assert re.search(r'environment: \d+ CPUs, hashlib sha512 \d+ MiB/s', out), out
    assert re.search(rf'verified copy 8 MiB: signed / unsigned throughput = [\d.]+ '
                     rf'\[>= 0.9\] {verdict} \(\d+ / \d+ MiB/s', out), out
    assert re.search(rf'signed clone 8 MiB: repeated / unsigned = [\d.]+ \[<= 1.2\] '
                     rf'{verdict}', out), out
    assert re.search(r'signed clone 8 MiB: first / unsigned = [\d.]+ \(reads the '
                     r'snapshot once: \d+ MiB/s', out), out
    assert re.search(r'repeated signed clone: chain.request [\d.]+ ms .*certificate '
                     r'from Barbican [\d.]+.* rbd_clone decide\+act [\d.]+ ms', out), out
    assert 'every clone, image and file created was removed; lab stopped' in out, out
    # Every service ran under the run dir and is gone with its work dir.
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    assert _processes_under(str(tmp_path)) == []


def _processes_under(path: str) -> list[str]:
    """Processes whose command line or working directory names ``path``."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(errors='replace')
            cwd = os.readlink(f'/proc/{pid}/cwd')
        except OSError:
            continue        # gone meanwhile, or a kernel thread
        if path in cmdline or cwd.startswith(path):
            found.append(f'{pid}: {cmdline.strip()[:200]}')
    return found
