"""Jobs: real worker processes running a real fill (qemu-img) on real qcow2 files.

A job outlives the process that started it, is resumed after its worker is killed
with SIGKILL, can be listed, waited for and cancelled, and its errors reach its
record and the log, never only a dead thread.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from image_handlers import api, exceptions
from image_handlers.jobs import runner
from image_handlers.jobs.model import CANCELLED, DONE, FAILED
from image_handlers.qemu import img

MiB = 1 << 20
VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / 'nova.conf'
    path.write_text(f'[image_handlers]\nstate_dir = {tmp_path / "state"}\n')
    return api.make_conf([str(path)])


def _base(tmp_path, size: int, seed: int = 1) -> tuple[str, bytes]:
    data = b''.join(hashlib.sha512(f'{seed}:{i}'.encode()).digest() * 16
                    for i in range(size // 1024))
    path = tmp_path / f'base-{seed}.raw'
    path.write_bytes(data)
    return str(path), data


def _overlay(tmp_path, base: str, name: str = 'disk.qcow2') -> str:
    disk = str(tmp_path / name)
    img.create_overlay(disk, base, 'raw')
    return disk


def _read_all(disk: str) -> bytes:
    """What a guest would read: the disk converted to raw by qemu itself."""
    out = disk + '.read.raw'
    subprocess.run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'raw', disk, out],
                   check=True, capture_output=True)
    try:
        with open(out, 'rb') as f:
            return f.read()
    finally:
        os.unlink(out)


def _pgrep(pattern: str) -> list[int]:
    out = subprocess.run(['pgrep', '-f', pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_fill_job_makes_an_overlay_independent_in_a_detached_worker(conf, tmp_path):
    base, data = _base(tmp_path, 8 * MiB)
    disk = _overlay(tmp_path, base)
    job = runner.submit(conf, 'overlay_fill', {'disk': disk, 'backing_format': 'raw',
                                               'expect_backing': base}, 'test fill')
    done = runner.wait(conf, job.id, timeout=120)
    assert done.state == DONE, done
    assert done.result['backing_file_was'] == base
    assert 'backing-filename' not in img.info(disk)
    os.unlink(base)                            # the source can go: nothing reads it
    assert _read_all(disk)[:len(data)] == data
    assert done.done_bytes == done.total_bytes == len(data)


def test_a_job_record_naming_another_backing_file_is_refused(conf, tmp_path):
    base, _ = _base(tmp_path, 1 * MiB)
    other, _ = _base(tmp_path, 1 * MiB, seed=2)
    disk = _overlay(tmp_path, base)
    job = runner.submit(conf, 'overlay_fill', {'disk': disk, 'expect_backing': other},
                        'mismatched fill')
    done = runner.wait(conf, job.id, timeout=60)
    assert done.state == FAILED
    assert f'backed by {base}, not {other}' in done.error
    assert img.info(disk)['backing-filename'] == base      # untouched
    log = open(os.path.join(runner.store(conf).directory, f'{job.id}.log')).read()
    assert 'failed' in log and job.id in log                # ERROR in the log too


def test_a_killed_worker_leaves_a_job_that_resume_finishes(conf, tmp_path):
    base, data = _base(tmp_path, 64 * MiB)
    disk = _overlay(tmp_path, base)
    jobs = runner.store(conf)
    # Record the job without a worker, then run a worker by hand and kill -9 it
    # while qemu-img copies: the record says "running" and nobody holds the lock.
    job = runner.submit(conf, 'overlay_fill', {'disk': disk}, 'killed fill')
    deadline = time.monotonic() + 30
    while jobs.get(job.id).state != 'running' and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in _pgrep(f'image_handlers.jobs.worker .*{job.id}'):
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while jobs.is_running(job.id) and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = jobs.get(job.id)
    if killed.state == DONE:
        pytest.skip('the fill finished before the kill landed; nothing to resume')
    assert killed.state == 'running' and not jobs.is_running(job.id)
    with pytest.raises(exceptions.ImageHandlerError, match='has no worker'):
        runner.wait(conf, job.id, timeout=5)

    resumed = runner.resume_orphans(conf)

    assert [j.id for j in resumed] == [job.id]
    done = runner.wait(conf, job.id, timeout=120)
    assert done.state == DONE and done.runs == 2
    os.unlink(base)
    assert _read_all(disk)[:len(data)] == data


def test_cancel_stops_a_running_fill_and_keeps_the_disk_usable(conf, tmp_path):
    base, data = _base(tmp_path, 64 * MiB)
    disk = _overlay(tmp_path, base)
    job = runner.submit(conf, 'overlay_fill', {'disk': disk}, 'cancelled fill')
    runner.cancel(conf, job.id)
    done = runner.wait(conf, job.id, timeout=60)
    if done.state == DONE:
        pytest.skip('the fill finished before the cancel landed')
    assert done.state == CANCELLED
    assert _read_all(disk)[:len(data)] == data      # still reads right through base


def test_jobs_command_lists_shows_and_waits(conf, tmp_path):
    base, _ = _base(tmp_path, 1 * MiB)
    disk = _overlay(tmp_path, base)
    job = runner.submit(conf, 'overlay_fill', {'disk': disk}, 'cli fill')
    cfg_file = conf.config_file[0]
    cmd = [os.path.join(VENV_BIN, 'image-handlers'), 'jobs', '--config-file', cfg_file]
    waited = subprocess.run(cmd[:2] + ['wait', job.id] + cmd[2:] + ['--json'],
                            capture_output=True, text=True, timeout=120)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)[0]['state'] == DONE
    listed = subprocess.run(cmd[:2] + ['list'] + cmd[2:], capture_output=True,
                            text=True, timeout=60)
    assert job.id in listed.stdout and 'overlay_fill' in listed.stdout
    bad = subprocess.run(cmd[:2] + ['show', 'not-a-job'] + cmd[2:],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and 'is not a job id' in bad.stderr


def test_unknown_kind_is_refused_before_anything_is_recorded(conf):
    with pytest.raises(exceptions.ConfigError, match="no job kind 'nope'"):
        runner.submit(conf, 'nope', {}, 'x')
    assert runner.store(conf).all() == []
