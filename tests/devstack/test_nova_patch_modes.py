"""tools/nova-patch.sh's modes the DevStack plugin relies on (applied, revert,
apply again) on real Nova 34 files: a copy of the patched files of
.lab/venv-nova put first on that venv's path, so the real ``patch`` edits the
copy and the shared venv is never touched."""
from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
NOVA_VENV = TOP / '.lab' / 'venv-nova'
TOOL = TOP / 'tools' / 'nova-patch.sh'


def _patched_files() -> list[str]:
    names = set()
    for patch in (TOP / 'nova_patches').glob('nova-*/*.patch'):
        for line in patch.read_text().splitlines():
            if line.startswith('+++ b/'):
                names.add(line[len('+++ b/'):].strip())
    return sorted(names)


@pytest.fixture
def nova_copy(tmp_path):
    """(python wrapper, site dir of the copy) for a copy of the patched Nova files."""
    site_packages = next(NOVA_VENV.glob('lib/python3*/site-packages'), None)
    if site_packages is None or not (site_packages / 'nova').is_dir():
        pytest.fail(f'{NOVA_VENV} has no Nova: run tools/install-deps.sh')
    site = tmp_path / 'site'
    for rel in ['nova/__init__.py', 'nova/version.py', *_patched_files()]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(site_packages / rel, site / rel)
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {NOVA_VENV}/bin/python "$@"\n')
    python.chmod(0o755)
    return str(python), site, site_packages


def _tool(mode: str, python: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOL), mode, python], capture_output=True, text=True,
                          timeout=120)


def test_applied_revert_and_apply_again(nova_copy):
    python, site, installed = nova_copy
    files = _patched_files()
    assert _tool('applied', python).returncode == 0     # .lab/venv-nova is patched
    assert _tool('check', python).returncode == 1       # so they do not apply again

    reverted = _tool('revert', python)
    assert reverted.returncode == 0, reverted.stderr
    assert 'reverted 0001-' in reverted.stdout and str(site) in reverted.stdout
    assert not any(filecmp.cmp(site / f, installed / f, shallow=False) for f in files)
    assert _tool('applied', python).returncode == 1
    again = _tool('revert', python)
    assert again.returncode == 1 and 'nothing was reverted' in again.stderr

    assert _tool('check', python).returncode == 0
    assert _tool('apply', python).returncode == 0
    assert all(filecmp.cmp(site / f, installed / f, shallow=False) for f in files)
    assert _tool('applied', python).returncode == 0


def test_unknown_mode_refused(nova_copy):
    proc = _tool('undo', nova_copy[0])
    assert proc.returncode == 2 and "unknown mode 'undo'" in proc.stderr
