"""iscsi_cor's fill jobs inside the host's bandwidth_limit, against the lab.

One stream_copy (a thread of this process, from nginx through a counting relay)
and two lun_fill jobs (detached workers reading LUNs of a real tgtd through
qemu-nbd) run at once under one ``bandwidth_limit`` of 4 MiB/s and one state_dir.
What the sources themselves served (the relay's body bytes, cross-checked with
nginx's log; tgtd's ``wchar`` from /proc, a tgtd of this module alone) must stay
within limit x window + one burst + one read slice per transfer: an upper bound,
which load only makes easier to meet, so no timing is asserted. With a bucket per
fill job (before the fills took the host bucket) the three together moved about
three times the limit and this failed. The check is bench.soak's
``copies_and_fills_under_limit`` (also a row of ``python -m bench.soak``).
"""
from __future__ import annotations

import shutil

import pytest

from bench import soak
from tools.lab.tgt import TgtService

MiB = 1 << 20


@pytest.fixture(scope='module')
def tgt():
    service = TgtService('tgt-limit').start()
    yield service
    service.stop()


@pytest.fixture(scope='module')
def lab(glance, nginx_lab, glance_lab, tgt, tmp_path_factory):
    work = tmp_path_factory.mktemp('fill-limit')
    the_lab = soak.Lab(glance=glance, nginx=nginx_lab, admin=None, work=str(work),
                       conf_text=glance_lab.nova_conf(), tgt=tgt,
                       glance_db=str(glance_lab.workdir / 'glance.sqlite'))
    yield the_lab
    left = the_lab.remove_images()
    shutil.rmtree(work, ignore_errors=True)
    assert not left


def test_a_copy_and_two_fills_at_once_stay_within_the_hosts_limit(lab, tgt):
    """16 MiB each (four bursts) at 4 MiB/s: 48 MiB together, ~12 s shared; three
    per-transfer buckets would have moved it in ~3 s."""
    row = soak.copies_and_fills_under_limit(lab, copies=1, fills=2, size=16 * MiB,
                                            limit=4 * MiB)
    soak.print_row('copy and fills', row)
    assert row['problems'] == [], row
    assert row['relayed_bytes'] == row['nginx_bytes'] == 16 * MiB
    assert row['tgtd_bytes'] >= 2 * 16 * MiB              # both LUNs were read
    assert [j['mode'] for j in row['fill_jobs']] == ['offline', 'offline']
    assert row['moved_bytes'] <= row['allowed_bytes']
    assert tgt.exports() == {}                            # the LUNs were unexported
