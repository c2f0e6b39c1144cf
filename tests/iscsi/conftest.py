"""The lab's iSCSI target (tools/lab/tgt.py) for the iscsi_cor tests.

``tgt_lab`` is the session's TgtService (name ``tgt``; IH_LAB_RUN_DIR keeps it apart
from another run's); tests that kill, restart or stop a target get their own instance
from ``own_tgt``. ``raw_image`` writes a raw file of random bytes (with a zero hole, so
sparse reads are exercised too); ``exported`` exports a file on the session target and
unexports it at teardown; ``nbd_reader`` reads a LUN through qemu-nbd with libnbd.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tools.lab.tgt import Export, TgtService

MiB = 1 << 20


@pytest.fixture(scope='session')
def tgt_lab():
    service = TgtService().start()
    yield service
    service.stop()


@pytest.fixture
def own_tgt():
    """``own_tgt()`` -> a started TgtService of its own (name tgt-<random>)."""
    made: list[TgtService] = []

    def make() -> TgtService:
        service = TgtService(f'tgt-{uuid.uuid4().hex[:8]}')
        made.append(service)
        return service.start()

    yield make
    for service in made:
        service.stop()


def write_image(path: Path, size: int, hole: tuple[int, int] | None = None) -> Path:
    """Random bytes, except a zero hole [start, end) left unwritten (sparse)."""
    with open(path, 'wb') as f:
        f.truncate(size)
        off = 0
        while off < size:
            n = min(8 * MiB, size - off)
            if hole and hole[0] <= off < hole[1]:
                off = hole[1]
                continue
            if hole and off < hole[0] < off + n:
                n = hole[0] - off
            f.seek(off)
            f.write(os.urandom(n))
            off += n
    return path


@pytest.fixture
def raw_image(tmp_path):
    """``raw_image(size=16 MiB, hole=(4 MiB, 6 MiB))`` -> path of a fresh raw file."""
    count = iter(range(1000))

    def make(size: int = 16 * MiB, hole: tuple[int, int] | None = (4 * MiB, 6 * MiB)):
        return write_image(tmp_path / f'image-{next(count)}.raw', size, hole)

    return make


@pytest.fixture
def exported(tgt_lab):
    """``exported(path, **export_kwargs)`` -> Export on the session target, with a
    unique name; unexported at teardown if still there."""
    names: list[str] = []

    def make(path: Path, **kwargs) -> Export:
        name = f't-{uuid.uuid4().hex[:10]}'
        names.append(name)
        return tgt_lab.export(name, path, **kwargs)

    yield make
    for name in names:
        if name in tgt_lab.exports():
            tgt_lab.unexport(name)


def qemu_nbd_children() -> set[int]:
    """Live qemu-nbd processes that are children of this process (libnbd forks them)."""
    found = set()
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
            argv0 = (entry / 'cmdline').read_bytes().split(b'\0')[0]
        except OSError:
            continue
        fields = stat[stat.rindex(')') + 2:].split()
        if fields[0] != 'Z' and int(fields[1]) == os.getpid() and \
                argv0.endswith(b'qemu-nbd'):
            found.add(int(entry.name))
    return found


@pytest.fixture
def nbd_reader():
    """``nbd_reader(*qemu_nbd_args)`` -> a libnbd handle on a qemu-nbd it started by
    systemd socket activation (a private socketpair: no port, no path). qemu-nbd is
    ``qemu-nbd -r <args>``; its pid is in ``qemu_nbd_pids[id(h)]``. It exits when the
    handle is shut down at teardown; a qemu-nbd stuck on a target that never came back
    ignores SIGTERM and is SIGKILLed."""
    nbd = pytest.importorskip('nbd')
    handles = []

    def make(*args: str):
        before = qemu_nbd_children()
        h = nbd.NBD()
        h.connect_systemd_socket_activation(['qemu-nbd', '-r', *args])
        pids = qemu_nbd_children() - before
        handles.append((h, pids))
        qemu_nbd_pids[id(h)] = pids
        return h

    yield make
    for h, pids in handles:
        # shutdown() waits for the handle's lock, which a pread stuck on a dead
        # target holds forever: bounded, then qemu-nbd is killed (the pread fails).
        closer = threading.Thread(target=_shutdown_quietly, args=(h,), daemon=True)
        closer.start()
        closer.join(5)
        if closer.is_alive():
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            closer.join(5)
        for pid in pids:
            _reap(pid)
        qemu_nbd_pids.pop(id(h), None)


qemu_nbd_pids: dict[int, set[int]] = {}  # id(handle) -> qemu-nbd pid(s), for tests


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Wait (bounded) for a child to exit after its disconnect, else SIGKILL it."""
    deadline = time.monotonic() + timeout
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.02)
    except ChildProcessError:  # libnbd reaped it
        pass


def _shutdown_quietly(h) -> None:
    try:
        h.shutdown()
    except Exception:  # already gone (the test shut it down, or qemu-nbd died)
        pass


def run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command (bounded); with check, fail the test with its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    if check and proc.returncode != 0:
        pytest.fail(f'{" ".join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}')
    return proc
