"""Real file systems on loop devices for the shared_fs tests (root, like CI).

The lab's LoopFsService (tools/lab/loopfs.py) makes XFS with reflink, btrfs and
ext4. ``LocalLoopFs`` makes only the XFS *without* reflink: LoopFsService puts
``mkfs_args`` after its own ``-m reflink=1``, and mkfs.xfs refuses a respecified
option. Set IH_LAB_RUN_DIR to keep these apart from another run's.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tools.lab.loopfs import LoopFsService, write_fs_marker
from tools.lab.service import RUN_DIR

MiB = 1 << 20


class LocalLoopFs:
    """LoopFsService's interface, for what it cannot make: ``fs_type`` with
    ``mkfs_args`` instead of the defaults, on a sparse file on a loop device."""

    def __init__(self, fs_type: str, *, size_mib: int = 320, name: str | None = None,
                 run_dir: Path | None = None, mkfs_args: tuple[str, ...] = ()) -> None:
        self.fs_type = fs_type
        self.size_mib = size_mib
        self.name = name or f'loopfs-{fs_type}'
        self.workdir = Path(run_dir or RUN_DIR) / self.name
        self.image = self.workdir / 'fs.img'
        self.mountpoint = self.workdir / 'mnt'
        self.mkfs_args = mkfs_args
        self.device: str | None = None

    def start(self) -> 'LocalLoopFs':
        self.stop()
        self.mountpoint.mkdir(parents=True)
        with open(self.image, 'wb') as f:
            f.truncate(self.size_mib * MiB)
        mkfs = {'xfs': ['mkfs.xfs', '-q', '-f'], 'btrfs': ['mkfs.btrfs', '-q', '-f'],
                'ext4': ['mkfs.ext4', '-q', '-F']}[self.fs_type]
        mkfs += self.mkfs_args or (('-m', 'reflink=1') if self.fs_type == 'xfs' else ())
        _run(*mkfs, str(self.image))
        self.device = _run('losetup', '--find', '--show', str(self.image)).strip()
        _run('mount', '-t', self.fs_type, self.device, str(self.mountpoint))
        return self

    def stop(self) -> None:
        if self.mountpoint.is_dir() and os.path.ismount(self.mountpoint):
            subprocess.run(['umount', '-l', str(self.mountpoint)], check=False)
        if self.device:
            subprocess.run(['losetup', '-d', self.device], check=False)
            self.device = None
        else:
            for line in _run('losetup', '-j', str(self.image)).splitlines():
                subprocess.run(['losetup', '-d', line.split(':')[0]], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f'{" ".join(argv)} failed (the suite runs as root with loop '
                    f'devices, xfsprogs, btrfs-progs): {proc.stderr.strip()}')
    return proc.stdout


def _start(fs_type: str, name: str, size_mib: int = 320,
           mkfs_args: tuple[str, ...] = ()):
    cls = LocalLoopFs if mkfs_args else LoopFsService
    service = cls(fs_type, size_mib=size_mib, name=name, mkfs_args=mkfs_args)
    service.start()
    return service


@pytest.fixture(scope='session')
def xfs():
    service = _start('xfs', 'sfs-xfs')
    yield Path(service.mountpoint)
    service.stop()


@pytest.fixture(scope='session')
def xfs_noreflink():
    """An XFS formatted without reflink."""
    service = _start('xfs', 'sfs-xfs-noreflink', mkfs_args=('-m', 'reflink=0'))
    yield Path(service.mountpoint)
    service.stop()


@pytest.fixture(scope='session')
def btrfs():
    service = _start('btrfs', 'sfs-btrfs', size_mib=256)
    yield Path(service.mountpoint)
    service.stop()


@pytest.fixture(scope='session')
def ext4():
    service = _start('ext4', 'sfs-ext4', size_mib=64)
    yield Path(service.mountpoint)
    service.stop()


@pytest.fixture
def fs_dir(request):
    """A fresh directory on a session file system: ``fs_dir('xfs')``."""
    made: list[Path] = []

    def make(fs_type: str) -> Path:
        root = request.getfixturevalue(fs_type)
        d = Path(root, f't-{uuid.uuid4().hex[:8]}')
        d.mkdir()
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def write_marker():
    return write_fs_marker


@pytest.fixture
def tmp_mounts():
    """Mount a tmpfs on a directory (e.g. inside a loop fs); unmounted at teardown."""
    mounted: list[str] = []

    def mount(path: Path | str, options: str = 'size=4m') -> Path:
        os.makedirs(path, exist_ok=True)
        _run('mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path))
        mounted.append(str(path))
        return Path(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(['umount', '-l', path], check=False)
