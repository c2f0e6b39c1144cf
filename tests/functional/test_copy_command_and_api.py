"""The copy command and the Python API, against nginx and the lab Glance."""
from __future__ import annotations

import hashlib
import json
import os

from tests.functional.conftest import image_bytes


def test_copy_command_verifies_and_reports(nginx_lab, nova_conf, cli, tmp_path):
    data = image_bytes(5 << 20, seed=21)
    src = tmp_path / 'src.raw'
    src.write_bytes(data)
    url = nginx_lab.publish(src)
    good = 'sha256:' + hashlib.sha256(data).hexdigest()
    res = cli('copy', url, str(tmp_path / 'out'), '--checksum', good,
              '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    assert res.json['handler'] == 'stream_copy' and res.json['image_id'] is None
    assert res.json['bytes_copied'] == len(data)
    assert (tmp_path / 'out').read_bytes() == data

    wrong = 'sha256:' + hashlib.sha256(b'other').hexdigest()
    bad = cli('copy', url, str(tmp_path / 'out2'), '--checksum', wrong,
              '--config-file', nova_conf(), '--json')
    assert bad.rc == 1, bad
    assert bad.json['attempts'][0]['outcome'] == 'failed'
    assert 'checksum mismatch' in bad.json['attempts'][0]['reason']
    assert sorted(p.name for p in tmp_path.iterdir() if 'out2' in p.name) == []


def test_copy_command_bad_input(nova_conf, cli, tmp_path):
    res = cli('copy', 'http://127.0.0.1:1/x', str(tmp_path / 'o'), '--checksum',
              'sha256:abc', '--config-file', nova_conf())
    assert res.rc == 2 and 'sha256' in res.err, res
    res = cli('copy', 'ftp://127.0.0.1/x', str(tmp_path / 'o'), '--config-file', nova_conf())
    assert res.rc == 2 and 'http:// or https://' in res.err, res


def test_python_api_copy_is_a_task(nginx_lab, nova_conf, tmp_path):
    from image_handlers import api
    data = image_bytes(6 << 20, seed=22)
    src = tmp_path / 'src.raw'
    src.write_bytes(data)
    conf = api.make_conf([nova_conf()])
    task = api.copy(conf, nginx_lab.publish(src), str(tmp_path / 'o'),
                    'sha512:' + hashlib.sha512(data).hexdigest())
    result = task.wait(timeout=120)
    assert task.done and result.size == len(data) and not result.reused_existing
    assert (tmp_path / 'o').read_bytes() == data


def test_python_api_fetch_records_throughput(make_image, nova_conf, tmp_path):
    from image_handlers import api
    data = image_bytes(8 << 20, seed=23)
    image_id = make_image(data)
    conf = api.make_conf([nova_conf()])
    result = api.fetch(conf, image_id, str(tmp_path / 'disk'))
    assert result.handler == 'stream_copy' and result.bytes_copied == len(data)
    with open(os.path.join(conf.image_handlers.state_dir, 'throughput.json')) as f:
        measured = json.load(f)
    (key, entry), = measured.items()
    assert key.startswith('glance-api:http://127.0.0.1:') and entry['samples'] == 1
    assert entry['mib_s'] > 0
