"""The lab's shared file systems (tools/lab/loopfs.py, gluster.py) and Glance on them.

The kernel's own answers, which the shared_fs handler relies on: FICLONE shares extents
on XFS and btrfs and fails with EOPNOTSUPP on ext4 and on the Gluster FUSE mount; hard
links work on all four; an upload to each Glance file store lands on that mount with
location metadata {id, mountpoint}; stop() (and ``stop all``) leaves no mount, no loop
device, no process and nothing in glusterd's fixed system paths.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.functional.conftest import FS_IDS, GLANCE_FS_DATADIR, image_bytes
from tools.lab import GlusterService, LoopFsService, read_fs_marker
from tools.lab.loopfs import FS_MARKER
from tools.lab.mounts import loop_backing_file, mount_of
from tools.lab.service import REPO_ROOT, stop_leftovers

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
MiB = 1 << 20
FS_NAMES = ('xfs', 'btrfs', 'ext4', 'gluster')
FS_TYPES = {'xfs': 'xfs', 'btrfs': 'btrfs', 'ext4': 'ext4', 'gluster': 'fuse.glusterfs'}
# glusterd's paths outside its work dir (tools/lab/gluster.py): compared before/after.
GLUSTER_SYSTEM_DIRS = ('/var/lib/glusterd', '/var/run/gluster', '/var/log/glusterfs')


@pytest.fixture(params=FS_NAMES)
def fs(request):
    """(name, started service) for each lab file system."""
    return request.param, request.getfixturevalue(f'{request.param}_lab')


def _mountinfo_under(path: Path) -> list[str]:
    """Lines of /proc/self/mountinfo whose mount point is path or below it."""
    root = os.path.realpath(path)
    lines = Path('/proc/self/mountinfo').read_text().splitlines()
    return [ln for ln in lines
            if ln.split()[4] == root or ln.split()[4].startswith(root + '/')]


def _loops_of(backing: Path) -> str:
    return subprocess.run(['losetup', '-j', str(backing)], capture_output=True,
                          text=True, check=True).stdout.strip()


def _procs_naming(path: Path) -> list[str]:
    """Live processes whose command line names path (zombies have none)."""
    found = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
            except OSError:
                continue
            if str(path) in cmd:
                found.append(f'{entry.name} {cmd}')
    return found


def _system_dirs() -> dict[str, list[str]]:
    return {d: sorted(os.listdir(d)) if os.path.isdir(d) else [] for d in GLUSTER_SYSTEM_DIRS}


def _ficlone(src: Path, dst: Path) -> int:
    """FICLONE dst from src; 0 on success, else the errno."""
    with open(src, 'rb') as s, open(dst, 'wb') as d:
        try:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        except OSError as exc:
            return exc.errno
    return 0


def _shared_extents(path: Path) -> bool:
    """filefrag (FIEMAP) reports shared extents: a reflink, not a copy."""
    out = subprocess.run(['filefrag', '-v', str(path)], capture_output=True, text=True,
                         check=True).stdout
    return 'shared' in out


def test_mounted_as_declared_with_marker(fs):
    name, svc = fs
    found = mount_of(svc.mountpoint)
    assert found is not None and found[0] == FS_TYPES[name], found
    if name == 'gluster':
        assert found[1] == f'{svc.host}:/{svc.volume}' and svc.host not in (
            '127.0.0.1', 'localhost')
    else:
        assert found[1] == svc.device
        assert loop_backing_file(svc.device) == str(svc.backing_file)
        assert svc.backing_file.stat().st_blocks * 512 < svc.size_mib * MiB  # sparse
    assert (svc.mountpoint / FS_MARKER).read_bytes() == f'{FS_IDS[name]}\n'.encode()
    assert read_fs_marker(svc.mountpoint) == FS_IDS[name]
    assert svc.is_running() and svc.is_healthy()


def test_xfs_has_reflink(xfs_lab):
    info = subprocess.run(['xfs_info', str(xfs_lab.mountpoint)], capture_output=True,
                          text=True, check=True).stdout
    assert 'reflink=1' in info


def test_ficlone(fs):
    name, svc = fs
    d = svc.mountpoint / f't-{uuid.uuid4().hex[:8]}'
    d.mkdir()
    src, dst = d / 'src', d / 'dst'
    data = image_bytes(4 * MiB, seed=7)
    src.write_bytes(data)
    os.sync()
    rc = _ficlone(src, dst)
    if name in ('xfs', 'btrfs'):
        assert rc == 0, os.strerror(rc)
        assert dst.read_bytes() == data
        assert _shared_extents(dst) and _shared_extents(src)
        with open(dst, 'r+b') as f:  # copy on write: the source keeps its bytes
            f.write(b'\xff' * 4096)
        assert src.read_bytes() == data
    else:
        # measured: ext4 and the Gluster FUSE mount both answer EOPNOTSUPP (95)
        assert rc == errno.EOPNOTSUPP, (rc, os.strerror(rc) if rc else 'cloned')
        assert dst.stat().st_size == 0


def test_hardlink(fs):
    _, svc = fs
    d = svc.mountpoint / f't-{uuid.uuid4().hex[:8]}'
    d.mkdir()
    src, link = d / 'src', d / 'link'
    src.write_bytes(b'image bytes')
    os.link(src, link)
    assert os.path.samefile(src, link)
    assert src.stat().st_nlink == 2
    assert link.read_bytes() == b'image bytes'


def test_upload_lands_on_its_mount(fs, glance_fs_lab, glance_fs):
    name, svc = fs
    data = image_bytes(3 * MiB, seed=11)
    img = glance_fs.images.create(name=f'test-{uuid.uuid4().hex[:8]}', disk_format='raw',
                                  container_format='bare')
    try:
        glance_fs.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                backend=name)
        rec = glance_fs.images.get(img['id'])
        path = svc.mountpoint / GLANCE_FS_DATADIR / img['id']
        url = f'file://{path}'
        meta = {'id': FS_IDS[name], 'mountpoint': str(svc.mountpoint), 'store': name}
        assert rec['status'] == 'active' and rec['stores'] == name
        assert rec['direct_url'] == url
        # show_multiple_locations: the record carries the metadata ...
        assert rec['locations'] == [{'url': url, 'metadata': meta}]
        # ... and so does the locations API (service role; lab-admin has it)
        assert list(glance_fs.images.get_image_locations(img['id'])) == [
            {'url': url, 'metadata': meta}]
        assert path.stat().st_dev == os.stat(svc.mountpoint).st_dev  # on the mount
        assert hashlib.sha512(path.read_bytes()).hexdigest() == rec['os_hash_value']
        assert glance_fs_lab.file_store_dir(name) == path.parent
    finally:
        glance_fs.images.delete(img['id'])
    assert not path.exists()


@pytest.mark.parametrize('fs_type', ['xfs', 'btrfs', 'ext4'])
def test_loopfs_stop_leaves_nothing(fs_type):
    svc = LoopFsService(fs_type, name=f'test-loopfs-{fs_type}')
    svc.stop()  # leftovers of an interrupted run
    svc.start()
    workdir, backing, device = svc.workdir, svc.backing_file, svc.device
    assert device and _mountinfo_under(workdir) and _loops_of(backing)
    assert not svc.reused and LoopFsService(fs_type, name=svc.name).start().reused
    (svc.mountpoint / 'f').write_bytes(b'x' * MiB)
    svc.stop()
    assert _mountinfo_under(workdir) == []
    assert not workdir.exists() and loop_backing_file(device) != str(backing)
    assert not svc.is_running()


def test_loopfs_stop_while_busy_is_lazy_and_frees_the_device_later():
    svc = LoopFsService('ext4', name='test-loopfs-busy', size_mib=64)
    svc.stop()
    svc.start()
    workdir, backing, device = svc.workdir, str(svc.backing_file), svc.device
    holder = open(svc.mountpoint / 'held', 'wb')  # keeps the file system busy
    try:
        svc.stop()
        assert _mountinfo_under(workdir) == [] and not workdir.exists()
        assert loop_backing_file(device) == backing  # autoclear: freed on last close
    finally:
        holder.close()
    for _ in range(100):  # the kernel frees it asynchronously once the fs is unused
        if loop_backing_file(device) != backing:
            break
        time.sleep(0.05)
    assert loop_backing_file(device) != backing


def test_stop_all_frees_a_leftover_mount_with_no_state(tmp_path):
    """``python -m tools.lab stop all`` (plain python3: stdlib only) in a run dir holding
    a mounted loop fs whose state.json is lost (a start that crashed before saving)."""
    run_dir = tmp_path / 'run'
    svc = LoopFsService('btrfs', name='crashed', run_dir=run_dir, size_mib=256).start()
    workdir, backing, device = svc.workdir, str(svc.backing_file), svc.device
    svc.state_file.unlink()
    proc = subprocess.run(['/usr/bin/python3', '-m', 'tools.lab', 'stop', 'all'],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, 'IH_LAB_RUN_DIR': str(run_dir)})
    assert proc.returncode == 0, proc.stderr
    assert 'crashed: killed leftover' in proc.stdout
    assert _mountinfo_under(workdir) == [] and loop_backing_file(device) != backing
    assert not run_dir.exists()


@pytest.mark.own_gluster
def test_gluster_stop_leaves_nothing():
    before = _system_dirs()
    svc = GlusterService(name='test-gluster')
    svc.stop()
    svc.start()
    workdir = svc.workdir
    procs = _procs_naming(workdir)
    kinds = {p.split()[1].rsplit('/', 1)[-1] for p in procs}
    assert {'glusterd', 'glusterfsd', 'glusterfs'} <= kinds, procs  # daemon, brick, FUSE
    assert mount_of(svc.mountpoint)[0] == 'fuse.glusterfs'
    (svc.mountpoint / 'f').write_bytes(b'on the brick')
    assert (svc.brick_dir / 'f').read_bytes() == b'on the brick'
    svc.stop()
    assert _procs_naming(workdir) == []
    assert _mountinfo_under(workdir) == [] and not workdir.exists()
    assert _system_dirs() == before


@pytest.mark.own_gluster
def test_gluster_leftover_freed_by_stop_leftovers(tmp_path):
    """The generic path of ``stop all``: a gluster started by a CLI that has exited,
    known only by its pid file and state.json (no volume stop, no GlusterService)."""
    before = _system_dirs()
    run_dir = tmp_path / 'run'
    started = subprocess.run(['/usr/bin/python3', '-m', 'tools.lab', 'start', 'gluster'],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, 'IH_LAB_RUN_DIR': str(run_dir)})
    assert started.returncode == 0, started.stderr
    workdir = GlusterService(run_dir=run_dir).workdir
    assert len(_procs_naming(workdir)) >= 3
    assert stop_leftovers(run_dir) == ['gluster']
    assert _procs_naming(workdir) == []
    assert _mountinfo_under(workdir) == [] and not workdir.exists()
    assert _system_dirs() == before


def test_lab_is_stdlib_only():
    """tools/lab is imported by plain python3 too (the CLI, run-tests.sh's cleanup)."""
    code = ('import sys; import tools.lab, tools.lab.loopfs, tools.lab.gluster, '
            'tools.lab.mounts; bad = [m for m in sys.modules if m.split(".")[0] in '
            '("glanceclient", "keystoneauth1", "pytest")]; print(bad)')
    out = subprocess.run(['/usr/bin/python3', '-c', code], cwd=REPO_ROOT, text=True,
                         capture_output=True, check=True).stdout.strip()
    assert out == '[]'
