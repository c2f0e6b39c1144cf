"""Real lab services killed (and hung) mid-work (tools/service_faults.py), reduced:
one seeded trial per fault and per hang. Its own Ceph (bluestore: a killed OSD
keeps its data), Keystone, Glance, tgt and a Gluster volume of its own in the
shared glusterd (only that volume's brick is killed or stopped), all stopped at
the end. The full runs (5 trials per fault) are ``.venv/bin/python -m
tools.service_faults`` and ``... --hang``; doc/reliability.rst reports them. No
timing is asserted: the bounds measured are in the report."""
from __future__ import annotations

import json

from tools import service_faults

# Still unbounded, reported by the tool as a missed goal (doc/reliability.rst, "Not
# measured yet"): shared_fs's checks of a new disk's file on a mount whose brick is
# stopped block the request in the kernel until the brick answers.
KNOWN_UNBOUNDED = {'hang-brick': {'a new disk'}}
# A known defect, not fixed (doc/reliability.rst, "Services that hang"): after a
# hung OSD is continued, RBD requests in the same process can keep failing for
# minutes (a fresh process is served at once), and a clone's partial stays until a
# request gets through. Found by the full --hang runs, where it builds up over
# repeated hangs: here their recovery and that partial are reported, not asserted;
# the bounded, clear error and the bytes are asserted as for every fault.
KNOWN_NOT_RECOVERING = {'hang-osd-read', 'hang-osd-clone'}


def test_every_service_fault_ends_clearly_leaves_nothing_and_recovers(tmp_path, capsys):
    report_file = tmp_path / 'report.json'
    faults = service_faults.FAULTS + service_faults.HANG_FAULTS
    service_faults.main(['--trials', '1', '--seed', '7', '--rbd-timeout', '3',
                         '--read-timeout', '2', '--retries', '1',
                         '--size-scale', '0.34', '--max-outage', '3',
                         '--max-hold', '20', '--faults', ','.join(faults),
                         '--json', str(report_file)])
    out = capsys.readouterr().out
    saved = json.loads(report_file.read_text())
    report, trials = saved['report'], saved['trials']
    assert set(report) == set(faults), out
    for fault, r in report.items():
        assert r['trials'] == 1 and r['wrongly_published_bytes'] == 0, (fault, r)
        if fault in KNOWN_NOT_RECOVERING:
            assert all(x.endswith('.image_handlers-partial') for x in r['leftovers']), \
                (fault, r)
            if r['not_recovered']:
                print(f'KNOWN DEFECT: {fault} did not recover in-process: {r}')
        else:
            assert r['leftovers'] == [] and r['not_recovered'] == 0, (fault, r)
        assert r['hung'] == 0 and r['unclear'] == 0, (fault, r)
        unbounded = {x.split(': ', 1)[1] for x in r['unbounded']}
        assert unbounded <= KNOWN_UNBOUNDED.get(fault, set()), (fault, r)
    by_fault = {t['fault']: t for t in trials}
    for t in trials:
        # Whatever the kill or hang hit, the request ended: verified, or a clear error.
        assert t['outcome'] in ('verified', 'done') or t['error'], t
        if t['outcome'] not in ('verified', 'done') and \
                t['fault'] not in KNOWN_NOT_RECOVERING:
            assert t['recovered'] is True, t
    for fault in service_faults.HANG_FAULTS:
        # held stopped, continued, and whatever it held ended before that
        assert by_fault[fault]['held'] is not None, by_fault[fault]
    # A request that arrives while the service is down fails, naming it.
    assert by_fault['glance']['side']['rc'] != 0
    assert 'Glance' in by_fault['glance']['side']['error']
    assert by_fault['keystone']['side']['rc'] != 0
    assert 'Keystone' in by_fault['keystone']['side']['error']
    assert by_fault['brick']['side']['rc'] != 0
    assert 'not connected' in by_fault['brick']['side']['error']
    assert by_fault['mon']['side']['rc'] != 0
    assert 'Ceph' in by_fault['mon']['side']['error']
    # ... and while it hangs, within the bounds, naming it.
    assert by_fault['hang-glance']['side']['rc'] != 0
    assert 'Glance' in by_fault['hang-glance']['side']['error']
    assert 'did not answer' in by_fault['hang-glance']['side']['error']


# -- regressions found by the trials (against the suite's shared lab Ceph) ------------

