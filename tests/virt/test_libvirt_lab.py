"""The lab's libvirtd itself: private to its work dir, and stop() leaves nothing."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.virt.conftest import MiB, disk_bytes
from tools.lab import mounts
from tools.lab.libvirt import PRIVATE_DIRS, LibvirtService
from tools.lab.service import _start_time, alive


def exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f'/proc/{pid}/exe'))
    except OSError:
        return ''


def test_libvirtd_is_private(virt_lab, virt_conn):
    pid = virt_lab.pid()
    assert pid and exe_name(pid) == 'libvirtd'
    assert os.readlink(f'/proc/{pid}/ns/mnt') != os.readlink('/proc/self/ns/mnt')
    assert virt_conn.getType() == 'QEMU'
    assert str(virt_lab.socket_path).startswith(str(virt_lab.workdir) + '/')
    # libvirtd sees the work dir's config at the fixed paths; the machine does not.
    root = Path(f'/proc/{pid}/root')
    ours = (virt_lab.private_dir('etc') / 'qemu.conf').read_text()
    assert (root / 'etc/libvirt/qemu.conf').read_text() == ours
    assert 'dynamic_ownership = 0' in ours
    host_conf = Path('/etc/libvirt/qemu.conf')
    assert not host_conf.exists() or host_conf.read_text() != ours
    for key, target in PRIVATE_DIRS.items():
        assert os.path.samefile(root / target.lstrip('/'), virt_lab.private_dir(key))
        assert not os.path.samefile(target, virt_lab.private_dir(key))
    # The namespace's bind mounts never show in the machine's mount table.
    table = Path('/proc/self/mountinfo').read_text()
    assert str(virt_lab.workdir) not in table
    assert mounts.mounts_under(virt_lab.workdir) == []
    # What libvirtd writes (logs, state) lands in the work dir.
    assert (virt_lab.private_dir('log') / 'libvirtd.log').stat().st_size > 0
    assert (virt_lab.private_dir('run') / 'virtlogd-sock').is_socket()


@pytest.mark.parametrize('libvirtd_dies_first', [False, True],
                         ids=['libvirtd-running', 'libvirtd-killed'])
def test_stop_leaves_no_qemu_libvirtd_or_virtlogd(tmp_path, guest, libvirtd_dies_first):
    svc = LibvirtService(name='libvirt-stoptest').start()
    try:
        disk = tmp_path / 'disk.raw'
        disk.write_bytes(disk_bytes(1 * MiB))
        dom = svc.create_domain(guest.domain_xml(
            'ih-stoptest', disk, 'raw', serial_log=tmp_path / 'serial.log',
            nbytes=MiB, hold=True))
        assert dom.isActive()
        pids = svc.namespace_pids()
        kinds = sorted(exe_name(p) for p in pids)
        assert kinds == ['libvirtd', 'qemu-system-x86_64', 'virtlogd'], kinds
        started = {p: _start_time(p) for p in pids}
        mnt_ns = svc.state['mnt_ns']
        if libvirtd_dies_first:  # a crashed libvirtd leaves its qemu behind
            os.kill(svc.pid(), signal.SIGKILL)
            deadline = time.monotonic() + 10
            while exe_name(svc.pid() or 0) == 'libvirtd' and time.monotonic() < deadline:
                time.sleep(0.05)
            assert 'qemu-system-x86_64' in [exe_name(p) for p in svc.namespace_pids()]
    finally:
        svc.stop()
    # Gone, or a zombie waiting for init to reap it (qemu and virtlogd are init's).
    assert [p for p, st in started.items() if _start_time(p) == st and alive(p)] == []
    left = [p for p in map(int, filter(str.isdigit, os.listdir('/proc')))
            if _ns(p) == mnt_ns and alive(p)]
    assert left == []
    assert not svc.workdir.exists()


def _ns(pid: int) -> str | None:
    try:
        return os.readlink(f'/proc/{pid}/ns/mnt')
    except OSError:
        return None
