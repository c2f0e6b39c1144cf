"""Partial RBD clones a failed request left (``NAME.image_handlers-partial``) on the
lab's real Ceph: ``rbd/partials.sweep`` and ``image-handlers cleanup`` remove the
ones no request works on and keep one a client has open (a real watcher) and one
made a moment ago. Ages past MIN_AGE are reached by the sweep's clock argument (the
clone's create_timestamp is Ceph's own), not by waiting a minute."""
from __future__ import annotations

import contextlib
import time
import uuid

import pytest

from image_handlers import cleanup
from image_handlers.rbd import cluster as rbd_cluster
from image_handlers.rbd import partials
from tests.functional.conftest import image_bytes

MiB = 1 << 20


@pytest.fixture
def partial_clones(make_image, rbd_admin, glance_lab):
    """Three partial clones of one Glance RBD image's snapshot in pool vms, each
    with 1 MiB written into it; removed (if still there) after the test."""
    import rbd
    image_id = make_image(image_bytes(4 * MiB, seed=91), backend='ceph')
    names = [f'disk-{uuid.uuid4().hex[:8]}{partials.SUFFIX}' for _ in range(3)]
    with rbd_admin.open_ioctx('images') as p_ioctx, \
            rbd_admin.open_ioctx('vms') as c_ioctx:
        for name in names:
            rbd.RBD().clone(p_ioctx, image_id, 'snap', c_ioctx, name)
            with rbd.Image(c_ioctx, name) as img:
                img.write(b'\xab' * MiB, 0)
        yield image_id, names, c_ioctx
        for name in names:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(c_ioctx, name)


def _cluster(ceph_lab) -> rbd_cluster.Cluster:
    return rbd_cluster.get_cluster(rbd_cluster.ClusterSettings(
        ceph_conf=str(ceph_lab.conf_path), user='admin', keyring=None,
        connect_timeout=10, op_timeout=10))


def _ours(found, names):
    return {l.partial.split('/', 1)[1]: l for l in found
            if l.partial.split('/', 1)[1] in names}


def test_abandoned_partials_go_an_open_one_and_a_new_one_stay(partial_clones, ceph_lab):
    import rbd
    image_id, (abandoned, watched, _), ioctx = partial_clones
    cluster = _cluster(ceph_lab)
    later = lambda: time.time() + partials.MIN_AGE + 60     # noqa: E731
    with rbd.Image(ioctx, watched):                 # a client still working on it
        dry = _ours(partials.sweep(cluster, ['vms'], dry_run=True, now=later),
                    partial_clones[1])
        assert dry[abandoned].outcome == cleanup.ABANDONED and dry[abandoned].removed
        assert set(partial_clones[1]) <= set(rbd.RBD().list(ioctx))  # dry: all there

        done = _ours(partials.sweep(cluster, ['vms'], now=later), partial_clones[1])
    gone = done[abandoned]
    assert gone.removed and gone.image_id == image_id, gone
    assert gone.size == 4 * MiB, gone       # its own 1 MiB, whole 4 MiB objects
    assert 'nobody has it open' in gone.reason
    held = done[watched]
    assert held.outcome == cleanup.HELD and not held.removed
    assert 'open by' in held.reason
    left = set(rbd.RBD().list(ioctx))
    assert abandoned not in left and watched in left


def test_a_partial_made_a_moment_ago_is_kept_for_its_request(partial_clones, ceph_lab):
    import rbd
    _, names, ioctx = partial_clones
    found = _ours(partials.sweep(_cluster(ceph_lab), ['vms']), names)
    for name in names:
        assert found[name].outcome == cleanup.KEPT, found[name]
        assert 'its request may be about to publish it' in found[name].reason
    assert set(names) <= set(rbd.RBD().list(ioctx))


def test_cleanup_command_reports_rbd_partials_and_names_a_cluster_it_cannot_reach(
        partial_clones, nova_conf, cli, tmp_path):
    _, names, _ = partial_clones
    res = cli('cleanup', '--dry-run', '--json', '--config-file', nova_conf())
    assert res.rc == 0, res
    listed = {l['partial'] for l in res.json['leftovers']}
    assert {f'rbd:vms/{n}' for n in names} <= listed, res
    assert res.json['errors'] == []

    bad = tmp_path / 'missing-ceph.conf'
    conf = nova_conf()
    with open(conf) as f:
        text = f.read()
    with open(conf, 'w') as f:
        f.write(text + f'\n[image_handlers]\nrbd_ceph_conf = {bad}\n')
    res = cli('cleanup', '--config-file', conf)
    assert res.rc == 1, res
    assert 'not swept: rbd_clone' in res.err and str(bad) in res.err, res
