"""The lab's iSCSI target, read the ways the iscsi_cor handler will read it.

Real tgtd (tools/lab/tgt.py), real qemu userspace initiator (libiscsi), real qemu-nbd
and libnbd. No timing is asserted; throughputs are printed (``pytest -s``).
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.iscsi.conftest import MiB, qemu_nbd_pids, run, write_image
from tools.lab.service import LOOPBACK, alive, port_open
from tools.lab.tgt import IPC_DIR, TgtService, lun_identity, parse_show


def qemu_map(path: Path) -> list[dict]:
    return json.loads(run('qemu-img', 'map', '--output=json', str(path)).stdout)


def raw_of_overlay_alone(overlay: Path, out: Path) -> None:
    """The overlay's own clusters only (backing: null): unallocated ones read zero."""
    spec = {'driver': 'qcow2', 'file': {'driver': 'file', 'filename': str(overlay)},
            'backing': None}
    run('qemu-img', 'convert', '-O', 'raw', 'json:' + json.dumps(spec), str(out))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(16 * MiB):
            h.update(chunk)
    return h.hexdigest()


def wait_for(cond, timeout: float = 15.0, what: str = 'condition'):
    """Poll cond() until truthy (bounded; a safety net, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f'{what}: not reached within {timeout} s')
        time.sleep(0.05)


def established(port: int) -> int:
    """TCP connections in ESTABLISHED state to or from port (IPv4, this netns)."""
    count = 0
    for line in Path('/proc/net/tcp').read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        ports = {int(local.split(':')[1], 16), int(remote.split(':')[1], 16)}
        if state == '01' and port in ports:
            count += 1
    return count


def tgtd_pids(control_port: int) -> list[int]:
    """Live tgtd processes started with our control port."""
    pids = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / 'cmdline').read_bytes().split(b'\0')
        except OSError:
            continue
        if argv and argv[0].endswith(b'tgtd') and b'-C' in argv and \
                argv[argv.index(b'-C') + 1:argv.index(b'-C') + 2] == [str(control_port).encode()]:
            if alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


# -- qemu's userspace initiator ----------------------------------------------------------

def test_qemu_img_info_reports_the_files_size(exported, raw_image):
    image = raw_image(size=24 * MiB)
    exp = exported(image)
    assert exp.url == f'iscsi://{exp.portal}/iqn.2026-12.lab.image-handlers:{exp.name}/1'
    assert exp.portal.startswith('127.0.0.1:') and exp.lun == 1
    assert exp.size == image.stat().st_size
    info = json.loads(run('qemu-img', 'info', '--output=json', exp.url).stdout)
    assert info['virtual-size'] == image.stat().st_size


def test_qemu_img_convert_reads_the_lun_byte_for_byte(exported, raw_image, tmp_path):
    image = raw_image()
    exp = exported(image)
    out = tmp_path / 'out.raw'
    run('qemu-img', 'convert', '-O', 'raw', exp.url, str(out))
    assert filecmp.cmp(out, image, shallow=False)


def test_qcow2_overlay_backed_by_the_lun_reads_back_the_image(exported, raw_image, tmp_path):
    image = raw_image()
    exp = exported(image)
    disk = tmp_path / 'disk.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', '-F', 'raw', '-b', exp.url, str(disk))
    assert all(e['depth'] == 1 for e in qemu_map(disk))  # all data still in the LUN
    out = tmp_path / 'out.raw'
    run('qemu-img', 'convert', '-O', 'raw', str(disk), str(out))
    assert filecmp.cmp(out, image, shallow=False)
    assert all(e['depth'] == 1 for e in qemu_map(disk))  # plain reads do not fill


def test_copy_on_read_fills_the_overlay_which_then_outlives_the_export(
        tgt_lab, exported, raw_image, tmp_path):
    size = 16 * MiB
    image = raw_image(size=size)
    exp = exported(image)
    disk = tmp_path / 'disk.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', '-F', 'raw', '-b', exp.url, str(disk))
    blocks0 = disk.stat().st_blocks

    run('qemu-io', '-C', '-c', f'read 0 {size // 2}', str(disk))  # first half only
    extents = qemu_map(disk)
    assert {e['depth'] for e in extents if e['start'] < size // 2} == {0}
    assert {e['depth'] for e in extents if e['start'] >= size // 2} == {1}
    blocks_half = disk.stat().st_blocks
    assert blocks_half > blocks0

    run('qemu-io', '-C', '-c', f'read {size // 2} {size // 2}', str(disk))
    assert {e['depth'] for e in qemu_map(disk)} == {0}
    assert disk.stat().st_blocks > blocks_half

    tgt_lab.unexport(exp.name)
    gone = run('qemu-img', 'info', exp.url, check=False)
    assert gone.returncode != 0  # the LUN is really gone...
    out = tmp_path / 'out.raw'
    raw_of_overlay_alone(disk, out)  # ...and the overlay alone holds the image
    assert filecmp.cmp(out, image, shallow=False)


def test_a_read_only_lun_refuses_writes_and_a_read_write_one_takes_them(
        tgt_lab, exported, raw_image):
    image = raw_image()
    before = sha256(image)
    ro = exported(image)
    proc = run('qemu-io', '-f', 'raw', '-c', 'write -P 0x55 0 4k', ro.url, check=False)
    assert proc.returncode != 0
    assert 'write protected' in proc.stdout + proc.stderr
    assert sha256(image) == before
    luns = parse_show(tgt_lab._adm('--op', 'show', '--mode', 'target'))[ro.tid]['luns']
    assert luns[1]['readonly'] is True

    rw_image = raw_image()
    rw = exported(rw_image, readonly=False)  # control: the same write goes through
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0x55 0 4k', rw.url)
    with open(rw_image, 'rb') as f:
        assert f.read(4096) == b'\x55' * 4096


def test_each_lun_has_a_stable_identity_an_initiator_can_read(exported, raw_image):
    image_id = str(uuid.uuid4())
    a = exported(raw_image(), serial=image_id)
    b = exported(raw_image())
    ident_a, ident_b = lun_identity(a.url), lun_identity(b.url)
    print(f'\niscsi-inq identity of {a.url}: {ident_a}')
    assert ident_a['serial'] == image_id == a.serial
    assert ident_a['t10_vendor_id'] == image_id == a.scsi_id
    assert ident_b['serial'] == b.serial and ident_b['serial'] != ident_a['serial']


# -- CHAP --------------------------------------------------------------------------------

def test_chap_right_secret_reads_wrong_or_no_secret_fails(exported, raw_image, tmp_path):
    image = raw_image()
    password = 'lab-' + uuid.uuid4().hex
    exp = exported(image, chap=('labuser1', password))
    assert Path(exp.secret_file).read_text() == password
    assert Path(exp.secret_file).stat().st_mode & 0o077 == 0

    out = tmp_path / 'out.raw'
    run('qemu-img', 'convert', '--object', exp.secret_object(), '--image-opts',
        exp.image_opts(), '-O', 'raw', str(out))
    assert filecmp.cmp(out, image, shallow=False)

    wrong = tmp_path / 'wrong.secret'
    wrong.write_text('lab-' + uuid.uuid4().hex)
    proc = run('qemu-img', 'info', '--object', f'secret,id=s0,file={wrong}',
               '--image-opts', exp.image_opts(), check=False)
    assert proc.returncode != 0
    assert 'Authentication failure' in proc.stderr, proc.stderr
    proc = run('qemu-img', 'info', exp.url, check=False)  # no credentials at all
    assert proc.returncode != 0
    assert 'Authentication failure' in proc.stderr, proc.stderr


def test_chap_password_is_not_on_the_qemu_command_line(tgt_lab, exported, raw_image,
                                                       tmp_path):
    nbd = pytest.importorskip('nbd')
    image = raw_image()
    password = 'lab-' + uuid.uuid4().hex
    exp = exported(image, chap=('labuser2', password))
    sock = tmp_path / 'nbd.sock'
    server = subprocess.Popen(
        ['qemu-nbd', '-r', '-k', str(sock), '--object', exp.secret_object(),
         '--image-opts', exp.image_opts()],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: sock.is_socket() or server.poll() is not None, what='qemu-nbd')
        assert server.poll() is None, server.stdout.read().decode()
        h = nbd.NBD()
        h.connect_unix(str(sock))
        with open(image, 'rb') as f:
            assert h.pread(MiB, 0) == f.read(MiB)  # logged in with the secret
        sessions = tgt_lab.sessions(exp.name)
        assert len(sessions) == 1
        assert sessions[0]['connections'][0]['address'] == LOOPBACK

        cmdline = Path(f'/proc/{server.pid}/cmdline').read_bytes()
        environ = Path(f'/proc/{server.pid}/environ').read_bytes()
        ps = run('ps', '-ww', '-o', 'args=', '-p', str(server.pid)).stdout
        assert exp.secret_file in ps  # we are looking at the right process
        for seen in (cmdline, environ, ps.encode()):
            assert password.encode() not in seen
        h.shutdown()
    finally:
        server.kill()
        server.wait()
    # detached: the target shows no session from this host any more
    wait_for(lambda: tgt_lab.sessions(exp.name) == [], what='session gone')


# -- Python reading through qemu-nbd + libnbd --------------------------------------------

def test_libnbd_reads_the_lun_through_qemu_nbd(tgt_lab, exported, raw_image, nbd_reader):
    nbd = pytest.importorskip('nbd')
    image = raw_image(size=32 * MiB)
    exp = exported(image)
    h = nbd_reader('-f', 'raw', exp.url)
    assert h.get_size() == exp.size
    assert h.is_read_only()
    sessions = tgt_lab.sessions(exp.name)
    assert [s['initiator'] for s in sessions] == ['iqn.2008-11.org.linux-kvm']
    block = h.get_block_size(nbd.SIZE_MAXIMUM)
    assert block >= 16 * MiB
    digest = hashlib.sha256()
    for off in range(0, exp.size, block):
        digest.update(h.pread(min(block, exp.size - off), off))
    assert digest.hexdigest() == sha256(image)
    h.shutdown()
    wait_for(lambda: tgt_lab.sessions(exp.name) == [], what='session gone')


def test_throughput_lun_vs_file(exported, raw_image, nbd_reader, tmp_path):
    """Prints MiB/s: the file read directly, qemu-img convert from the LUN (to a file
    and to null-co), libnbd pread through qemu-nbd at several block sizes (the page
    cache is warm for all: this measures the iSCSI path, not the disk)."""
    nbd = pytest.importorskip('nbd')
    size = 256 * MiB
    image = raw_image(size=size, hole=None)
    exp = exported(image)
    rates = {}

    t0 = time.monotonic()
    with open(image, 'rb', buffering=0) as f:
        buf = bytearray(16 * MiB)
        while f.readinto(buf):
            pass
    rates['file read 16 MiB'] = size / MiB / (time.monotonic() - t0)

    out = tmp_path / 'out.raw'
    t0 = time.monotonic()
    run('qemu-img', 'convert', '-O', 'raw', exp.url, str(out))
    rates['qemu-img convert LUN -> raw file'] = size / MiB / (time.monotonic() - t0)
    assert out.stat().st_size == size
    out.unlink()
    t0 = time.monotonic()  # the read side alone: a target that drops the writes
    run('qemu-img', 'convert', '-n', exp.url, '--target-image-opts',
        f'driver=null-co,size={size}')
    rates['qemu-img convert LUN -> null-co'] = size / MiB / (time.monotonic() - t0)

    h = nbd_reader('-f', 'raw', exp.url)
    max_block = h.get_block_size(nbd.SIZE_MAXIMUM)
    for block in (MiB, 4 * MiB, 16 * MiB, max_block):
        t0 = time.monotonic()
        for off in range(0, size, block):
            h.pread(min(block, size - off), off)
        rates[f'libnbd pread {block} B'] = size / MiB / (time.monotonic() - t0)
    print('\nthroughput, 256 MiB:\n' + '\n'.join(f'  {k}: {v:.0f} MiB/s'
                                                for k, v in rates.items()))
    assert h.pread(MiB, size - MiB) == image.read_bytes()[-MiB:]


# -- lifecycle ---------------------------------------------------------------------------

def test_stop_leaves_no_tgtd_no_socket_files_no_session(own_tgt, raw_image, nbd_reader):
    tgt = own_tgt()
    exp = tgt.export('stopme', raw_image())
    control_port, port, pid = tgt.control_port, tgt.port, tgt.pid()
    sockets = [IPC_DIR / f'socket.{control_port}', IPC_DIR / f'socket.{control_port}.lock']
    assert all(p.exists() for p in sockets)
    h = nbd_reader('-f', 'raw', exp.url)
    h.pread(4096, 0)
    assert len(tgt.sessions('stopme')) == 1 and established(port) >= 1

    tgt.stop()
    assert not alive(pid) and tgtd_pids(control_port) == []
    assert not any(os.path.lexists(p) for p in sockets)
    assert not tgt.workdir.exists()
    assert not port_open(LOOPBACK, port)
    assert established(port) == 0


def test_kill_then_restart_serves_the_same_luns_with_the_same_identity(
        own_tgt, raw_image, tmp_path):
    tgt = own_tgt()
    plain = tgt.export('plain', raw_image())
    password = 'lab-' + uuid.uuid4().hex
    chap = tgt.export('chap', raw_image(), chap=('labuser3', password))
    control_port, ident = tgt.control_port, lun_identity(plain.url)

    tgt.kill()
    assert not tgt.is_running() and not port_open(LOOPBACK, tgt.port)
    assert run('qemu-img', 'info', plain.url, check=False).returncode != 0

    again = TgtService(tgt.name).restart()  # a new object: state.json is enough
    assert (again.portal, again.control_port) == (tgt.portal, control_port)
    assert again.exports()['plain'] == plain and again.exports()['chap'] == chap
    out = tmp_path / 'plain.raw'
    run('qemu-img', 'convert', '-O', 'raw', plain.url, str(out))
    assert filecmp.cmp(out, plain.backing_file, shallow=False)
    assert lun_identity(plain.url) == ident
    proc = run('qemu-io', '-f', 'raw', '-c', 'write 0 4k', plain.url, check=False)
    assert 'write protected' in proc.stdout + proc.stderr  # still read-only
    out = tmp_path / 'chap.raw'
    run('qemu-img', 'convert', '--object', chap.secret_object(), '--image-opts',
        chap.image_opts(), '-O', 'raw', str(out))
    assert filecmp.cmp(out, chap.backing_file, shallow=False)


def test_a_connected_client_reads_through_a_kill_and_restart(own_tgt, raw_image,
                                                             nbd_reader):
    """The fault the CoR fill must survive: a read issued while the target is down
    blocks (libiscsi reconnects) and completes with the right bytes once it is back."""
    tgt = own_tgt()
    image = raw_image()
    exp = tgt.export('fault', image)
    h = nbd_reader('-f', 'raw', exp.url)
    data = image.read_bytes()
    assert h.pread(MiB, 0) == data[:MiB]

    tgt.kill()
    result: dict = {}

    def read_during_outage():
        try:
            result['data'] = h.pread(MiB, 8 * MiB)
        except Exception as exc:  # noqa: BLE001 -- reported below
            result['error'] = exc

    reader = threading.Thread(target=read_during_outage, daemon=True)
    reader.start()
    wait_for(lambda: established(tgt.port) == 0, what='connection dropped')
    tgt.restart()
    reader.join(60)
    if reader.is_alive():  # unblock it (qemu-nbd ignores SIGTERM then), then fail
        for pid in qemu_nbd_pids[id(h)]:
            os.kill(pid, signal.SIGKILL)
        reader.join(10)
        pytest.fail('a read issued while the target was down did not complete after '
                    'restart()')
    assert 'error' not in result, result.get('error')
    assert result['data'] == data[8 * MiB:9 * MiB]
    assert len(tgt.sessions('fault')) == 1  # the client logged in again


def test_export_refuses_what_tgt_would_get_wrong(tgt_lab, tmp_path):
    odd = write_image(tmp_path / 'odd.raw', 1000)  # tgt would drop the last 488 bytes
    with pytest.raises(ValueError, match='multiple of 512'):
        tgt_lab.export('odd', odd)
    good = write_image(tmp_path / 'good.raw', MiB)
    with pytest.raises(ValueError, match='serial'):
        tgt_lab.export('longserial', good, serial='x' * 37)  # tgt would truncate it
    with pytest.raises(ValueError, match='export name'):
        tgt_lab.export('Bad_Name', good)
    assert 'odd' not in tgt_lab.exports() and 'longserial' not in tgt_lab.exports()