def test_rbd_clone_removes_the_partial_a_failed_request_left_and_publishes_by_rename(
        make_image, nova_conf, cli, rbd_admin):
    """An OSD lost during clone + flatten used to leave a half-made disk at the
    target's name, and every later request for it failed (TargetExists). Clones
    are now made under a partial name and renamed; what a failure leaves there is
    removed by the next request for the disk."""
    import contextlib
    import uuid

    import rbd

    from image_handlers.handlers.rbd_clone import partial_name
    from tests.functional.conftest import image_bytes

    data = image_bytes(8 * (1 << 20), seed=21)
    image_id = make_image(data, backend='ceph')
    name = f'disk-{uuid.uuid4().hex[:8]}'
    with rbd_admin.open_ioctx('vms') as ioctx:
        rbd.RBD().create(ioctx, partial_name(name), 1 << 20)   # what a failure left
        try:
            res = cli('fetch', image_id, f'rbd:vms/{name}', '--purpose', 'unshelve',
                      '--config-file', nova_conf(), '--json')
            assert res.rc == 0, res
            names = set(rbd.RBD().list(ioctx))
            assert name in names and partial_name(name) not in names
            with contextlib.closing(rbd.Image(ioctx, name, read_only=True)) as img:
                assert img.read(0, len(data)) == data
        finally:
            for x in (name, partial_name(name)):
                with contextlib.suppress(rbd.ImageNotFound):
                    rbd.RBD().remove(ioctx, x)


def test_a_shut_out_or_timed_out_rados_client_is_replaced_by_the_next_request(ceph_lab):
    """A blocklisted client (ESHUTDOWN) used to stay cached for the life of the
    process (nova-compute), failing every later request; one whose operations
    timed out kept timing out after the OSD came back. Both are now retired."""
    import errno

    from image_handlers.rbd import cluster as rbd_cluster

    settings = rbd_cluster.ClusterSettings(str(ceph_lab.conf_path), 'admin')
    first = rbd_cluster.get_cluster(settings)
    assert rbd_cluster.get_cluster(settings) is first
    for code in (errno.ESHUTDOWN, errno.ETIMEDOUT):
        current = rbd_cluster.get_cluster(settings)
        try:    # as librbd raises it, wrapped by our own error
            try:
                raise OSError(code, 'from librbd')
            except OSError as cause:
                raise RuntimeError('wrapped') from cause
        except RuntimeError as exc:
            current.note_error(exc)
        fresh = rbd_cluster.get_cluster(settings)
        assert fresh is not current and fresh.fsid == ceph_lab.fsid
    other = rbd_cluster.get_cluster(settings)
    other.note_error(OSError(errno.ENOENT, 'not a connection problem'))
    assert rbd_cluster.get_cluster(settings) is other


def test_keystone_down_is_a_service_error_naming_keystone_not_a_config_error(
        nova_conf, cli, keystone_lab, make_image, tmp_path):
    """With Keystone unreachable, the Glance endpoint lookup used to raise
    ConfigError ("cannot find the Glance endpoint from nova.conf"): an operator
    would fix a config that was right. It is now a SourceError naming Keystone
    (exit status 1, not 2); the command's own error line says so."""
    from tools.lab.service import free_port

    image_id = make_image(b'\0' * 4096)
    path = nova_conf()
    dead = f'http://127.0.0.1:{free_port()}/v3'
    with open(path) as f:
        text = f.read()
    assert keystone_lab.auth_url in text
    with open(path, 'w') as f:
        f.write(text.replace(keystone_lab.auth_url, dead))
    res = cli('fetch', image_id, str(tmp_path / 'disk'), '--config-file', path)
    assert res.rc == 1, res
    assert f'Keystone at {dead}' in res.err and 'retry once it is back' in res.err
    assert 'cannot find the Glance endpoint' not in res.err
    assert not (tmp_path / 'disk').exists()


def test_an_overlay_fill_whose_backing_file_went_away_says_how_to_go_on(tmp_path):
    """A fill job that lost its backing file (the Gluster brick killed under it)
    failed with qemu-img's words only; it now says that what was copied stays and
    which command continues it, and that command does once the file is back."""
    import subprocess

    from image_handlers import api
    from image_handlers.jobs import runner

    conf_file = tmp_path / 'nova.conf'
    conf_file.write_text(f'[image_handlers]\nstate_dir = {tmp_path / "state"}\n')
    conf = api.make_conf([str(conf_file)])
    backing, disk = tmp_path / 'base.raw', tmp_path / 'disk.qcow2'
    backing.write_bytes(b'\x5a' * (1 << 20))
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                    str(backing), str(disk)], check=True)
    hidden = tmp_path / 'base.away'
    backing.rename(hidden)                      # the volume is gone
    job = runner.submit(conf, 'overlay_fill', {'disk': str(disk),
                                               'backing_format': 'raw',
                                               'expect_backing': str(backing)},
                        'fill test')
    failed = runner.wait(conf, job.id, timeout=120)
    assert failed.state == 'failed', failed
    assert f'"image-handlers jobs resume {job.id}" continues once {backing}' in \
        failed.error
    hidden.rename(backing)                      # the volume is back
    runner.retry(conf, job.id)
    assert runner.wait(conf, job.id, timeout=120).state == 'done'
    info = subprocess.run(['qemu-img', 'info', '-U', str(disk)], capture_output=True,
                          text=True, check=True).stdout
    assert 'backing file' not in info
