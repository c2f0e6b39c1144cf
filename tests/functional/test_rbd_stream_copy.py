"""stream_copy reading rbd:// locations through librbd, against the lab's real Ceph.

When an image lives in RBD but cannot be cloned (a file target, another cluster),
the full copy reads the snapshot straight from RBD: holes are not read, the hash is
always verified, a killed copy resumes, and a location is still only a claim.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess

import pytest
import rados
import rbd

from image_handlers import exceptions
from image_handlers.copy import Checksum, CopyOptions, copy
from image_handlers.copy.rbd_source import RbdSource
from image_handlers.copy.source import TransientSourceError
from image_handlers.rbd import cluster as rbd_cluster
from tests.copy.helpers import checkpoint_offset, kill_9_at_checkpoint, wait_for
from tests.functional.conftest import VENV_BIN, image_bytes
from tools.lab import CephService

MiB = 1 << 20
# Data only in these [start, end) ranges; the rest of the image is zeros.
DATA_RANGES = ((0, 2 * MiB), (12 * MiB, 13 * MiB), (28 * MiB, 29 * MiB + 5))
SPARSE_SIZE = 32 * MiB


def sparse_image(seed: int) -> bytes:
    """Mostly zeros: 3 MiB of data in 32 MiB, so whole RBD objects are holes."""
    out = bytearray(SPARSE_SIZE)
    for start, end in DATA_RANGES:
        block = hashlib.sha512(f'{seed}:{start}'.encode()).digest()
        out[start:end] = (block * ((end - start) // 64 + 1))[:end - start]
    return bytes(out)


def write_rbd_image(conn: rados.Rados, pool: str, name: str, data: bytes) -> None:
    """Create ``pool/name`` holding ``data`` (only its data ranges are written, as
    a sparse upload would), with a protected snapshot 'snap', like glance_store."""
    with conn.open_ioctx(pool) as ioctx:
        rbd.RBD().create(ioctx, name, len(data), old_format=False)
        with contextlib.closing(rbd.Image(ioctx, name)) as img:
            for start, end in DATA_RANGES:
                img.write(data[start:end], start)
            img.create_snap('snap')
            img.protect_snap('snap')


def remove_rbd_image(conn: rados.Rados, pool: str, name: str) -> None:
    with conn.open_ioctx(pool) as ioctx:
        with contextlib.suppress(rbd.ImageNotFound):
            with contextlib.closing(rbd.Image(ioctx, name)) as img:
                for snap in img.list_snaps():
                    if img.is_protected_snap(snap['name']):
                        img.unprotect_snap(snap['name'])
                    img.remove_snap(snap['name'])
            rbd.RBD().remove(ioctx, name)


@pytest.fixture
def cluster(ceph_lab) -> rbd_cluster.Cluster:
    """The lab cluster through the project's own process-wide connection."""
    return rbd_cluster.get_cluster(
        rbd_cluster.ClusterSettings(ceph_conf=str(ceph_lab.conf_path), user='admin'))


@pytest.fixture(scope='module')
def foreign_ceph(ceph_lab):
    """A second, independent cluster (own fsid and keys) that Glance knows nothing of."""
    svc = CephService(name='test-foreign-rbd').start()
    conn = rados.Rados(conffile=str(svc.conf_path), rados_id='admin')
    conn.connect(timeout=10)
    svc.admin = conn
    yield svc
    conn.shutdown()
    svc.stop()


@pytest.fixture
def foreign_image(foreign_ceph):
    """Put an RBD image in the foreign cluster's pool images; removed after the test."""
    made = []

    def make(name: str, data: bytes) -> str:
        write_rbd_image(foreign_ceph.admin, 'images', name, data)
        made.append(name)
        return f'rbd://{foreign_ceph.fsid}/images/{name}/snap'

    yield make
    for name in made:
        remove_rbd_image(foreign_ceph.admin, 'images', name)


@pytest.fixture
def foreign_located(make_image, foreign_image, set_locations):
    """An image uploaded to the lab cluster through Glance, whose only location is
    then an RBD image of the same name in the foreign cluster holding ``stored``
    (default: the same bytes). Returns (image id, the foreign location)."""
    def make(data: bytes, stored: bytes | None = None) -> tuple[str, str]:
        image_id = make_image(data, backend='ceph')
        url = foreign_image(image_id, data if stored is None else stored)
        set_locations(image_id, [url])
        return image_id, url
    return make


