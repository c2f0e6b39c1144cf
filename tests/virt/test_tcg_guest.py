"""The lab's TCG guest under the lab's private libvirtd: what it reads from its disk
(raw, qcow2 over raw, copy-on-read), and a block pull while it runs."""
from __future__ import annotations

import hashlib
import os
import subprocess
import time

import libvirt
import pytest

from tests.virt.conftest import (MiB, covered, disk_bytes, image_info, own_data_ranges,
                                 qemu_img)
from tools.lab.guest import read_digests, wait_digests, wait_gone, wait_line


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_overlay(tmp_path, base, virtual_size=None):
    overlay = tmp_path / 'overlay.qcow2'
    args = ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', str(base), str(overlay)]
    qemu_img(*args, *([str(virtual_size)] if virtual_size else []))
    return overlay


def test_boot_from_raw_disk_prints_its_digest(tmp_path, guest, boot, vm_name):
    data = disk_bytes(8 * MiB, seed=11)
    disk = tmp_path / 'disk.raw'
    disk.write_bytes(data)
    log = tmp_path / 'serial.log'
    dom = boot(guest.domain_xml(vm_name, disk, 'raw', serial_log=log, nbytes=len(data)))
    [digest] = wait_digests(log, 1, dom=dom)
    assert (digest.sha256, digest.nbytes, digest.dev) == (sha256(data), len(data), 'vda')
    wait_gone(dom)  # powered off by itself; the transient domain is gone
    assert len(read_digests(log)) == 1


def test_boot_from_qcow2_overlay_over_raw(tmp_path, guest, boot, vm_name):
    """The image (6 MiB) is smaller than the disk (8 MiB): the guest hashes only the
    image's bytes. Plain reads leave the overlay empty: the data stays in the base."""
    data = disk_bytes(6 * MiB, seed=12)
    base = tmp_path / 'base.raw'
    base.write_bytes(data)
    overlay = make_overlay(tmp_path, base, virtual_size=8 * MiB)
    log = tmp_path / 'serial.log'
    dom = boot(guest.domain_xml(vm_name, overlay, 'qcow2', backing=base,
                                serial_log=log, nbytes=len(data)))
    [digest] = wait_digests(log, 1, dom=dom)
    assert digest.sha256 == sha256(data) and digest.nbytes == len(data)
    wait_gone(dom)
    assert own_data_ranges(overlay) == []
    assert image_info(overlay)['backing-filename'] == str(base)


def test_copy_on_read_fills_the_overlay_and_reads_right(tmp_path, guest, boot, vm_name):
    data = disk_bytes(8 * MiB, seed=13)
    nbytes = 5 * MiB
    base = tmp_path / 'base.raw'
    base.write_bytes(data)
    overlay = make_overlay(tmp_path, base)
    blocks_before = os.stat(overlay).st_blocks
    log = tmp_path / 'serial.log'
    dom = boot(guest.domain_xml(vm_name, overlay, 'qcow2', backing=base,
                                copy_on_read=True, serial_log=log, nbytes=nbytes))
    [digest] = wait_digests(log, 1, dom=dom)
    assert digest.sha256 == sha256(data[:nbytes])
    wait_gone(dom)  # qemu has closed (and flushed) the overlay
    assert os.stat(overlay).st_blocks * 512 >= blocks_before * 512 + nbytes
    assert covered(own_data_ranges(overlay), 0, nbytes), own_data_ranges(overlay)
    # The overlay alone (backing link cut) holds the bytes the guest read.
    alone = tmp_path / 'alone.qcow2'
    subprocess.run(['cp', str(overlay), str(alone)], check=True)
    qemu_img('rebase', '-u', '-b', '', str(alone))
    qemu_img('convert', '-f', 'qcow2', '-O', 'raw', str(alone), str(tmp_path / 'alone.raw'))
    assert (tmp_path / 'alone.raw').read_bytes()[:nbytes] == data[:nbytes]


