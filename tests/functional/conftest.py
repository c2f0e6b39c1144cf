"""Fixtures over the real lab: a Glance 33 API server and nginx on loopback.

Services start once per test session and stop at its end (nothing left behind).
Tests talk to them with the real clients and run the real ``image-handlers`` command.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import uuid

import pytest

from tools.lab import CephService, GlanceService
from tools.lab.nginx import NginxService

VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope='session')
def ceph_lab():
    svc = CephService().start()
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def glance_lab(keystone_lab, ceph_lab, xfs_lab, btrfs_lab, ext4_lab, gluster_lab):
    """The lab's Glance 33 behind the real Keystone (keystonemiddleware's auth_token,
    registered in the catalog as image): stores fs (default), http, rbd ("ceph", on
    the lab cluster) and a file store on each lab mount (xfs, btrfs, ext4, gluster:
    an upload with backend=NAME lands in ``<mount>/images/<id>`` with location
    metadata {id, mountpoint, store}). Clients: ``.keystone_client(user, project)``;
    ``.nova_conf()`` is nova.conf as devstack writes it for this cloud."""
    mounted = {'xfs': xfs_lab, 'btrfs': btrfs_lab, 'ext4': ext4_lab, 'gluster': gluster_lab}
    stores = {name: (fs.mountpoint / GLANCE_FS_DATADIR,
                     {'id': FS_IDS[name], 'mountpoint': str(fs.mountpoint)})
              for name, fs in mounted.items()}
    svc = GlanceService(name='glance-ks', keystone=keystone_lab, ceph=ceph_lab,
                        file_stores=stores).start()
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def nginx_lab():
    svc = NginxService().start()
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def glance(glance_lab):
    """glanceclient as the nova service user (service and admin roles), through
    Keystone and the catalog."""
    return glance_lab.keystone_client('nova', 'service')


def image_bytes(size: int, seed: int = 1, zero_every: int = 3) -> bytes:
    """Deterministic test data with all-zero runs (so sparse writing matters)."""
    block = 1 << 20
    out = bytearray()
    i = 0
    while len(out) < size:
        if i % zero_every == 1:
            out += bytes(block)
        else:
            out += hashlib.sha512(f'{seed}:{i}'.encode()).digest() * (block // 64)
        i += 1
    return bytes(out[:size])


@pytest.fixture
def make_image(glance):
    """Create (and upload, unless data is None) an image; deleted after the test."""
    created = []

    def make(data: bytes | None, disk_format: str = 'raw', backend: str | None = None,
             **props) -> str:
        img = glance.images.create(name=f'test-{uuid.uuid4().hex[:8]}',
                                   disk_format=disk_format, container_format='bare',
                                   **props)
        created.append(img['id'])
        if data is not None:
            glance.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                 backend=backend)
        return img['id']

    yield make
    for image_id in created:
        try:
            glance.images.delete(image_id)
        except Exception:  # already gone (a test deleted it)
            pass


@pytest.fixture
def nova_conf(tmp_path, glance_lab, ceph_lab):
    """Write a nova.conf for the lab; extra lines go into [image_handlers].

    The RBD settings come from Nova's own [libvirt] options, as in production.
    """
    def write(extra: str = '') -> str:
        path = tmp_path / f'nova-{uuid.uuid4().hex[:6]}.conf'
        path.write_text(
            glance_lab.nova_conf()
            + '\n[libvirt]\nimages_rbd_pool = vms\n'
            + f'images_rbd_ceph_conf = {ceph_lab.conf_path}\nrbd_user = admin\n'
            + f'\n[image_handlers]\nstate_dir = {tmp_path / "state"}\n'
            + 'progress_interval = 0.5\ncopy_retry_backoff = 0.05\n' + extra + '\n')
        return str(path)
    return write


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc, self.out, self.err = proc.returncode, proc.stdout, proc.stderr

    @property
    def json(self) -> dict:
        return json.loads(self.out)

    def __repr__(self):
        return f'rc={self.rc}\nstdout:\n{self.out}\nstderr:\n{self.err}'


@pytest.fixture
def cli():
    """Run the installed ``image-handlers`` command."""
    def run(*args: str, timeout: float = 300) -> CliResult:
        proc = subprocess.run([os.path.join(VENV_BIN, 'image-handlers'), *args],
                              capture_output=True, text=True, timeout=timeout)
        return CliResult(proc)
    return run


@pytest.fixture
def set_locations(glance_lab):
    """Rewrite an image's location rows in the lab Glance's real database.

    Glance refuses some hostile or malformed URLs through its API but accepts others
    (LAB-NOTES: forged fsids, other pools, other images' names); real databases also
    hold rows from old releases and other stores. Editing the row reproduces exactly
    what Glance then serves to the handlers.
    """
    import sqlite3

    def rewrite(image_id: str, urls: list[str]) -> None:
        db = sqlite3.connect(glance_lab.workdir / 'glance.sqlite')
        with db:
            row = db.execute('select meta_data, status, created_at, deleted from '
                             'image_locations where image_id = ? and deleted = 0',
                             (image_id,)).fetchone()
            db.execute('delete from image_locations where image_id = ?', (image_id,))
            for url in urls:
                db.execute('insert into image_locations (image_id, value, meta_data, '
                           'status, created_at, deleted) values (?, ?, ?, ?, ?, ?)',
                           (image_id, url, *row))
        db.close()
    return rewrite


@pytest.fixture
def rbd_admin(ceph_lab):
    """An admin RADOS connection to the lab cluster, for checking results."""
    import rados
    conn = rados.Rados(conffile=str(ceph_lab.conf_path), rados_id='admin')
    conn.connect(timeout=10)
    yield conn
    conn.shutdown()


@pytest.fixture
def http_image(glance, nginx_lab, tmp_path):
    """An image whose only location is a file on nginx (Glance's http store).

    Added as a location, the bytes skip the safety checks Glance runs on uploads,
    as they would for any image whose data lives outside Glance.
    """
    created = []

    def make(data: bytes, with_hash: bool = True,
             disk_format: str = 'raw') -> tuple[str, str]:
        src = tmp_path / f'src-{len(created)}.{disk_format}'
        src.write_bytes(data)
        url = nginx_lab.publish(src)
        img = glance.images.create(disk_format=disk_format, container_format='bare')
        created.append(img['id'])
        validation = ({'os_hash_algo': 'sha512',
                       'os_hash_value': hashlib.sha512(data).hexdigest(),
                       'checksum': hashlib.md5(data).hexdigest()} if with_hash else None)
        glance.images.add_location(img['id'], url, {}, validation_data=validation)
        return img['id'], url

    yield make
    for image_id in created:
        glance.images.delete(image_id)


# -- shared file systems (shared_fs) ---------------------------------------------------
# XFS (reflink), btrfs and ext4 on loop devices, a one-brick GlusterFS volume through
# FUSE, each with the identity marker an operator writes, and a Glance ("glance-fs",
# beside glance_lab) with a file store on each of them.
from tools.lab import GlusterService, LoopFsService, write_fs_marker  # noqa: E402

FS_IDS = {'xfs': 'xfs-images', 'btrfs': 'btrfs-images', 'ext4': 'ext4-images',
          'gluster': 'gluster-images'}
GLANCE_FS_DATADIR = 'images'  # each file store's datadir, under its mount point


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'own_gluster: starts its own lab gluster, so it runs first in the '
        'session, before gluster_lab holds the one glusterd a machine can run')


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker('own_gluster') is None)


def _with_marker(svc, fs_id: str):
    svc.start()
    write_fs_marker(svc.mountpoint, fs_id)
    return svc


@pytest.fixture(scope='session')
def xfs_lab():
    """XFS with reflink on a loop device; ``.mountpoint``; marker 'xfs-images'."""
    svc = _with_marker(LoopFsService('xfs'), FS_IDS['xfs'])
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def btrfs_lab():
    """btrfs on a loop device; ``.mountpoint``; marker 'btrfs-images'."""
    svc = _with_marker(LoopFsService('btrfs'), FS_IDS['btrfs'])
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def ext4_lab():
    """ext4 (no reflink) on a loop device; ``.mountpoint``; marker 'ext4-images'."""
    svc = _with_marker(LoopFsService('ext4'), FS_IDS['ext4'])
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def gluster_lab():
    """A GlusterFS volume FUSE-mounted at ``.mountpoint``; marker 'gluster-images'.

    Only one lab gluster can run per machine (tools/lab/gluster.py), so runs with
    their own IH_LAB_RUN_DIR may share one: ``IH_LAB_GLUSTER_RUN_DIR=DIR`` reuses
    (or starts) the gluster of that run dir and leaves it running afterwards."""
    shared = os.environ.get('IH_LAB_GLUSTER_RUN_DIR')
    svc = _with_marker(GlusterService(run_dir=shared) if shared else GlusterService(),
                       FS_IDS['gluster'])
    yield svc
    if not shared:
        svc.stop()


@pytest.fixture(scope='session')
def glance_fs_lab(glance_lab):
    """The lab's Glance (it has a file store on each lab mount)."""
    return glance_lab


@pytest.fixture(scope='session')
def glance_fs(glance):
    return glance


# -- identity: a real Keystone and Barbican, and a Glance behind them ------------------
# Keystone 30 (accounts: tools/lab/keystone.py's docstring), Barbican 23 behind its
# auth_token (registered as key-manager), and Glance "glance-ks" with keystonemiddleware
# in place of the lab tokens (registered as image).
from tools.lab import BarbicanService, KeystoneService  # noqa: E402


@pytest.fixture(scope='session')
def keystone_lab():
    """Keystone: ``.auth_url``, ``.session(user, project)``, ``.token(user, project)``."""
    svc = KeystoneService().start()
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def barbican_lab(keystone_lab):
    """Barbican behind keystone_lab, in its catalog as key-manager; ``.endpoint``."""
    svc = BarbicanService(keystone_lab).start()
    yield svc
    svc.stop()


@pytest.fixture(scope='session')
def glance_ks_lab(glance_lab):
    """The lab's Glance, behind keystone_lab (the name the identity tests use)."""
    return glance_lab
