"""stream_copy through a cache tier, the whole chain (issue 13): the lab Glance, the
lab nginx as the image's http location, a real squid as ``[image_handlers]
http_cache``, and the ``image-handlers`` command.

- a cache route is one more location, ranked first by its weight, chosen per host
  group, counted once at the origin however many copies go through it;
- a cache serving a stale object fails the hash, the direct origin is used next,
  and the cache is then refused with its reason until it is healthy again.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest

from tests.functional.conftest import image_bytes
from tools.lab.squid import SquidService


@pytest.fixture
def http_image(glance, nginx_lab, tmp_path):
    """An image whose only location is a file on nginx under a name of its own (the
    cache is shared by the module's tests: a reused URL would be a cache hit)."""
    created = []

    def make(data: bytes) -> tuple[str, str]:
        src = tmp_path / f'cache-tier-{uuid.uuid4().hex}.raw'
        src.write_bytes(data)
        url = nginx_lab.publish(src)
        img = glance.images.create(disk_format='raw', container_format='bare')
        created.append(img['id'])
        glance.images.add_location(img['id'], url, {}, validation_data={
            'os_hash_algo': 'sha512', 'os_hash_value': hashlib.sha512(data).hexdigest(),
            'checksum': hashlib.md5(data).hexdigest()})
        return img['id'], url

    yield make
    for image_id in created:
        glance.images.delete(image_id)


@pytest.fixture(scope='module')
def squid():
    svc = SquidService(name='squid-chain', cache_mem_mb=128).start()
    yield svc
    svc.stop()


def _origin_gets(nginx_lab, url: str) -> list[str]:
    """nginx's access-log lines of GETs of ``url`` (the origin's own count)."""
    path = '/' + url.split('/', 3)[3]
    lines = (nginx_lab.workdir / 'access.log').read_text().splitlines()
    return [line for line in lines if f'GET {path} ' in line]


def _logged(squid, url: str, count: int) -> list[str]:
    """squid's log lines for ``url``, waiting (bounded) until ``count`` are written."""
    deadline = time.monotonic() + 15
    while True:
        lines = [line for line in squid.log_lines() if url in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _stream_copy(out: dict) -> list[tuple[str, str]]:
    return [(a['location'], a['outcome']) for a in out['attempts']
            if a['handler'] == 'stream_copy' and not a['location'].startswith('glance:')]


def test_cache_route_per_host_group_is_ranked_first_and_shared(
        http_image, nova_conf, cli, squid, nginx_lab, tmp_path):
    data = image_bytes(3 << 20, seed=61)
    image_id, url = http_image(data)
    def host_conf(name: str) -> str:
        """nova.conf of one host of group rack1 (its own state_dir: another host)."""
        return nova_conf('http_location_allowed_hosts = 127.0.0.1\n'
                         f'glance_api_weight = -1\nhost = {name}\n'
                         f'state_dir = {tmp_path / name}\n'
                         f'http_cache = name=rack1 proxy={squid.proxy_url} hosts=rack1-*\n'
                         'http_cache = name=rack2 proxy=http://127.0.0.1:9 hosts=rack2-*\n')
    via = f'{url} via cache rack1 ({squid.proxy_url})'

    plan = cli('explain', image_id, str(tmp_path / 'a'), '--config-file',
               host_conf('rack1-n1'), '--json')
    assert plan.rc == 0, plan
    assert _stream_copy(plan.json) == [(via, 'eligible'), (url, 'eligible')], plan
    assert 'rack2' not in plan.out          # not this host's group

    origin_gets = []
    for name in ('rack1-n1', 'rack1-n2'):
        if origin_gets:
            # Let the cached object grow older than the image was when cached: squid's
            # LM-factor rule (freshness = 100% of that age) would call it stale now, and
            # only override-lastmod keeps the second host off the origin (CI saw a 304).
            time.sleep(2)
        got = cli('fetch', image_id, str(tmp_path / f'{name}.disk'), '--config-file',
                  host_conf(name), '--json')
        assert got.rc == 0, got
        assert got.json['location'] == via, got
        assert (tmp_path / f'{name}.disk').read_bytes() == data
        origin_gets.append(_origin_gets(nginx_lab, url))
    # The first host's copy filled the cache (one GET at the origin when nothing
    # was retried; a retried read on a loaded machine may make squid ask again);
    # the second host's copy is the cache's alone: no origin request at all.
    assert origin_gets[0], origin_gets
    assert origin_gets[1] == origin_gets[0], origin_gets
    served = _logged(squid, url, len(origin_gets[0]) + 1)  # logged once ended
    assert 'HIER_NONE' in served[-1], served


def test_direct_no_keeps_the_fleet_off_the_origin(http_image, nova_conf, cli, squid,
                                                  tmp_path):
    image_id, url = http_image(image_bytes(1 << 20, seed=62))
    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1\nglance_api_weight = -1\n'
                     f'http_cache = name=edge proxy={squid.proxy_url} direct=no\n')
    plan = cli('explain', image_id, str(tmp_path / 'a'), '--config-file', conf, '--json')
    assert plan.rc == 0, plan
    direct = [a for a in plan.json['attempts'] if a['location'] == url]
    assert direct and direct[0]['outcome'] == 'skipped'
    assert 'route edge says direct=no' in direct[0]['reason']


def test_stale_cache_fails_the_hash_origin_next_then_cache_refused(
        http_image, nova_conf, cli, squid, nginx_lab, tmp_path):
    """squid holds an older object at the image's URL (it keeps objects fresh for an
    hour): the copy through it fails the sha512, the direct origin serves the right
    bytes, and explain then refuses the cache while it is unhealthy."""
    new, old = image_bytes(2 << 20, seed=63), image_bytes(2 << 20, seed=64)
    image_id, url = http_image(new)
    served = nginx_lab.docroot / url.rsplit('/', 1)[1]
    keep = served.with_name(served.name + '.new')
    os.replace(served, keep)
    served.write_bytes(old)
    assert squid.get(url)[1] == old          # the cache holds the old object
    os.replace(keep, served)
    conf = nova_conf('http_location_allowed_hosts = 127.0.0.1\nglance_api_weight = -1\n'
                     f'http_cache = name=edge proxy={squid.proxy_url}\n')
    via = f'{url} via cache edge ({squid.proxy_url})'

    got = cli('fetch', image_id, str(tmp_path / 'd'), '--config-file', conf, '--json')
    assert got.rc == 0, got
    assert _stream_copy(got.json)[:2] == [(via, 'failed'), (url, 'used')], got
    failed = [a for a in got.json['attempts'] if a['location'] == via][0]
    assert 'ChecksumMismatch' in failed['reason']
    assert (tmp_path / 'd').read_bytes() == new
    assert not any(n.startswith('.d') for n in os.listdir(tmp_path))  # no partial

    plan = cli('explain', image_id, str(tmp_path / 'e'), '--config-file', conf, '--json')
    assert plan.rc == 0, plan
    cache = [a for a in plan.json['attempts'] if a['location'] == via][0]
    assert cache['outcome'] == 'skipped'
    assert 'cache edge failed 1x recently' in cache['reason']
    assert 'not used until it is healthy again' in cache['reason']
    assert plan.json['location'] == url


def test_glance_data_api_behind_the_cache_only_with_glance_yes(
        make_image, nova_conf, cli, squid, tmp_path):
    """glance=yes: Glance's image data API through the cache, the token sent to it
    (kept out of its key: a second host's request, with its own token, is a hit),
    and the reason it is not the default: the cache then serves those bytes to a
    request without any token. Without glance=yes no Glance request goes to a
    cache."""
    data = image_bytes(2 << 20, seed=65)
    image_id = make_image(data)

    def host_conf(name: str, glance: str) -> str:
        return nova_conf(f'host = {name}\nstate_dir = {tmp_path / name}\n'
                         f'http_cache = name=edge proxy={squid.proxy_url} {glance}\n')

    plain = cli('explain', image_id, str(tmp_path / 'x'), '--config-file',
                host_conf('n0', ''), '--json')
    assert plain.rc == 0, plain
    assert not any('via cache' in (a['location'] or '') for a in plain.json['attempts'])

    for name in ('n1', 'n2'):
        got = cli('fetch', image_id, str(tmp_path / f'{name}.disk'), '--config-file',
                  host_conf(name, 'glance=yes'), '--json')
        assert got.rc == 0, got
        assert got.json['location'].startswith(f'glance:{image_id}'), got
        assert 'via cache edge' in got.json['location'], got
        assert (tmp_path / f'{name}.disk').read_bytes() == data
    served = _logged(squid, f'/v2/images/{image_id}/file', 2)
    assert len(served) == 2, served
    assert 'HIER_DIRECT' in served[0] and 'HIER_NONE' in served[1], served
    # Why it is off by default: the cached object now answers anyone asking the cache
    # for the URL, with no token at all.
    url = served[0].split(' GET ', 1)[1].split()[0]
    status, body, _ = squid.get(url)
    assert (status, body) == (200, data)
