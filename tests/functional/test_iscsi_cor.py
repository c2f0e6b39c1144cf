"""iscsi_cor against the lab: a real Glance 33 record whose location is an image LUN
exported read-only by a real userspace target (tgt) on loopback, read through
qemu's userspace initiator (libiscsi). The kernel initiator cannot run on this
machine (no iscsi_tcp): its connector is tested in tests/nova with os-brick's
command execution replaced.

What the tests show: the disk is readable at once and reads equal the image before
any fill; the fill job copies the rest, verifies the LUN, and leaves a disk with no
backing file that ``qemu-img compare`` finds equal to the image, with no session
left on the target; the fill survives a kill -9 of its worker and a target that
goes away and comes back, and fails clearly when it never does; CHAP secrets never
reach ``ps``, files or results; every bad location is refused with its reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from image_handlers import api
from image_handlers.iscsi import fill as lun_fill
from image_handlers.jobs import runner
from tools.lab.tgt import TgtService

MiB = 1 << 20
CHAP_USER, CHAP_PASSWORD = 'imguser', 'Lab-chap-secret-77'


@pytest.fixture(scope='module')
def tgt():
    service = TgtService('tgt-cor').start()
    yield service
    service.stop()


def _data(size: int, seed: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < size:
        out += (bytes(MiB) if i % 3 == 1 else
                hashlib.sha512(f'{seed}:{i}'.encode()).digest() * (MiB // 64))
        i += 1
    return bytes(out[:size])


@pytest.fixture
def lun_image(make_image, glance_lab, tgt, tmp_path):
    """An image in the real Glance (its record holds the hash and size) whose only
    location is rewritten in Glance's database to a LUN exporting the same bytes
    (operators publish LUNs so; Glance's PATCH API refuses the scheme)."""
    made = []

    def make(data: bytes, *, lun_data: bytes | None = None, chap: bool = False,
             metadata: dict | None = None, url: str | None = None, lun: int = 1):
        image_id = make_image(data)
        name = f'cor{len(made)}-{image_id[:8]}'
        backing = tmp_path / f'{name}.raw'
        backing.write_bytes(data if lun_data is None else lun_data)
        export = tgt.export(name, backing,
                            chap=(CHAP_USER, CHAP_PASSWORD) if chap else None)
        made.append(name)
        meta = dict(metadata or {})
        if chap:
            meta.update(chap_user=CHAP_USER, chap_secret='images')
        db = sqlite3.connect(glance_lab.workdir / 'glance.sqlite')
        with db:
            db.execute('update image_locations set value = ?, meta_data = ? where '
                       'image_id = ? and deleted = 0',
                       (url or export.url[:-1] + str(lun), json.dumps(meta),
                        image_id))
        db.close()
        return image_id, export
    yield make
    for name in made:
        tgt.unexport(name)


@pytest.fixture
def cor_conf(tmp_path, glance_lab, tgt):
    secret = tmp_path / 'chap-images'
    secret.write_text(CHAP_PASSWORD)
    secret.chmod(0o600)

    def write(extra: str = '', portals: str | None = None) -> str:
        path = tmp_path / f'nova-{time.monotonic_ns()}.conf'
        path.write_text(
            glance_lab.nova_conf()
            + f'\n[image_handlers]\nstate_dir = {tmp_path / "state"}\n'
            + 'handlers = iscsi_cor, stream_copy\n'
            + f'iscsi_allowed_portals = {portals or tgt.portal}\n'
            + f'iscsi_chap_secrets = images:{secret}\niscsi_timeout = 3\n'
            + 'iscsi_handover_timeout = 2\nread_timeout = 3\ncopy_retries = 1\n'
            + extra + '\n')
        return str(path)
    return write


def _fetch(cli, image_id, disk, conf):
    res = cli('fetch', image_id, str(disk), '--disk-format', 'qcow2', '--config-file',
              conf, '--json')
    assert res.rc == 0, res
    return res.json


def _raw(disk, tmp_path, objects=()) -> bytes:
    out = tmp_path / f'read-{time.monotonic_ns()}.raw'
    subprocess.run(['qemu-img', 'convert', *objects, '-U', '-O', 'raw', str(disk),
                    str(out)], check=True, capture_output=True)
    data = out.read_bytes()
    out.unlink()
    return data


def _info(disk) -> dict:
    return json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json',
                                      str(disk)], capture_output=True,
                                     check=True).stdout)


