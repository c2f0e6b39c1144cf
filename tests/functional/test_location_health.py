"""Location health: a location that really failed on this host is tried after the
healthy ones, and ``explain`` says so (issue 10).

The failing location is an http URL on a loopback port nothing listens on (its own
endpoint: a 500 on the lab nginx would blame nginx's healthy one too); the healthy
one is a file on the lab nginx. Both rows are written into the lab Glance's database.
"""
from __future__ import annotations

from tools.lab.service import LOOPBACK, free_port

from tests.functional.conftest import image_bytes


def _eligible(out: dict) -> list[dict]:
    """Eligible http pairs in rank order (Glance's data API, weight -1, comes last)."""
    return [a for a in out['attempts'] if a['outcome'] == 'eligible'
            and not a['location'].startswith('glance:')]


def test_failed_location_is_ranked_after_a_healthy_one_and_explained(
        http_image, set_locations, nova_conf, cli, tmp_path):
    data = image_bytes(3 << 20, seed=41)
    image_id, good = http_image(data)
    dead = f'http://{LOOPBACK}:{free_port()}/images/{image_id}'
    set_locations(image_id, [dead, good])          # the dead one first in Glance
    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1\n'
                     'glance_api_weight = -1')     # only the two http locations compete

    before = cli('explain', image_id, str(tmp_path / 'd'), '--config-file', conf, '--json')
    assert before.rc == 0, before
    assert [a['location'] for a in _eligible(before.json)] == [dead, good]
    assert all(a['details']['recent_failures'] == 0 for a in _eligible(before.json))

    fetched = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file', conf, '--json')
    assert fetched.rc == 0, fetched
    outcomes = [(a['location'], a['outcome']) for a in fetched.json['attempts']
                if a['handler'] == 'stream_copy']
    assert outcomes[:2] == [(dead, 'failed'), (good, 'used')], fetched
    assert (tmp_path / 'd').read_bytes() == data

    after = cli('explain', image_id, str(tmp_path / 'e'), '--config-file', conf, '--json')
    assert after.rc == 0, after
    ranked = _eligible(after.json)
    assert [a['location'] for a in ranked] == [good, dead]
    assert after.json['location'] == good
    healthy, failed = ranked[0]['details'], ranked[1]['details']
    assert healthy['recent_failures'] == 0 and healthy['mib_per_s'] > 0
    assert failed['recent_failures'] == 1 and failed['mib_per_s'] is None
    assert 0 <= failed['last_failure_seconds_ago'] < 120
    assert 'failed 1x recently' in failed['rank']
    assert 'tried after healthy ones' in failed['rank']

    printed = cli('explain', image_id, str(tmp_path / 'e'), '--config-file', conf)
    assert printed.rc == 0, printed
    assert 'MiB/s measured here' in printed.out
    assert 'not measured yet, failed 1x recently, last' in printed.out
