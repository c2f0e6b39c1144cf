"""Load and soak, reduced (issue 11): the checks of bench/soak.py, smaller.

4 requests for one image (threads sharing one chain, then image-handlers
processes) make 4 disks from one transfer, counted by nginx's own access log (and
4 verified clones of a new image read its snapshot once, counted by the OSD); 4
images at once (2 in threads, 2 in processes) stay within the host's
bandwidth_limit, counted at a relay in front of nginx; 50 rbd_clone disks in a
row and 20 parallel explains leave descriptors, threads, RSS, rados.Rados
objects and connections to the cluster within bench.soak.BOUNDS. The full run:
``.venv/bin/python -m bench.soak`` (16 requests, 16 images, 1000 clones, 200
explains). Everything runs against the session's real lab (Ceph, Glance behind
Keystone, nginx); nothing is replaced.
"""
from __future__ import annotations

import shutil

import pytest

from bench import soak

MiB = 1 << 20


@pytest.fixture(scope='module')
def lab(glance, nginx_lab, ceph_lab, glance_lab, tmp_path_factory):
    import rados
    work = tmp_path_factory.mktemp('load')
    admin = rados.Rados(conffile=str(ceph_lab.conf_path), rados_id='admin')
    admin.connect(timeout=10)
    the_lab = soak.Lab(
        glance=glance, nginx=nginx_lab, admin=admin, work=str(work),
        conf_text=glance_lab.nova_conf() + '\n[libvirt]\nimages_rbd_pool = vms\n'
        f'images_rbd_ceph_conf = {ceph_lab.conf_path}\nrbd_user = admin\n')
    yield the_lab
    left = the_lab.remove_images()
    admin.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    assert not left


@pytest.mark.parametrize('mode', ['threads', 'processes'])
def test_four_requests_for_one_image_are_one_transfer_and_four_disks(lab, mode):
    row = soak.one_image_many_requests(lab, 4, 8 * MiB, mode)
    assert row['problems'] == [], row
    assert row['source_gets'] == 1 and row['source_bytes'] == 8 * MiB
    assert row['methods'] == {'copy': 1, 'local copy': 3}
    assert row['disks_verified'] == row['distinct_files'] == 4


def test_four_first_clones_at_once_read_the_snapshot_once(lab):
    """rbd_verify_snapshots: 4 requests for a new image verify it with one read,
    counted by the OSD itself (op_out_bytes), not 4 (the others wait for the
    verdict)."""
    row = soak.one_image_many_clones(lab, 4, 8 * MiB)
    assert row['problems'] == [], row
    assert 1.0 <= row['image_reads'] < 1.5


def test_four_images_at_once_stay_within_the_hosts_bandwidth_limit(lab):
    """2 copies in this process and 2 in image-handlers processes share one limit
    (4 MiB/s; 8 MiB images, twice one burst): what nginx served through the relay
    stays within limit x elapsed + one burst + one read slice per copy."""
    row = soak.many_images_under_limit(lab, 4, 8 * MiB, 4 * MiB)
    assert row['problems'] == [], row
    assert row['relayed_bytes'] == row['nginx_bytes'] == 4 * 8 * MiB
    assert row['relayed_bytes'] <= row['allowed_bytes']


def test_fifty_clones_in_a_row_leak_nothing(lab):
    """rbd_clone through the real chain (every tenth through api.fetch, a fresh
    chain), each clone removed; after a warm-up of 20, nothing grows past
    bench.soak.BOUNDS and the chain keeps one RADOS connection."""
    row = soak.clone_soak(lab, 50, warmup=20, every=10)
    assert row['problems'] == [], row
    assert row['growth']['rados_objects'] == 0 and row['growth']['ceph_sockets'] <= 0
    assert row['before']['ceph_sockets'] > 0     # the sampling does see them


def test_twenty_parallel_explains_leak_nothing(lab):
    row = soak.parallel_explains(lab, 20)
    assert row['problems'] == [], row
    assert row['handlers'] == {'rbd_clone': 10, 'stream_copy': 10}
    assert row['peak']['py_threads'] >= row['before']['py_threads'] + 20  # at once