def test_disk_reads_the_image_at_once_then_the_fill_makes_it_independent(
        cli, cor_conf, lun_image, tgt, tmp_path):
    data = _data(12 * MiB, seed=91)
    image_id, export = lun_image(data)
    conf = cor_conf()
    disk = tmp_path / 'disk.qcow2'

    out = _fetch(cli, image_id, disk, conf)

    assert (out['handler'], out['method'], out['disk_format']) == (
        'iscsi_cor', 'overlay', 'qcow2')
    assert out['bytes_copied'] == 0 and out['complete'] is False
    assert out['depends_on']['kind'] == 'remote_lun'
    assert out['depends_on']['source'] == export.url
    assert out['verified'] is None and 'pending in job' in out['details']['verification']
    done = runner.wait(api.make_conf([conf]), out['job'], timeout=120)
    assert done.state == 'done', done
    assert 'LUN read and hashed by this job' in done.result['verified']
    assert 'backing-filename' not in _info(disk)
    assert subprocess.run(['qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw',
                           str(disk), str(tmp_path / f'{export.name}.raw')]
                          ).returncode == 0
    assert _raw(disk, tmp_path)[:len(data)] == data
    assert tgt.sessions(export.name) == []

    again = _fetch(cli, image_id, tmp_path / 'disk2.qcow2', conf)
    assert again['verified'] and 'LUN verified before' in again['verified']


def test_reads_equal_the_image_before_any_fill(cli, cor_conf, lun_image, tmp_path):
    """The fill is released for a guest at once (as the Nova hook does before a
    boot) and waits in vain: nothing but qemu's reads fill the disk."""
    data = _data(8 * MiB, seed=92)
    image_id, _export = lun_image(data)
    conf = cor_conf('bandwidth_limit = 1048576\n')
    disk = tmp_path / 'disk.qcow2'
    out = _fetch(cli, image_id, disk, conf)
    assert lun_fill.release_for_guest(str(tmp_path / 'state'), out['job'], 30)
    before = os.stat(disk).st_blocks * 512
    assert before < 4 * MiB                           # at most a chunk or two filled

    assert _raw(disk, tmp_path)[:len(data)] == data   # reads through to the LUN
    done = runner.wait(api.make_conf([conf]), out['job'], timeout=60)
    assert done.state == 'failed' and 'no running domain has it open' in done.error


def test_fill_resumes_after_kill_9_of_its_worker(cli, cor_conf, lun_image, tmp_path):
    data = _data(32 * MiB, seed=93)
    image_id, _export = lun_image(data)
    conf = cor_conf('bandwidth_limit = 4194304\n')
    disk = tmp_path / 'disk.qcow2'
    out = _fetch(cli, image_id, disk, conf)
    jobs = runner.store(api.make_conf([conf]))
    deadline = time.monotonic() + 30
    while jobs.get(out['job']).done_bytes < 4 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = subprocess.run(['pgrep', '-f', f'image_handlers.jobs.worker .*{out["job"]}'],
                          capture_output=True, text=True).stdout.split()
    for pid in pids:
        os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while jobs.is_running(out['job']) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = jobs.get(out['job'])
    assert killed.state == 'running' and 0 < killed.done_bytes < len(data)

    resume = cli('jobs', 'resume', '--config-file', conf)
    assert resume.rc == 0 and out['job'] in resume.out, resume
    done = runner.wait(api.make_conf([conf]), out['job'], timeout=120)
    assert done.state == 'done' and done.runs == 2, done
    assert 'backing-filename' not in _info(disk)
    assert _raw(disk, tmp_path)[:len(data)] == data


def test_fill_survives_the_target_going_away_and_fails_clearly_if_it_stays_away(
        cli, cor_conf, lun_image, tgt, tmp_path):
    data = _data(32 * MiB, seed=94)        # 8 s at the 4 MiB/s limit: time to kill
    image_id, _export = lun_image(data)
    conf = cor_conf('bandwidth_limit = 4194304\ncopy_retries = 20\nread_timeout = 20\n')
    disk = tmp_path / 'disk.qcow2'
    out = _fetch(cli, image_id, disk, conf)
    jobs = runner.store(api.make_conf([conf]))
    deadline = time.monotonic() + 30
    while jobs.get(out['job']).done_bytes < 4 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    tgt.kill()
    try:
        time.sleep(1.5)
        assert jobs.get(out['job']).state == 'running'
    finally:
        tgt.restart()
    done = runner.wait(api.make_conf([conf]), out['job'], timeout=120)
    assert done.state == 'done', done
    assert _raw(disk, tmp_path)[:len(data)] == data

    # The same, but the target never returns: a clear error within the bounds.
    image2, _ = lun_image(_data(32 * MiB, seed=95))
    quick = cor_conf('bandwidth_limit = 4194304\n')     # read_timeout 3, 1 retry
    disk2 = tmp_path / 'disk2.qcow2'
    out2 = _fetch(cli, image2, disk2, quick)
    deadline = time.monotonic() + 30
    while jobs.get(out2['job']).done_bytes < 4 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    tgt.kill()
    try:
        failed = runner.wait(api.make_conf([quick]), out2['job'], timeout=60)
    finally:
        tgt.restart()
    assert failed.state == 'failed' and 'giving up after 1 retries' in failed.error
    assert f'image-handlers jobs resume {out2["job"]}' in failed.error
    again = cli('jobs', 'resume', out2['job'], '--config-file', quick)   # target back
    assert again.rc == 0, again
    assert runner.wait(api.make_conf([quick]), out2['job'], timeout=120).state == 'done'
    assert _raw(disk2, tmp_path)[:32 * MiB] == _data(32 * MiB, seed=95)


