"""http(s) locations (Glance's http store) served by the lab's nginx."""
from __future__ import annotations

import os
import subprocess

from tests.copy.helpers import kill_9_at_checkpoint
from tests.functional.conftest import VENV_BIN, image_bytes


def _nginx_requests(nginx_lab, path: str) -> int:
    log = (nginx_lab.workdir / 'access.log').read_text()
    return sum(1 for line in log.splitlines() if f'GET /{path}' in line)


def test_http_location_refused_unless_host_allowed(http_image, nova_conf, cli, tmp_path):
    data = image_bytes(3 << 20)
    image_id, url = http_image(data)
    res = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file', nova_conf(), '--json')
    assert res.rc == 0, res
    out = res.json
    skipped = [a for a in out['attempts'] if a['location'] == url]
    assert skipped and skipped[0]['outcome'] == 'skipped'
    assert 'http_location_allowed_hosts' in skipped[0]['reason']
    assert out['location'].startswith('glance:')  # Glance proxied its http store
    assert (tmp_path / 'd').read_bytes() == data


def test_http_location_read_directly_when_allowed(http_image, nginx_lab, nova_conf, cli,
                                                  tmp_path):
    data = image_bytes(3 << 20, seed=7)
    image_id, url = http_image(data)
    name = url.rsplit('/', 1)[1]
    before = _nginx_requests(nginx_lab, name)
    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1')
    res = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file', conf, '--json')
    assert res.rc == 0, res
    assert res.json['location'] == url
    assert (tmp_path / 'd').read_bytes() == data
    assert _nginx_requests(nginx_lab, name) == before + 1


def test_weight_prefers_glance_api(http_image, nova_conf, cli, tmp_path):
    image_id, url = http_image(image_bytes(2 << 20, seed=3))
    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1\nglance_api_weight = 10')
    res = cli('explain', image_id, str(tmp_path / 'd'), '--config-file', conf, '--json')
    assert res.rc == 0, res
    eligible = [a['location'] for a in res.json['attempts'] if a['outcome'] == 'eligible']
    assert eligible[0].startswith('glance:') and eligible[1] == url


def test_image_without_any_hash_is_refused(http_image, nova_conf, cli, tmp_path):
    data = image_bytes(2 << 20, seed=5)
    image_id, _ = http_image(data, with_hash=False)
    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1')
    res = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file', conf, '--json')
    assert res.rc == 1, res
    assert all('neither os_hash_value nor checksum' in a['reason']
               for a in res.json['attempts'] if a['handler'] == 'stream_copy')
    ok = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file',
             nova_conf('http_location_allowed_hosts = 127.0.0.1\n'
                       'allow_unverified_copies = true'), '--json')
    assert ok.rc == 0, ok
    assert 'NOT verified' in [a for a in ok.json['attempts'] if a['outcome'] == 'used'][0]['reason']
    assert (tmp_path / 'd').read_bytes() == data


def test_a_copy_killed_on_glances_data_api_resumes_from_the_http_location(
        http_image, nginx_lab, nova_conf, cli, tmp_path):
    """The partial is bound to the image's hash, not to the URL: a copy killed
    while Glance proxied its http store resumes, in a later run allowed to read
    the http server directly, from the byte the first one reached."""
    data = image_bytes(16 << 20, seed=8)
    image_id, url = http_image(data)
    target = str(tmp_path / 'disk.raw')
    slow = nova_conf('bandwidth_limit = 2097152\ncheckpoint_interval = 1048576\n'
                     'copy_buffer_size = 262144')
    seen = kill_9_at_checkpoint(
        [os.path.join(VENV_BIN, 'image-handlers'), 'fetch', image_id, target,
         '--config-file', slow], target, 2 << 20,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = nova_conf('http_location_allowed_hosts = 127.0.0.1')
    res = cli('fetch', image_id, target, '--config-file', direct, '--json')
    assert res.rc == 0, res
    out = res.json
    assert out['location'] == url
    assert seen <= out['details']['resumed_from'] < len(data)
    assert out['bytes_copied'] == len(data) - out['details']['resumed_from']
    assert 'another location of the same image' in res.err
    with open(target, 'rb') as f:
        assert f.read() == data
