"""Regressions for what the hang trials (``tools/service_faults.py --hang``) found:
real lab services SIGSTOPped (their sockets stay open, nothing answers), always
SIGCONTed in a finally. Each test is the real service of its kind: a Gluster
volume of its own in the shared glusterd (only its brick is stopped), the
session's Glance behind Keystone, a tgtd of this module. No timing is asserted:
the bounds are in doc/reliability.rst."""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from image_handlers import api, exceptions
from image_handlers.iscsi import reader
from image_handlers.iscsi.lun import LunSpec
from image_handlers.jobs import runner
from tests.functional.conftest import image_bytes
from tools.lab.gluster_volume import GlusterVolume
from tools.lab.tgt import TgtService

MiB = 1 << 20


def _backing_of(disk) -> str:
    info = subprocess.run(['qemu-img', 'info', '-U', str(disk)], capture_output=True,
                          text=True, check=True).stdout
    return next((ln.split(':', 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith('backing file:')), '')


@pytest.fixture
def hang_volume(gluster_lab):
    """A volume of this test's own (never the shared one), FUSE caches off so
    reads reach the brick."""
    vol = GlusterVolume(gluster_lab, f'ihhang{uuid.uuid4().hex[:6]}',
                        name='gluster-hangtest').start()
    try:
        for key in ('performance.io-cache', 'performance.read-ahead',
                    'performance.quick-read'):
            vol.set_option(key, 'off')
        yield vol
    finally:
        vol.stop()


def test_an_overlay_fill_on_a_hung_brick_fails_clearly_and_resumes(hang_volume,
                                                                    tmp_path):
    """qemu-img's rebase has no timeout: with the brick stopped, the overlay_fill
    job used to wait for as long as the brick did. A fill that reads and writes
    nothing for [image_handlers] read_timeout seconds is now stopped, and the job
    fails saying the overlay keeps its backing file and which command continues;
    that command does once the brick answers, and the disk reads as the image."""
    data = image_bytes(24 * MiB, seed=31)
    base = hang_volume.mountpoint / 'base.raw'
    base.write_bytes(data)
    disk = tmp_path / 'disk.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                    str(base), str(disk)], check=True)
    conf_file = tmp_path / 'nova.conf'
    conf_file.write_text(f'[image_handlers]\nstate_dir = {tmp_path / "state"}\n'
                         'read_timeout = 2\n')
    conf = api.make_conf([str(conf_file)])
    hang_volume.drop_cached(base)
    pids = hang_volume.pause_brick()
    try:
        time.sleep(1.5)     # past the FUSE client's 1 s attribute cache: a path
        # lookup on the mount (realpath of the backing file) now asks the brick
        job = runner.submit(conf, 'overlay_fill', {'disk': str(disk),
                                                   'backing_format': 'raw',
                                                   'expect_backing': str(base)},
                            'fill on a hung brick')
        failed = runner.wait(conf, job.id, timeout=120)
        assert failed.state == 'failed', failed
        assert 'stalled' in failed.error and 'read_timeout' in failed.error
        assert f'"image-handlers jobs resume {job.id}" continues' in failed.error
        assert _backing_of(disk) == str(base)       # nothing published as whole
    finally:
        hang_volume.resume_brick(pids)
    runner.retry(conf, job.id)
    assert runner.wait(conf, job.id, timeout=120).state == 'done'
    assert _backing_of(disk) == ''
    out = tmp_path / 'read.raw'
    subprocess.run(['qemu-img', 'convert', '-U', '-O', 'raw', str(disk), str(out)],
                   check=True)
    assert out.read_bytes() == data


def test_a_glance_that_accepts_and_never_answers_is_a_clear_error(
        glance_lab, make_image, nova_conf, cli, tmp_path):
    """With [glance] timeout unset (Nova's default) a stopped Glance held every
    request for as long as it stayed stopped, and a request that timed out came
    out as glanceclient's InvalidEndpoint, not retried. Glance calls are now
    bounded by [image_handlers] read_timeout and retried as a failure; the error
    names Glance and says to retry; once it answers the same request works."""
    data = image_bytes(2 * MiB, seed=32)
    image_id = make_image(data)
    conf = nova_conf('read_timeout = 1\n')
    with open(conf, 'a') as f:
        f.write('\n[glance]\nnum_retries = 1\n')
    target = tmp_path / 'disk'
    pids = glance_lab.pause()
    try:
        res = cli('fetch', image_id, str(target), '--config-file', conf)
    finally:
        glance_lab.resume(pids)
    assert res.rc == 1, res
    assert 'did not answer' in res.err and 'after 2 attempts' in res.err, res
    assert 'timed out' in res.err and 'retry once it is back' in res.err, res
    assert not target.exists()
    again = cli('fetch', image_id, str(target), '--config-file', conf)
    assert again.rc == 0, again
    assert target.read_bytes() == data


@pytest.fixture(scope='module')
def hang_tgt():
    service = TgtService('tgt-hang').start()
    yield service
    service.stop()


def test_qemu_nbd_on_a_hung_target_is_bounded(hang_tgt, tmp_path):
    """qemu-nbd answers libnbd's handshake only once it has logged in to the LUN,
    so a tgtd that accepts and never answers held a fill's reconnect (and the
    first verification read) for ever. The connect is bounded now; once the
    target answers the LUN is served again."""
    data = image_bytes(4 * MiB, seed=33)
    backing = tmp_path / 'lun.raw'
    backing.write_bytes(data)
    export = hang_tgt.export('hang', backing)
    spec = LunSpec(portal=export.portal, iqn=export.iqn, lun=export.lun)
    pids = hang_tgt.pause()
    try:
        with pytest.raises(exceptions.SourceError, match='did not open it within 1 s'):
            with reader.served(spec.objects(), spec.image_opts(), read_only=True,
                               description=spec.url, timeout=1):
                pass
    finally:
        hang_tgt.resume(pids)
    with reader.served(spec.objects(), spec.image_opts(), read_only=True,
                       description=spec.url, timeout=30) as h:
        got = bytearray()
        reader.read_through(h, 0, len(data), got.extend, None, lambda: False,
                            lambda done: None, 'read back', 30)
    assert bytes(got) == data