def test_a_lun_that_is_not_the_image_fails_its_job_and_is_refused_after(
        cli, cor_conf, lun_image, tmp_path, caplog):
    data = _data(4 * MiB, seed=96)
    wrong = bytearray(data)
    wrong[3 * MiB] ^= 0xFF
    image_id, _export = lun_image(data, lun_data=bytes(wrong))
    conf = cor_conf()
    out = _fetch(cli, image_id, tmp_path / 'disk.qcow2', conf)
    done = runner.wait(api.make_conf([conf]), out['job'], timeout=60)
    assert done.state == 'failed' and 'does not hold image' in done.error
    log = (tmp_path / 'state' / 'jobs' / f'{out["job"]}.log').read_text()
    assert 'ERROR' in log and 'does not hold image' in log

    res = cli('explain', image_id, str(tmp_path / 'next.qcow2'), '--disk-format',
              'qcow2', '--config-file', conf, '--json')
    reason = next(a['reason'] for a in res.json['attempts']
                  if a['handler'] == 'iscsi_cor')
    assert 'does not hold image' in reason and 'refused from now on' in reason


def test_chap_secret_never_reaches_ps_files_or_results(cli, cor_conf, lun_image,
                                                        tmp_path):
    data = _data(16 * MiB, seed=97)
    image_id, _export = lun_image(data, chap=True)
    conf = cor_conf('bandwidth_limit = 4194304\n')
    disk = tmp_path / 'disk.qcow2'
    res = cli('fetch', image_id, str(disk), '--disk-format', 'qcow2', '--config-file',
              conf, '--json')
    assert res.rc == 0, res
    seen = []
    deadline = time.monotonic() + 20
    job = runner.store(api.make_conf([conf])).get(res.json['job'])
    while not job.finished and time.monotonic() < deadline:
        for pid in subprocess.run(['pgrep', '-f', 'qemu-nbd'], capture_output=True,
                                  text=True).stdout.split():
            try:
                seen.append(open(f'/proc/{pid}/cmdline', 'rb').read())
            except OSError:
                pass
        time.sleep(0.05)
        job = runner.store(api.make_conf([conf])).get(res.json['job'])
    assert seen, 'no qemu-nbd was seen while the fill ran'
    assert not [c for c in seen if CHAP_PASSWORD.encode() in c]
    done = runner.wait(api.make_conf([conf]), job.id, timeout=120)
    assert done.state == 'done', done
    secret = CHAP_PASSWORD.encode()
    assert secret not in res.out.encode() and secret not in res.err.encode()
    for root, _dirs, files in os.walk(tmp_path / 'state'):
        for name in files:
            assert secret not in open(os.path.join(root, name), 'rb').read(), name
    assert secret not in disk.read_bytes()[:1 * MiB]         # not in the qcow2 header


@pytest.mark.parametrize('case', ['portal not allowed', 'unreachable portal',
                                  'wrong iqn', 'wrong lun', 'wrong chap secret',
                                  'lun larger', 'lun smaller'])
def test_bad_luns_are_refused_with_the_reason_and_nothing_is_created(
        case, cli, cor_conf, lun_image, tgt, tmp_path):
    data = _data(2 * MiB, seed=98)
    kwargs, portals, expect = {}, None, None
    if case == 'portal not allowed':
        portals, expect = '127.0.0.1:1', 'is not in [image_handlers] iscsi_allowed_portals'
    elif case == 'unreachable portal':
        port = 1
        kwargs['url'] = f'iscsi://127.0.0.1:{port}/iqn.2026-12.lab.image-handlers:x/1'
        portals, expect = f'127.0.0.1:{port}', 'did not accept a connection'
    elif case == 'wrong iqn':
        kwargs['url'] = f'iscsi://{tgt.portal}/iqn.2026-12.lab.image-handlers:nope/1'
        expect = 'cannot open'
    elif case == 'wrong lun':
        kwargs['lun'], expect = 7, 'cannot open'
    elif case == 'wrong chap secret':
        kwargs['chap'] = True
        expect = 'cannot open'
    elif case == 'lun larger':
        kwargs['lun_data'], expect = data + bytes(MiB), 'has 3145728 bytes'
    else:
        kwargs['lun_data'], expect = data[:MiB], 'has 1048576 bytes'
    image_id, _export = lun_image(data, **kwargs)
    conf = cor_conf(portals=portals)
    if case == 'wrong chap secret':
        secret = tmp_path / 'chap-images'
        secret.write_text('not-the-secret')
    target = tmp_path / 'disk.qcow2'
    started = time.monotonic()
    res = cli('explain', image_id, str(target), '--disk-format', 'qcow2',
              '--config-file', conf, '--json')
    assert time.monotonic() - started < 60          # bounded, never a hang
    reason = next(a['reason'] for a in res.json['attempts']
                  if a['handler'] == 'iscsi_cor')
    assert expect in reason, reason
    fetched = cli('fetch', image_id, str(target), '--disk-format', 'qcow2',
                  '--config-file', conf, '--json')
    assert fetched.json['handler'] != 'iscsi_cor'
    assert not os.path.exists(target) or fetched.json['handler'] == 'stream_copy'