def test_block_pull_while_the_guest_runs(tmp_path, guest, boot, vm_name, virt_conn):
    """copy_on_read + a held guest that re-reads its disk every 2 s; blockPull (MiB/s
    bandwidth) flattens the overlay under it; the job's completion arrives both as an
    empty blockJobInfo and as a BLOCK_JOB_2 COMPLETED event; afterwards the overlay
    has no backing file and the guest still reads the same bytes without the base."""
    data = disk_bytes(16 * MiB, seed=14)
    nbytes = 4 * MiB
    base = tmp_path / 'base.raw'
    base.write_bytes(data)
    overlay = make_overlay(tmp_path, base)
    log = tmp_path / 'serial.log'
    events = []

    def on_job(_conn, dom, disk, job_type, status, _opaque):
        events.append((dom.name(), disk, job_type, status))

    cb = virt_conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
                                          on_job, None)
    try:
        dom = boot(guest.domain_xml(vm_name, overlay, 'qcow2', backing=base,
                                    copy_on_read=True, serial_log=log, nbytes=nbytes,
                                    hold=True, reread_seconds=2))
        [first] = wait_digests(log, 1, dom=dom)
        wait_line(log, 'IH-HOLD')
        assert first.sha256 == sha256(data[:nbytes])
        assert image_info(overlay)['backing-filename'] == str(base)

        dom.blockPull('vda', 16, 0)  # bandwidth 16 MiB/s (flag BANDWIDTH_BYTES: B/s)
        infos = []
        deadline = time.monotonic() + 60
        while True:
            info = dom.blockJobInfo('vda', 0)
            if not info:
                break
            infos.append(info)
            assert info['type'] == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL
            assert info['end'] == len(data) and 0 <= info['cur'] <= info['end']
            assert time.monotonic() < deadline, infos[-3:]
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events == [(vm_name, 'vda', libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL,
                           libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED)]
        assert dom.isActive()

        info = image_info(overlay)
        assert 'backing-filename' not in info and 'full-backing-filename' not in info
        assert '<backingStore/>' in dom.XMLDesc(0) and str(base) not in dom.XMLDesc(0)
        # The base is no longer needed: a re-read after it is gone reads the same bytes.
        base.rename(tmp_path / 'base.gone')
        seen = len(wait_digests(log, 1))
        later = wait_digests(log, seen + 1, dom=dom, timeout=60)[-1]
        assert later.pass_ > 1 and later.sha256 == first.sha256
        dom.destroy()
        wait_gone(dom)
    finally:
        virt_conn.domainEventDeregisterAny(cb)
    # The flattened overlay holds the whole disk.
    qemu_img('convert', '-f', 'qcow2', '-O', 'raw', str(overlay), str(tmp_path / 'flat.raw'))
    assert (tmp_path / 'flat.raw').read_bytes() == data


def test_guest_reports_a_read_past_the_disk(tmp_path, guest, boot, vm_name):
    """The init checks ih_bytes against the disk: a wrong size is an IH-ERROR."""
    disk = tmp_path / 'disk.raw'
    disk.write_bytes(disk_bytes(1 * MiB))
    log = tmp_path / 'serial.log'
    dom = boot(guest.domain_xml(vm_name, disk, 'raw', serial_log=log, nbytes=2 * MiB))
    wait_gone(dom)
    with pytest.raises(Exception, match='more than the disk'):
        read_digests(log)


def test_boot_from_overlay_over_iscsi_lun_with_chap_and_copy_on_read(
        tmp_path, guest, boot, vm_name, virt_lab, virt_conn, iscsi_target):
    """qcow2 overlay backed by a read-only iSCSI LUN (CHAP): libvirt hands qemu the
    password as a secret object (never on its command line), the guest reads the
    LUN's bytes, and copy_on_read leaves them in the overlay."""
    data = disk_bytes(8 * MiB, seed=15)
    lun = tmp_path / 'lun.raw'
    lun.write_bytes(data)
    user, password = 'labuser', 'lab-secret-' + vm_name[-6:]
    url = iscsi_target.export(vm_name[-6:], lun, chap=(user, password))
    overlay = tmp_path / 'overlay.qcow2'
    # -u: the backing LUN is not opened (qemu-img would need the CHAP password).
    qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', url, '-u', str(overlay),
             str(len(data)))
    usage = f'lab-{vm_name}'
    virt_lab.define_secret(usage, password, conn=virt_conn)
    nbytes = 6 * MiB
    log = tmp_path / 'serial.log'
    dom = boot(guest.domain_xml(vm_name, overlay, 'qcow2', backing=url, chap_user=user,
                                chap_secret_usage=usage, copy_on_read=True,
                                serial_log=log, nbytes=nbytes))
    argv = open(f'/proc/{virt_lab.qemu_pid(vm_name)}/cmdline').read()
    assert '"driver":"iscsi"' in argv and '"password-secret"' in argv
    assert password not in argv
    [digest] = wait_digests(log, 1, dom=dom)
    assert digest.sha256 == sha256(data[:nbytes])
    wait_gone(dom)
    alone = tmp_path / 'alone.qcow2'
    subprocess.run(['cp', str(overlay), str(alone)], check=True)
    qemu_img('rebase', '-u', '-b', '', str(alone))
    qemu_img('convert', '-f', 'qcow2', '-O', 'raw', str(alone), str(tmp_path / 'alone.raw'))
    assert (tmp_path / 'alone.raw').read_bytes()[:nbytes] == data[:nbytes]


def test_iscsi_backing_with_a_wrong_chap_password_does_not_start(
        tmp_path, guest, boot, vm_name, virt_lab, virt_conn, iscsi_target):
    lun = tmp_path / 'lun.raw'
    lun.write_bytes(disk_bytes(1 * MiB, seed=16))
    url = iscsi_target.export(vm_name[-6:], lun, chap=('labuser2', 'the-right-one'))
    overlay = tmp_path / 'overlay.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', url, '-u', str(overlay),
             str(1 * MiB))
    usage = f'lab-{vm_name}'
    virt_lab.define_secret(usage, 'a-wrong-one', conn=virt_conn)
    with pytest.raises(libvirt.libvirtError, match='(?i)iscsi|login|auth'):
        boot(guest.domain_xml(vm_name, overlay, 'qcow2', backing=url, chap_user='labuser2',
                              chap_secret_usage=usage, serial_log=tmp_path / 'serial.log',
                              nbytes=MiB))
