"""A full disk, on real small file systems (ext4 and XFS on loop devices, the lab's
LoopFsService), with the real ``image-handlers`` command and the lab's nginx.

What an operator wants from a copy that does not fit (doc/reliability.rst,
"A full disk", says why): a refusal BEFORE anything is written when the free space
is below what the rest of the image may need (its size less what a partial already
holds, holes unknown until read), naming the file system, the bytes needed and
free, and what to do; nothing published; a resumable partial kept untouched, an
empty one removed. When the disk fills DURING a copy (someone else took the space),
the partial is removed at once (a full disk hurts every instance on the host) and
nothing is published. A checkpoint write that hits ENOSPC leaves the previous
checkpoint whole and no temporary file.

The disk is filled with fallocate'd ballast (real blocks, no data written).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest

from image_handlers import exceptions
from image_handlers.copy import Checksum, CopyOptions, checkpoint, copy
from image_handlers.copy.checkpoint import Checkpoint, CopyPaths
from tests.copy.fault_server import FaultServer
from tools.lab import LoopFsService

MiB = 1 << 20
CLI = os.path.join(os.path.dirname(sys.executable), 'image-handlers')


def _data(size: int) -> bytes:
    return b''.join(hashlib.sha512(b'%d' % i).digest() * (MiB // 64)
                    for i in range(size // MiB))


@pytest.fixture(scope='module')
def small_fs():
    """ext4 (16 MiB, no root reserve) and XFS (300 MiB, its minimum; ballast makes
    it small), each mounted on a loop device."""
    started = {'ext4': LoopFsService('ext4', size_mib=16, name='ext4-full',
                                     mkfs_args=('-m', '0')).start(),
               'xfs': LoopFsService('xfs', size_mib=300, name='xfs-full').start()}
    yield started
    for svc in started.values():
        svc.stop()


@pytest.fixture
def fs_dir(small_fs, request):
    """An empty directory on the file system named by the test's parameter; the
    ballast and everything else in it removed afterwards."""
    svc = small_fs[request.param]
    directory = svc.mountpoint / request.node.name.replace('[', '-').rstrip(']')
    directory.mkdir()
    yield svc, directory
    subprocess.run(['rm', '-rf', str(directory)], check=True)


def _leave_free(directory, free: int) -> None:
    """fallocate a ballast file so that about ``free`` bytes (plus what the file
    system needs for the ballast's own extents, up to 1 MiB) stay free."""
    ballast = directory / 'ballast'
    size = ballast.stat().st_size if ballast.exists() else 0
    size += max(0, _free(directory) - free)
    for _ in range(16):
        if subprocess.run(['fallocate', '-l', str(size), str(ballast)],
                          capture_output=True).returncode == 0:
            return
        size -= 64 * 1024
    raise AssertionError(f'cannot fill {directory} to {free} free bytes')


def _free(directory) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _published(nginx_lab, tmp_path, data: bytes, name: str) -> str:
    src = tmp_path / name
    src.write_bytes(data)
    return nginx_lab.publish(src, name)


@pytest.mark.parametrize('fs_dir', ['ext4', 'xfs'], indirect=True)
def test_a_copy_that_cannot_fit_is_refused_before_writing(fs_dir, nginx_lab, tmp_path):
    svc, directory = fs_dir
    data = _data(12 * MiB)
    url = _published(nginx_lab, tmp_path, data, f'full-{svc.fs_type}.raw')
    _leave_free(directory, 6 * MiB)
    free = _free(directory)
    target = directory / 'disk.raw'

    res = subprocess.run([CLI, 'copy', url, str(target), '--checksum',
                          'sha512:' + hashlib.sha512(data).hexdigest()],
                         capture_output=True, text=True, timeout=120)

    assert res.returncode != 0
    message = res.stderr
    assert f'the {svc.fs_type} file system mounted at {svc.mountpoint}' in message
    assert f'needs up to {len(data)} more bytes' in message
    assert 'are free' in message and 'free at least' in message
    assert 'nothing was written or published' in message
    # what was free then, to a few blocks (the CLI's own log may take a block)
    said = int(message.split(f'{len(data)}, holes are only known once read) and ')[1]
               .split(' ')[0])
    assert abs(said - free) <= 64 * 1024
    assert sorted(os.listdir(directory)) == ['ballast']    # no partial, no target


@pytest.mark.parametrize('fs_dir', ['ext4'], indirect=True)
def test_a_resumable_partial_is_kept_when_the_rest_does_not_fit_then_resumes(
        fs_dir, tmp_path):
    """A partial of 4 MiB from an earlier (interrupted) copy; 8 MiB more needed,
    6 free: refused with the partial and its checkpoint untouched; once space is
    freed the same copy resumes from it."""
    _svc, directory = fs_dir
    data = _data(12 * MiB)
    server = FaultServer(data, '/image')
    try:
        server.faults.pause_after = 4 * MiB
        target = directory / 'disk.raw'
        options = CopyOptions(buffer_size=256 << 10, checkpoint_interval=1 * MiB,
                              retries=0, read_timeout=0.5, retry_backoff=0.0)
        sha = Checksum('sha512', hashlib.sha512(data).hexdigest())
        with pytest.raises(exceptions.RetriesExhausted):
            copy(server.url, str(target), checksum=sha, expected_size=len(data),
                 options=options).wait(60)
        paths = CopyPaths.for_target(str(target))
        kept = checkpoint.load(paths)
        assert kept is not None and kept.offset == 4 * MiB
        server.faults.pause_after = None
        server.resume.set()
        _leave_free(directory, 6 * MiB)
        before = _contents(directory)
        requests = len(server.requests)

        with pytest.raises(exceptions.DiskFull) as err:
            copy(server.url, str(target), checksum=sha, expected_size=len(data),
                 options=options).wait(60)

        assert f'needs up to {8 * MiB} more bytes' in str(err.value)
        assert 'is kept and the next copy resumes from it' in str(err.value)
        assert _contents(directory) == before
        assert checkpoint.load(paths).offset == 4 * MiB
        assert len(server.requests) == requests        # refused before asking

        os.unlink(directory / 'ballast')
        result = copy(server.url, str(target), checksum=sha, expected_size=len(data),
                      options=options).wait(60)
        assert result.resumed_from == 4 * MiB
        assert target.read_bytes() == data
        assert sorted(os.listdir(directory)) == ['disk.raw']
    finally:
        server.stop()


@pytest.mark.parametrize('fs_dir', ['ext4', 'xfs'], indirect=True)
def test_disk_filling_up_during_a_copy_removes_the_partial_and_publishes_nothing(
        fs_dir, tmp_path):
    """The space is there when the copy starts; another writer takes it while the
    copy waits for the server: ENOSPC, a clear error, nothing left but the
    ballast."""
    svc, directory = fs_dir
    data = _data(8 * MiB)
    server = FaultServer(data, '/image')
    try:
        server.faults.pause_after = 2 * MiB
        target = directory / 'disk.raw'
        task = copy(server.url, str(target),
                    checksum=Checksum('sha512', hashlib.sha512(data).hexdigest()),
                    options=CopyOptions(buffer_size=256 << 10,
                                        checkpoint_interval=1 * MiB, read_timeout=20))
        partial = directory / '.disk.raw.part'
        _wait(lambda: partial.exists() and task.progress[0] >= 2 * MiB)
        _leave_free(directory, 0)
        server.faults.pause_after = None
        server.resume.set()

        with pytest.raises(exceptions.DiskFull) as err:
            task.wait(60)

        message = str(err.value)
        assert f'{svc.fs_type} file system mounted at {svc.mountpoint}' in message
        assert 'the partial copy was deleted' in message
        assert str(len(data)) in message and 'free some space' in message
        assert sorted(os.listdir(directory)) == ['ballast']
    finally:
        server.stop()


@pytest.mark.parametrize('fs_dir', ['ext4'], indirect=True)
def test_a_checkpoint_write_hitting_enospc_keeps_the_last_checkpoint_whole(fs_dir):
    _svc, directory = fs_dir
    paths = CopyPaths.for_target(str(directory / 'disk.raw'))
    (directory / '.disk.raw.part').write_bytes(b'x' * 4096)
    good = Checkpoint(offset=4096, expected_size=8192, checksum='sha512:' + '0' * 128,
                      source={'url': 'http://127.0.0.1:1/image'})
    checkpoint.save(paths, good)
    before = (directory / '.disk.raw.part.json').read_bytes()
    _leave_free(directory, 0)
    filler = directory / 'filler'
    with open(filler, 'wb') as f:       # the last blocks fallocate left
        try:
            while True:
                f.write(b'\1' * 4096)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC

    with pytest.raises(OSError) as err:
        checkpoint.save(paths, Checkpoint(**{**good.__dict__, 'offset': 8192}))

    assert err.value.errno == errno.ENOSPC
    assert (directory / '.disk.raw.part.json').read_bytes() == before
    assert json.loads(before)['offset'] == 4096 == checkpoint.load(paths).offset
    assert not os.path.exists(paths.checkpoint_tmp)


def _contents(directory) -> dict[str, tuple[int, str]]:
    """Size and sha256 of each file but the ballast (fallocate'd, never read)."""
    return {n: (os.path.getsize(directory / n),
                hashlib.sha256((directory / n).read_bytes()).hexdigest())
            for n in sorted(os.listdir(directory)) if n != 'ballast'}


def _wait(predicate, timeout: float = 30.0) -> None:
    """A bounded wait for a state, not a timing check."""
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out waiting'
        time.sleep(0.01)