def _attempts(out: dict, handler: str = 'stream_copy') -> list[dict]:
    return [a for a in out['attempts'] if a['handler'] == handler]


def _no_partials(directory) -> bool:
    return not [n for n in os.listdir(directory) if n.endswith(('.part', '.part.json'))]


# -- the lab cluster: a file target cannot be cloned, so RBD is read ------------------

def test_file_target_reads_the_rbd_location(make_image, nova_conf, cli, tmp_path,
                                            ceph_lab):
    data = sparse_image(seed=1)
    image_id = make_image(data, backend='ceph')
    target = tmp_path / 'disk.raw'
    res = cli('fetch', image_id, str(target), '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['handler'] == 'stream_copy' and out['zero_copy'] is False
    assert out['location'] == f'rbd://{ceph_lab.fsid}/images/{image_id}/snap'
    used = [a for a in out['attempts'] if a['outcome'] == 'used']
    assert 'through librbd' in used[0]['reason'], used
    assert 'cannot produce a file target' in _attempts(out, 'rbd_clone')[0]['reason']
    assert target.read_bytes() == data
    assert out['verified'] == 'sha512:' + hashlib.sha512(data).hexdigest()
    assert out['details']['rbd_bytes_read'] + out['details']['rbd_hole_bytes'] == len(data)
    # the zero megabytes were left as holes in the file
    assert os.stat(target).st_blocks * 512 <= 8 * MiB
    assert _no_partials(tmp_path)


def test_rbd_source_skips_holes_and_reads_from_any_offset(ceph_lab, rbd_admin,
                                                          cluster):
    """Holes in the snapshot are never read from the OSDs; every offset is exact."""
    data = sparse_image(seed=2)
    name = 'rbdsource-holes'
    write_rbd_image(rbd_admin, 'images', name, data)
    try:
        for offset in (0, 1 * MiB + 7, 5 * MiB, 12 * MiB - 3, SPARSE_SIZE):
            source = RbdSource(cluster, 'images', name, 'snap')
            stream = source.open(offset)
            try:
                assert (stream.start, stream.total) == (offset, SPARSE_SIZE)
                got = bytearray()
                buf = bytearray(3 * MiB)
                while n := stream.readinto(memoryview(buf)):
                    got += buf[:n]
            finally:
                stream.close()
            assert bytes(got) == data[offset:], offset
            if offset == 0:
                # 4 MiB objects: 0-4, 12-16 and 28-32 MiB hold data, the rest is
                # holes, given as zeros without a read.
                assert (source.bytes_read, source.hole_bytes) == (12 * MiB, 20 * MiB)
        ident = source.identity()
        assert {k: ident[k] for k in ('fsid', 'pool', 'image', 'snapshot', 'size')} == {
            'fsid': ceph_lab.fsid, 'pool': 'images', 'image': name, 'snapshot': 'snap',
            'size': SPARSE_SIZE}
        assert isinstance(ident['snap_id'], int) and ident['rbd_image_id']
    finally:
        remove_rbd_image(rbd_admin, 'images', name)


def test_missing_image_or_snapshot_is_a_source_error(cluster, rbd_admin):
    with pytest.raises(exceptions.SourceError) as err:
        RbdSource(cluster, 'images', 'no-such-image', 'snap').open(0)
    assert not isinstance(err.value, TransientSourceError)
    assert 'does not exist' in str(err.value)
    name = 'rbdsource-nosnap'
    write_rbd_image(rbd_admin, 'images', name, sparse_image(seed=3))
    try:
        with pytest.raises(exceptions.SourceError) as err:
            RbdSource(cluster, 'images', name, 'other').open(0)
        assert not isinstance(err.value, TransientSourceError)
        assert f'images/{name}@other' in str(err.value)
    finally:
        remove_rbd_image(rbd_admin, 'images', name)


class _FailingOnce(RbdSource):
    """The real source; its first stream's librbd read fails once past ``fail_at``."""

    def __init__(self, *args, fail_at: int, **kw):
        super().__init__(*args, **kw)
        self.fail_at = fail_at
        self.opened_at: list[int] = []

    def open(self, offset):
        stream = super().open(offset)
        self.opened_at.append(offset)
        if len(self.opened_at) == 1:
            real_read = stream._img.read

            def read(pos, length):
                if pos >= self.fail_at:
                    raise rbd.IOError('injected EIO from the OSD')
                return real_read(pos, length)
            stream._img = _ReadOverride(stream._img, read)
        return stream


class _ReadOverride:
    def __init__(self, img, read):
        self._img, self.read = img, read

    def __getattr__(self, name):
        return getattr(self._img, name)


def test_librbd_error_is_retried_from_the_exact_offset(cluster, rbd_admin, tmp_path):
    data = sparse_image(seed=4)
    name = 'rbdsource-eio'
    write_rbd_image(rbd_admin, 'images', name, data)
    try:
        source = _FailingOnce(cluster, 'images', name, 'snap', fail_at=28 * MiB)
        target = str(tmp_path / 'disk')
        opts = CopyOptions(buffer_size=1 * MiB, retry_backoff=0.01)
        result = copy(source, target, options=opts, expected_size=len(data),
                      checksum=Checksum('sha512', hashlib.sha512(data).hexdigest())
                      ).wait(60)
        assert result.retries == 1
        # The second stream starts where the first one's delivered bytes ended.
        assert source.opened_at == [0, 28 * MiB]
        with open(target, 'rb') as f:
            assert f.read() == data
    finally:
        remove_rbd_image(rbd_admin, 'images', name)


# -- a foreign cluster: read only when configured, matched by fsid --------------------

def test_foreign_cluster_read_when_configured(foreign_located, foreign_ceph, nova_conf,
                                              cli, tmp_path):
    data = sparse_image(seed=5)
    image_id, url = foreign_located(data)
    conf = nova_conf(f'rbd_source_ceph_confs = {foreign_ceph.conf_path}')
    target = tmp_path / 'disk.raw'
    res = cli('fetch', image_id, str(target), '--config-file', conf, '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['handler'] == 'stream_copy' and out['location'] == url
    used = [a for a in out['attempts'] if a['outcome'] == 'used'][0]
    assert f'cluster {foreign_ceph.fsid}, {foreign_ceph.conf_path}' in used['reason']
    assert target.read_bytes() == data
    assert out['verified'] == 'sha512:' + hashlib.sha512(data).hexdigest()
    # written sparsely there: the holes (20 of 32 MiB) were never read from the OSDs
    details = out['details']
    assert details['rbd_hole_bytes'] >= 20 * MiB
    assert details['rbd_bytes_read'] + details['rbd_hole_bytes'] == len(data)


def test_foreign_cluster_not_configured_is_refused(foreign_located, foreign_ceph, ceph_lab,
                                                  nova_conf, cli, tmp_path):
    data = sparse_image(seed=6)
    image_id, url = foreign_located(data)
    target = tmp_path / 'disk.raw'
    res = cli('explain', image_id, str(target), '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    rbd_verdict = [a for a in _attempts(res.json) if a['location'] == url][0]
    assert rbd_verdict['outcome'] == 'skipped'
    assert f'fsid {foreign_ceph.fsid} is not the fsid of any cluster' in rbd_verdict[
        'reason']
    assert f'known: {ceph_lab.fsid} ({ceph_lab.conf_path})' in rbd_verdict['reason']
    assert 'rbd_source_ceph_confs' in rbd_verdict['reason']
    # fetch falls back to Glance's image data API (Glance reads its own cluster)
    res = cli('fetch', image_id, str(target), '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    assert res.json['location'].startswith(f'glance:{image_id}')
    assert target.read_bytes() == data


def test_wrong_bytes_in_rbd_fail_the_hash_and_publish_nothing(
        foreign_located, foreign_ceph, nova_conf, cli, tmp_path):
    data = sparse_image(seed=7)
    image_id, url = foreign_located(data, stored=sparse_image(seed=8))  # other bytes
    conf = nova_conf(f'rbd_source_ceph_confs = {foreign_ceph.conf_path}')
    target = tmp_path / 'disk.raw'
    res = cli('fetch', image_id, str(target), '--config-file', conf, '--json')
    assert res.rc == 0, res
    out = res.json
    failed = [a for a in _attempts(out) if a['location'] == url][0]
    assert failed['outcome'] == 'failed'
    assert failed['reason'].startswith('ChecksumMismatch:')
    assert 'nothing was published' in failed['reason']
    # The next candidate (Glance's data API) started from byte 0: the bad partial was
    # deleted, not resumed; the published file holds the image's real bytes.
    assert out['location'].startswith(f'glance:{image_id}')
    assert out['details']['resumed_from'] == 0
    assert target.read_bytes() == data
    assert _no_partials(tmp_path)


# -- resume after kill -9 ---------------------------------------------------------------

def test_killed_rbd_copy_resumes(make_image, nova_conf, cli, tmp_path, ceph_lab):
    data = image_bytes(16 * MiB, seed=9)
    image_id = make_image(data, backend='ceph')
    target = str(tmp_path / 'disk.raw')
    slow = nova_conf('bandwidth_limit = 2097152\ncheckpoint_interval = 1048576\n'
                     'copy_buffer_size = 262144')
    seen = kill_9_at_checkpoint(
        [os.path.join(VENV_BIN, 'image-handlers'), 'fetch', image_id, target,
         '--config-file', slow], target, 2 * MiB,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    res = cli('fetch', image_id, target, '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['location'] == f'rbd://{ceph_lab.fsid}/images/{image_id}/snap'
    assert seen <= out['details']['resumed_from'] < len(data)
    assert out['bytes_copied'] == len(data) - out['details']['resumed_from']
    with open(target, 'rb') as f:
        assert f.read() == data
    assert out['verified'] == 'sha512:' + hashlib.sha512(data).hexdigest()


def test_a_copy_killed_reading_rbd_is_finished_from_glances_data_api(
        make_image, nova_conf, cli, tmp_path, ceph_lab):
    """The partial is bound to the image's hash, not to where it came from, so the
    second run may read another location (here the RBD pool is not allowed for
    it, so Glance's data API). Glance 33 answers 400 to a ranged GET of an image
    in its RBD store: the copy is then read whole and verified, not failed."""
    data = image_bytes(16 * MiB, seed=10)
    image_id = make_image(data, backend='ceph')
    target = str(tmp_path / 'disk.raw')
    slow = nova_conf('handlers = stream_copy\nbandwidth_limit = 2097152\n'
                     'checkpoint_interval = 1048576\ncopy_buffer_size = 262144')
    kill_9_at_checkpoint(
        [os.path.join(VENV_BIN, 'image-handlers'), 'fetch', image_id, target,
         '--config-file', slow], target, 2 * MiB,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    no_rbd = nova_conf('handlers = stream_copy\nrbd_allowed_source_pools = elsewhere')
    res = cli('fetch', image_id, target, '--config-file', no_rbd, '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['location'] == f'glance:{image_id} (image data API)'
    assert 'another location of the same image' in res.err
    assert 'refuses ranged reads' in res.err
    assert out['details']['restarts_from_zero'] == 1
    with open(target, 'rb') as f:
        assert f.read() == data


def test_checkpoint_of_a_recreated_image_is_discarded(cluster, rbd_admin, tmp_path):
    """Same pool, name and snapshot, same bytes, but another RBD image: the partial
    belongs to an object that no longer exists, so the copy starts over."""
    data = sparse_image(seed=10)
    name = 'rbdsource-recreated'
    write_rbd_image(rbd_admin, 'images', name, data)
    try:
        target = str(tmp_path / 'disk')
        checksum = Checksum('sha512', hashlib.sha512(data).hexdigest())
        slow = CopyOptions(buffer_size=256 << 10, checkpoint_interval=1 * MiB,
                           bandwidth_limit=4 * MiB)
        first = RbdSource(cluster, 'images', name, 'snap')
        task = copy(first, target, checksum=checksum, expected_size=len(data),
                    options=slow)
        wait_for(lambda: (checkpoint_offset(target) or 0) >= 2 * MiB or task.done,
                 'the copy to checkpoint 2 MiB', 60)
        task.cancel()
        with pytest.raises(exceptions.CopyCancelled):
            task.wait(60)
        assert checkpoint_offset(target) >= 2 * MiB

        remove_rbd_image(rbd_admin, 'images', name)
        write_rbd_image(rbd_admin, 'images', name, data)
        second = RbdSource(cluster, 'images', name, 'snap')
        result = copy(second, target, checksum=checksum, expected_size=len(data),
                      options=CopyOptions(retry_backoff=0.01)).wait(60)
        assert result.restarts_from_zero == 1 and result.resumed_from == 0
        assert second.identity()['rbd_image_id'] != first.identity()['rbd_image_id']
        with open(target, 'rb') as f:
            assert f.read() == data
    finally:
        remove_rbd_image(rbd_admin, 'images', name)
