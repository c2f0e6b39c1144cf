"""The lab's real Ceph (tools/lab/ceph.py): a 1 mon + 1 memstore OSD cluster on loopback.

Real librados/librbd from the venv (Debian's bindings), real ``ceph``/``rbd`` CLIs:
an RBD image -> protected snapshot -> clone into another pool round trip, a second
("foreign") cluster with its own fsid, and stop leaving no daemon and no file behind.
"""
from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
import rados
import rbd

from tools.lab.ceph import CephService

MiB = 1 << 20
# Instance names of their own: the tests never reuse (then stop) a developer's cluster.
MAIN, FOREIGN, CRASH = 'test-ceph', 'test-ceph-foreign', 'test-ceph-crash'


def _procs_of(svc: CephService) -> list[str]:
    """Command lines of live processes naming the service's work dir (pgrep -af)."""
    out = subprocess.run(['pgrep', '-af', str(svc.workdir)], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if 'pgrep' not in line]


def _cli(svc: CephService, *argv: str) -> str:
    proc = subprocess.run(argv, env={**os.environ, **svc.env()}, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, f'{argv}: rc={proc.returncode}\n{proc.stderr}'
    return proc.stdout


def _start_fresh(name: str) -> CephService:
    svc = CephService(name=name)
    svc.stop()  # leftovers of an interrupted run
    return svc.start()


@pytest.fixture(scope='module')
def ceph():
    # Prove the daemons ignore the caller's CEPH_* environment: if they honoured these,
    # osd.0 would log in as someone else with a missing keyring and start would fail.
    saved = {k: os.environ.get(k) for k in ('CEPH_CONF', 'CEPH_KEYRING', 'CEPH_ARGS')}
    os.environ.update(CEPH_CONF='/nonexistent/ceph.conf',
                      CEPH_KEYRING='/nonexistent/keyring', CEPH_ARGS='--id nobody')
    try:
        svc = _start_fresh(MAIN)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield svc
    workdir = svc.workdir
    svc.stop()
    assert not workdir.exists()


@pytest.fixture
def cluster(ceph):
    conn = rados.Rados(conffile=str(ceph.conf_path), rados_id='admin')
    conn.connect(timeout=10)
    yield conn
    conn.shutdown()


def test_started_quickly_and_healthy(ceph):
    assert ceph.is_running() and ceph.is_healthy() and not ceph.reused
    assert _cli(ceph, 'ceph', 'health').startswith('HEALTH_OK')
    osd_stat = json.loads(_cli(ceph, 'ceph', 'osd', 'stat', '-f', 'json'))
    assert (osd_stat['num_osds'], osd_stat['num_up_osds'], osd_stat['num_in_osds']) == (1, 1, 1)
    pools = {p['pool_name']: p for p in json.loads(
        _cli(ceph, 'ceph', 'osd', 'pool', 'ls', 'detail', '-f', 'json'))}
    assert set(pools) == {'images', 'vms'}
    for pool in pools.values():
        assert (pool['size'], pool['min_size'], pool['pg_num']) == (1, 1, 8)
        assert 'rbd' in pool['application_metadata']
    mon_map = json.loads(_cli(ceph, 'ceph', 'mon', 'dump', '-f', 'json'))
    assert mon_map['fsid'] == ceph.fsid
    addrs = [a['addr'] for a in mon_map['mons'][0]['public_addrs']['addrvec']]
    assert all(a.startswith('127.0.0.1:') for a in addrs)
    assert ceph.mon_host == '[v2:{},v1:{}]'.format(*addrs)


def test_daemons_share_one_process_group_and_no_ceph_env(ceph):
    mon, osd = ceph.daemon_pid('mon'), ceph.daemon_pid('osd')
    assert mon and osd and mon != osd
    assert os.getpgid(mon) == os.getpgid(osd) == ceph.pid()
    for pid in (mon, osd):
        environ = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
        assert not [e for e in environ if e.split(b'=')[0] in
                    (b'CEPH_CONF', b'CEPH_KEYRING', b'CEPH_ARGS')]
    assert open(f'/proc/{osd}/cmdline', 'rb').read().split(b'\0')[0] == b'/usr/bin/ceph-osd'


def test_client_conf(ceph, cluster):
    assert cluster.get_fsid() == ceph.fsid
    assert {'images', 'vms'} <= set(cluster.list_pools())
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(ceph.conf_path)
    assert conf['client']['keyring'] == str(ceph.keyring_path)
    assert conf['global']['mon host'] == ceph.mon_host
    assert conf['global']['fsid'] == ceph.fsid
    # daemon-only paths stay out of [global] (a global admin socket breaks parallel
    # clients; a global keyring would be used by the daemons too)
    for key in ('keyring', 'admin socket', 'pid file', 'log file'):
        assert key not in conf['global']
    assert conf['osd']['osd objectstore'] == 'memstore'
    assert '[client.admin]' in ceph.keyring_path.read_text()


def test_rbd_clone_round_trip(ceph, cluster):
    name, clone_name = f'img-{uuid.uuid4().hex[:8]}', f'disk-{uuid.uuid4().hex[:8]}'
    size = 64 * MiB
    chunks = {0: os.urandom(MiB), 32 * MiB + 4096: os.urandom(256 * 1024),
              size - 4096: os.urandom(4096)}
    images, vms = cluster.open_ioctx('images'), cluster.open_ioctx('vms')
    try:
        rbd.RBD().create(images, name, size, old_format=False,
                         features=rbd.RBD_FEATURE_LAYERING)
        with rbd.Image(images, name) as img:
            for off, data in chunks.items():
                assert img.write(data, off) == len(data)
            img.create_snap('snap')
            img.protect_snap('snap')
            assert img.is_protected_snap('snap')
        rbd.RBD().clone(images, name, 'snap', vms, clone_name,
                        features=rbd.RBD_FEATURE_LAYERING)
        assert clone_name in rbd.RBD().list(vms)
        with rbd.Image(vms, clone_name) as clone:
            assert clone.size() == size
            for off, data in chunks.items():
                assert clone.read(off, len(data)) == data
            assert clone.read(8 * MiB, MiB) == bytes(MiB)  # never written: zeros
            spec = clone.get_parent_image_spec()
            assert (spec['pool_name'], spec['image_name'], spec['snap_name']) == (
                'images', name, 'snap')
            # copy-on-write: writing the clone leaves the parent snapshot untouched
            clone.write(b'\xff' * 4096, 0)
            assert clone.read(0, 4096) == b'\xff' * 4096
        with rbd.Image(images, name, snapshot='snap', read_only=True) as snap:
            assert snap.read(0, 4096) == chunks[0][:4096]
        info = _cli(ceph, 'rbd', 'info', f'vms/{clone_name}')
        assert f'parent: images/{name}@snap' in info
        assert clone_name in _cli(ceph, 'rbd', 'children', f'images/{name}@snap')
    finally:
        for ioctx, img_name in ((vms, clone_name), (images, name)):
            try:
                if ioctx is images:
                    with rbd.Image(images, name) as img:
                        if 'snap' in [s['name'] for s in img.list_snaps()]:
                            img.unprotect_snap('snap')
                            img.remove_snap('snap')
                rbd.RBD().remove(ioctx, img_name)
            except rbd.ImageNotFound:
                pass
        images.close()
        vms.close()
    with cluster.open_ioctx('images') as ioctx:
        assert name not in rbd.RBD().list(ioctx)


def test_foreign_cluster_runs_beside_and_stops_clean(ceph, cluster):
    marker = f'mark-{uuid.uuid4().hex[:8]}'
    with cluster.open_ioctx('images') as ioctx:
        rbd.RBD().create(ioctx, marker, 4 * MiB)
    other = _start_fresh(FOREIGN)
    try:
        assert other.fsid != ceph.fsid
        assert other.mon_host != ceph.mon_host
        assert not {other.state['mon_port_v2'], other.state['mon_port_v1']} & {
            ceph.state['mon_port_v2'], ceph.state['mon_port_v1']}
        conn = rados.Rados(conffile=str(other.conf_path), rados_id='admin')
        conn.connect(timeout=10)
        try:
            assert conn.get_fsid() == other.fsid
            with conn.open_ioctx('images') as ioctx:
                assert marker not in rbd.RBD().list(ioctx)  # really another cluster
        finally:
            conn.shutdown()
        # keys are per cluster: the main cluster's admin key is refused by the other
        wrong = rados.Rados(conffile=str(other.conf_path), rados_id='admin',
                            conf={'keyring': str(ceph.keyring_path)})
        with pytest.raises(rados.Error):
            wrong.connect(timeout=5)
        wrong.shutdown()
        assert _procs_of(other)
    finally:
        workdir = other.workdir
        other.stop()
        with cluster.open_ioctx('images') as ioctx:
            rbd.RBD().remove(ioctx, marker)
    assert _procs_of(other) == []
    assert not workdir.exists()
    # the main cluster is untouched
    assert ceph.is_healthy() and cluster.get_fsid() == ceph.fsid


def test_reuses_a_running_cluster(ceph):
    again = CephService(name=MAIN).start()
    assert again.reused
    assert again.fsid == ceph.fsid and again.daemon_pid('osd') == ceph.daemon_pid('osd')


def test_dead_osd_takes_the_cluster_down():
    svc = _start_fresh(CRASH)
    try:
        mon, osd = svc.daemon_pid('mon'), svc.daemon_pid('osd')
        os.kill(osd, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while svc.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not svc.is_running()  # the supervisor killed the mon too: no half cluster
        assert not os.path.exists(f'/proc/{mon}/cmdline') or \
            open(f'/proc/{mon}/cmdline', 'rb').read() == b''
    finally:
        svc.stop()
    assert _procs_of(svc) == [] and not svc.workdir.exists()


def test_osd_memory_stays_small(ceph):
    """memstore keeps data in the OSD's RAM; the tests write only a few MiB."""
    rss = ceph.osd_rss_kib()
    assert rss is not None and rss < 1024 * 1024, f'osd RSS {rss} KiB'
    print(f'\nosd RSS after the tests: {rss / 1024:.0f} MiB; '
          f'start {ceph.state["start_seconds"]} s {ceph.state["phases"]}')
