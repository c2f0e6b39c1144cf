"""Fixtures for the lab's hypervisor: a private libvirtd (tools/lab/libvirt.py) and
the lab's TCG guest (tools/lab/guest.py), real, as root.

The libvirt service starts once per session in the lab run dir (IH_LAB_RUN_DIR keeps
runs apart) and stops at the end; every domain a test starts is destroyed after it.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import uuid
from pathlib import Path

import libvirt
import pytest

from tools.lab.guest import Guest
from tools.lab.libvirt import LibvirtService

MiB = 1 << 20


def disk_bytes(size: int, seed: int = 1) -> bytes:
    """Deterministic, never-zero test data (no cluster is all zeros)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha512(f'{seed}:{i}'.encode()).digest() * 1024  # 64 KiB
        i += 1
    return bytes(out[:size])


def qemu_img(*args: str) -> str:
    return subprocess.run(['qemu-img', *args], check=True, capture_output=True,
                          text=True).stdout


def image_info(path: Path) -> dict:
    """qemu-img info -U (shared lock: works while qemu holds the image)."""
    return json.loads(qemu_img('info', '-U', '--output=json', str(path)))


def own_data_ranges(path: Path) -> list[tuple[int, int]]:
    """(start, end) of the ranges whose data the image itself holds (depth 0)."""
    extents = json.loads(qemu_img('map', '-U', '--output=json', str(path)))
    return [(e['start'], e['start'] + e['length']) for e in extents
            if e['depth'] == 0 and e['data']]


def covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """True when the ranges cover [start, end) with no gap."""
    pos = start
    for a, b in sorted(ranges):
        if a > pos:
            break
        pos = max(pos, b)
    return pos >= end


@pytest.fixture(scope='session')
def libvirt_events():
    """libvirt's default event loop in a daemon thread (domain events need it, and
    it must be registered before the connection is opened)."""
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name='libvirt-events', daemon=True).start()


@pytest.fixture(scope='session')
def virt_lab():
    svc = LibvirtService().start()
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def virt_conn(virt_lab, libvirt_events):
    conn = virt_lab.connect()
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


@pytest.fixture(scope='session')
def guest():
    return Guest().build()


@pytest.fixture
def boot(virt_lab, virt_conn):
    """boot(xml) -> a running transient domain, destroyed after the test."""
    started = []

    def start(xml: str):
        dom = virt_lab.create_domain(xml, virt_conn)
        started.append(dom)
        return dom

    yield start
    for dom in started:
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass  # powered off: a transient domain is gone


@pytest.fixture
def vm_name(request):
    return f'ih-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}'.replace('[', '-').replace(']', '')


class LocalTgt:
    """A bare tgtd for the iSCSI-backed boot (a stand-in until tools/lab/tgt.py is
    committed): its own portal port and control port (the management socket is
    /run/tgtd/socket.N), read-only LUN 1 per target, optional CHAP. stop() deletes
    the system (tgtd exits), kills it if it does not, removes its socket files."""

    IPC_DIR = Path('/run/tgtd')

    def __init__(self, workdir: Path) -> None:
        from tools.lab.service import free_port
        self.workdir = workdir
        self.port = free_port()
        self.control = next(n for n in range(23000, 24000)
                            if not (self.IPC_DIR / f'socket.{n}').exists()
                            and not (self.IPC_DIR / f'socket.{n}.lock').exists())
        self.proc: subprocess.Popen | None = None
        self.tids = 0

    def start(self) -> 'LocalTgt':
        import time

        from tools.lab.service import port_open
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / 'tgtd.log', 'ab')
        self.proc = subprocess.Popen(
            ['/usr/sbin/tgtd', '-f', '-C', str(self.control),
             '--iscsi', f'portal=127.0.0.1:{self.port}'],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while not port_open('127.0.0.1', self.port):
            assert self.proc.poll() is None, (self.workdir / 'tgtd.log').read_text()
            assert time.monotonic() < deadline, 'tgtd did not listen'
            time.sleep(0.05)
        return self

    def adm(self, *args: str) -> str:
        return subprocess.run(['/usr/sbin/tgtadm', '-C', str(self.control), '--lld', 'iscsi',
                               *args], check=True, capture_output=True, text=True).stdout

    def export(self, name: str, path: Path, chap: tuple[str, str] | None = None) -> str:
        """Export path read-only as LUN 1 of a new target; its iscsi:// URL."""
        self.tids += 1
        tid, iqn = str(self.tids), f'iqn.2026-12.lab.virt-tests:{name}'
        self.adm('--op', 'new', '--mode', 'target', '--tid', tid, '-T', iqn)
        self.adm('--op', 'new', '--mode', 'logicalunit', '--tid', tid, '--lun', '1',
                 '-b', str(path))
        self.adm('--op', 'update', '--mode', 'logicalunit', '--tid', tid, '--lun', '1',
                 '--params', 'readonly=1')
        self.adm('--op', 'bind', '--mode', 'target', '--tid', tid, '-I', '127.0.0.1')
        if chap:
            self.adm('--op', 'new', '--mode', 'account', '--user', chap[0],
                     '--password', chap[1])
            self.adm('--op', 'bind', '--mode', 'account', '--tid', tid, '--user', chap[0])
        return f'iscsi://127.0.0.1:{self.port}/{iqn}/1'

    def stop(self) -> None:
        if self.proc is not None:
            try:  # tgtd exits on "delete system" only once no target is left
                for tid in range(1, self.tids + 1):
                    self.adm('--op', 'delete', '--mode', 'target', '--tid', str(tid),
                             '--force')
                self.adm('--op', 'delete', '--mode', 'system')
            except subprocess.CalledProcessError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for suffix in ('', '.lock'):
            (self.IPC_DIR / f'socket.{self.control}{suffix}').unlink(missing_ok=True)


@pytest.fixture(scope='session')
def iscsi_target(tmp_path_factory):
    tgt = LocalTgt(tmp_path_factory.mktemp('tgt')).start()
    yield tgt
    tgt.stop()
