"""The patched Nova 34 booting an instance from an iscsi_cor disk: real Nova code
(``_create_and_inject_local_root`` with its Qcow2 backend, Nova's image API), the
lab's real Glance, a LUN on the lab's userspace target (tgt, read through qemu's
initiator: the kernel one cannot run here), and a real TCG guest under the lab's
private libvirtd.

The domain XML is the lab guest's (direct kernel boot; Nova's own
``_get_guest_config`` needs a full compute host); it goes through the very function
the patched ``_get_guest_xml`` calls, ``hooks.guest_xml``.

What the tests show: Nova's spawn gets a qcow2 disk backed by the LUN without a
byte copied; the XML opens it copy_on_read; the offline fill hands over to the
guest's qemu, which pulls the rest while the guest runs and reads the image's
digest; afterwards the disk has no backing file, the LUN is verified, and the target
has no session; a LUN found wrong while the guest runs fails its job with an ERROR
and is refused after. Deleting an instance (``hooks.release``, what the patched
``cleanup`` calls) stops its fill.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import subprocess
import time

import pytest

from image_handlers.jobs import runner
from image_handlers.nova import hooks
from tests.functional.conftest import image_bytes
from tests.nova.conftest import CONF
from tests.virt.conftest import (  # noqa: F401
    boot, guest, libvirt_events, virt_conn, virt_lab, vm_name)
from tools.lab.guest import wait_digests, wait_line
from tools.lab.tgt import TgtService

MiB = 1 << 20


@pytest.fixture(scope='module')
def tgt():
    service = TgtService('tgt-nova').start()
    yield service
    service.stop()


@pytest.fixture
def lun_image(make_image, glance_lab, tgt, tmp_path):
    """A Glance image whose location (rewritten in Glance's database, as for any
    LUN an operator publishes) is a LUN holding its bytes."""
    names = []

    def make(data: bytes, lun_data: bytes | None = None) -> tuple[str, object]:
        image_id = make_image(data)
        name = f'nova{len(names)}-{image_id[:8]}'
        backing = tmp_path / f'{name}.raw'
        backing.write_bytes(data if lun_data is None else lun_data)
        export = tgt.export(name, backing)
        names.append(name)
        db = sqlite3.connect(glance_lab.workdir / 'glance.sqlite')
        with db:
            db.execute('update image_locations set value = ?, meta_data = ? where '
                       'image_id = ? and deleted = 0', (export.url, '{}', image_id))
        db.close()
        return image_id, export
    yield make
    for name in names:
        tgt.unexport(name)


@pytest.fixture
def cor_env(nova_env, tgt, virt_lab, tmp_path):
    def configure(**extra):
        nova_env(libvirt={'images_type': 'qcow2'}, image_handlers={
            'handlers': ['iscsi_cor', 'stream_copy'],
            'iscsi_allowed_portals': [tgt.portal],
            'iscsi_libvirt_uri': virt_lab.uri, 'iscsi_handover_timeout': 60.0,
            **extra})
    return configure


def _info(path: str) -> dict:
    return json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json', path],
                                     capture_output=True, check=True).stdout)


def _fill_of(disk: str):
    found = [j for j in runner.store(CONF).all()
             if j.kind == 'lun_fill' and j.params['disk'] == disk]
    assert len(found) == 1, found
    return found[0]


def test_an_instance_boots_from_a_lun_and_its_disk_is_filled_while_it_runs(
        cor_env, lun_image, tgt, instance, create_root_disk, guest, boot, vm_name,
        tmp_path, caplog):
    data = image_bytes(24 * MiB, seed=101, zero_every=4)
    image_id, export = lun_image(data)
    cor_env(bandwidth_limit=4 * MiB)        # slow enough to hand over mid-fill
    inst = instance(image_id)
    caplog.set_level(logging.INFO)

    backend = create_root_disk(inst, image_id)       # Nova's spawn code

    disk = backend.path
    info = _info(disk)
    assert info['format'] == 'qcow2' and info['backing-filename'] == export.url
    assert f'instance disk {disk} made by iscsi_cor (overlay)' in caplog.text
    job = _fill_of(disk)
    deadline = time.monotonic() + 60          # let the offline fill get going first
    while runner.store(CONF).get(job.id).done_bytes < 4 * MiB:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    xml = guest.domain_xml(vm_name, disk, 'qcow2', serial_log=tmp_path / 'serial.log',
                           nbytes=len(data), hold=True)
    assert "copy_on_read='on'" not in xml
    xml = hooks.guest_xml(xml, inst)                  # what _get_guest_xml returns
    assert "copy_on_read='on'" in xml or 'copy_on_read="on"' in xml
    dom = boot(xml)
    [digest] = wait_digests(tmp_path / 'serial.log', 1, dom=dom, timeout=240)
    wait_line(tmp_path / 'serial.log', 'IH-HOLD')
    assert digest.sha256 == hashlib.sha256(data).hexdigest()

    done = runner.wait(CONF, job.id, timeout=240)
    assert done.state == 'done', (done.error, open(
        f'{CONF.image_handlers.state_dir}/jobs/{job.id}.log').read()[-3000:])
    assert done.result['mode'] == 'online'            # the guest's qemu pulled it
    assert 4 * MiB <= done.result['filled_offline'] < len(data)   # handed over mid-way
    assert 'LUN read and hashed by this job' in done.result['verified']
    assert 'backing-filename' not in _info(disk)
    assert '<backingStore/>' in dom.XMLDesc(0)
    deadline = time.monotonic() + 30
    while tgt.sessions(export.name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tgt.sessions(export.name) == []            # the host left the target
    dom.destroy()


def test_deleting_an_instance_stops_its_fill(cor_env, lun_image, instance,
                                             create_root_disk):
    data = image_bytes(16 * MiB, seed=102)
    image_id, _export = lun_image(data)
    cor_env(bandwidth_limit=1 * MiB)
    inst = instance(image_id)
    backend = create_root_disk(inst, image_id)
    job = _fill_of(backend.path)

    hooks.release(inst)                               # what the patched cleanup calls

    done = runner.wait(CONF, job.id, timeout=60)
    assert done.state == 'cancelled'
    assert not hooks._fills_under(str(backend.path).rsplit('/', 1)[0])


def test_a_wrong_lun_found_while_the_guest_runs_is_an_error_and_refused_after(
        cor_env, lun_image, instance, create_root_disk, guest, boot, vm_name,
        tmp_path, context, caplog):
    """The LUN's bytes differ from the image's in its last MiB, which the fill only
    hashes after the hand-over, with the guest running: the job fails with an
    ERROR, and the chain refuses that LUN from then on."""
    data = image_bytes(24 * MiB, seed=103, zero_every=4)
    wrong = bytearray(data)
    wrong[-MiB] ^= 0xFF
    image_id, _export = lun_image(data, lun_data=bytes(wrong))
    cor_env(bandwidth_limit=4 * MiB)
    inst = instance(image_id)
    backend = create_root_disk(inst, image_id)
    job = _fill_of(backend.path)
    deadline = time.monotonic() + 60
    while runner.store(CONF).get(job.id).done_bytes < 4 * MiB:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    xml = hooks.guest_xml(guest.domain_xml(vm_name, backend.path, 'qcow2',
                                           serial_log=tmp_path / 'serial.log',
                                           nbytes=MiB, hold=True), inst)
    dom = boot(xml)

    done = runner.wait(CONF, job.id, timeout=240)

    assert done.state == 'failed' and 'does not hold image' in done.error
    log = open(f'{CONF.image_handlers.state_dir}/jobs/{job.id}.log').read()
    assert 'ERROR' in log and 'does not hold image' in log
    assert dom.isActive()                       # the guest was running all along
    dom.destroy()
    again = instance(image_id)
    caplog.set_level(logging.INFO)
    assert not hooks.provide_disk(lab_backend(again), context, image_id, again, None)
    assert 'does not hold image' in caplog.text and 'refused from now on' in caplog.text


def lab_backend(inst):
    from nova.virt.libvirt import imagebackend
    return imagebackend.Backend(CONF.use_cow_images).by_name(inst, 'disk')
